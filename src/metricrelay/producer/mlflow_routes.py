"""MLflow's REST tracking API on the ingest: ``MLFLOW_TRACKING_URI=http://<ingest>`` just works.

Served: experiments get-by-name / create / get; runs create / get / update / log-metric /
log-batch / log-parameter / set-tag. Refused with MLflow's error body: runs/delete-tag and
runs/log-inputs (501, the AI API has nothing to hold them), artifact uploads (501, after reading
the body, so the client gets the answer instead of a broken pipe), everything else (404
ENDPOINT_NOT_FOUND). The mapping onto MetricResource fragments is in the README.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from aiohttp import web

from metricrelay.aiapi.body import count_limit_breach, read_body
from metricrelay.aiapi.errors import ApiError, Handler
from metricrelay.codec import decode_entry
from metricrelay.producer.ingest_state import (
    CONFIG,
    QueueUnavailable,
    append_document,
    resource_group_of,
)
from metricrelay.producer.mlflow_convert import (
    RUN_NAME_TAG,
    integer,
    key_values,
    metric_item,
    parameters_info,
    tag_items,
    text,
)
from metricrelay.producer.mlflow_errors import (
    MlflowError,
    endpoint_not_found,
    invalid,
    is_mlflow_path,
    mlflow_response,
    not_implemented,
)
from metricrelay.producer.mlflow_registry import DEFAULT_EXPERIMENT, Registry, Run, run_status

__all__ = ["add_mlflow_routes", "mlflow_error_middleware"]

log = logging.getLogger(__name__)

PREFIX: Final = "/api/2.0/mlflow"
_REGISTRY: Final = web.AppKey("mlflow_registry", Registry)
_EXPERIMENT_TAG: Final = "experiment"


# --------------------------------------------------------------------------- plumbing


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's fields: the query of a GET, the JSON object of a POST."""
    if request.method == "GET":
        return dict(request.query)
    raw = await read_body(request, request.app[CONFIG].max_body_bytes)
    try:
        document = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        try:  # Python's json module writes NaN and Infinity bare; read them to refuse them
            document = json.loads(raw)
        except ValueError:
            raise invalid("the request body is not JSON") from None
        try:  # it may also hold escaped lone surrogates ("\\udc80"): no text the API takes
            orjson.dumps(document)
        except orjson.JSONEncodeError:
            raise invalid("the request body holds text that is not valid Unicode") from None
    if not isinstance(document, dict):
        raise invalid("the request body must be a JSON object")
    return document


def _registry(request: web.Request) -> Registry:
    return request.app[_REGISTRY]


def _reply(payload: Mapping[str, Any] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload or {}), content_type="application/json")


async def _write(
    request: web.Request,
    run: Run,
    *,
    metrics: Sequence[dict[str, Any]] = (),
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> None:
    """Append what a call logged to its run's execution, as one fragment, checked first; the
    run takes on its params, tags and name only once they are written (a call that failed is
    repeated by the client and must find nothing done)."""
    ai_tags = tag_items(tags or {})
    async with run.lock:
        merged = {**run.params, **params} if params else None
        document: dict[str, Any] = {"executionId": run.run_id}
        if metrics:
            document["metrics"] = list(metrics)
        if ai_tags:
            document["tags"] = ai_tags
        if merged is not None:
            document["customInfo"] = [parameters_info(merged)]
        if len(document) > 1:
            _check(document)
            await append_document(request.app, document, resource_group_of(request))
        if params:  # in place: the runs of a fixed execution id share one params object
            run.params.update(params)
        run.tags.update(tags or {})
        if tags and RUN_NAME_TAG in tags:
            run.name = tags[RUN_NAME_TAG]


def _check(document: dict[str, Any]) -> None:
    """The relay's own validation of the fragment to be written: what passes is never a dead
    letter for breaking a documented rule."""
    breach = count_limit_breach(document)
    if breach:
        raise invalid(f"more than the AI API takes in one request: {breach}")
    decoded = decode_entry(orjson.dumps(document), entry_ms=0, default_resource_group="default")
    if decoded.problems:
        raise invalid("; ".join(p.message for p in decoded.problems))


# --------------------------------------------------------------------------- experiments


async def _experiment_by_name(request: web.Request) -> web.Response:
    name = text(await _body(request), "experiment_name")
    return _reply({"experiment": _registry(request).experiment_by_name(name).to_json()})


async def _experiment_create(request: web.Request) -> web.Response:
    body = await _body(request)
    name = text(body, "name")
    experiment = _registry(request).create_experiment(name, key_values(body.get("tags"), "tags"))
    return _reply({"experiment_id": experiment.experiment_id})


async def _experiment_get(request: web.Request) -> web.Response:
    experiment_id = text(await _body(request), "experiment_id")
    return _reply({"experiment": _registry(request).experiment(experiment_id).to_json()})


# --------------------------------------------------------------------------- runs


async def _run_create(request: web.Request) -> web.Response:
    body = await _body(request)
    registry = _registry(request)
    experiment = registry.experiment(
        text(body, "experiment_id", required=False) or DEFAULT_EXPERIMENT
    )
    tags = key_values(body.get("tags"), "tags")
    name = text(body, "run_name", required=False) or tags.get(RUN_NAME_TAG, "")
    if name:
        tags[RUN_NAME_TAG] = name
    run = registry.create_run(
        request.app[CONFIG].execution_id, experiment.experiment_id, integer(body, "start_time")
    )
    run.user_id = text(body, "user_id", required=False)
    await _write(request, run, tags={**tags, _EXPERIMENT_TAG: experiment.name})
    log.info("MLflow run %s (experiment %r) started", run.run_id, experiment.name)
    return _reply({"run": run.to_json()})


def _run_of(request: web.Request, body: Mapping[str, Any]) -> Run:
    return _registry(request).run(text(body, "run_id", "run_uuid"))


async def _run_get(request: web.Request) -> web.Response:
    run = _run_of(request, await _body(request))
    return _reply({"run": run.to_json()})


async def _run_update(request: web.Request) -> web.Response:
    body = await _body(request)
    run = _run_of(request, body)
    status = None if body.get("status") is None else run_status(body["status"])
    end_ms = integer(body, "end_time", run.end_ms)
    name = text(body, "run_name", required=False)
    if name and name != run.name:  # written first: a refused name leaves the run as it was
        await _write(request, run, tags={RUN_NAME_TAG: name})
    if status is not None:
        run.status = status
    run.end_ms = end_ms
    return _reply({"run_info": run.info()})


async def _log_metric(request: web.Request) -> web.Response:
    body = await _body(request)
    run = _run_of(request, body)
    await _write(request, run, metrics=_finite(request, run, [("metric", body)]))
    return _reply()


def _finite(
    request: web.Request, run: Run, labelled: Sequence[tuple[str, object]]
) -> list[dict[str, Any]]:
    """A call's metrics (each with where it is in the request) as AI API items; with
    ``--mlflow-non-finite drop`` a NaN or an infinity is left out, said once per run and name."""
    drop = request.app[CONFIG].drop_non_finite
    items = []
    for label, metric in labelled:
        item = metric_item(metric, label, drop_non_finite=drop)
        if item is not None:
            items.append(item)
            continue
        name = str(metric.get("key")) if isinstance(metric, Mapping) else "?"
        if name not in run.dropped:
            log.warning(
                "run %s: metric %r is not a finite number; the AI API cannot store it, "
                "dropped (said once per run and name)",
                run.run_id,
                name,
            )
        run.dropped[name] = run.dropped.get(name, 0) + 1
    return items


async def _log_batch(request: web.Request) -> web.Response:
    body = await _body(request)
    run = _run_of(request, body)
    raw_metrics = body.get("metrics") or []
    if not isinstance(raw_metrics, list):
        raise invalid("metrics must be a list")
    labelled = [(f"metrics[{i}]", metric) for i, metric in enumerate(raw_metrics)]
    metrics = _finite(request, run, labelled)
    params = key_values(body.get("params"), "params")
    tags = key_values(body.get("tags"), "tags")
    await _write(request, run, metrics=metrics, tags=tags, params=params)
    return _reply()


async def _log_parameter(request: web.Request) -> web.Response:
    body = await _body(request)
    run = _run_of(request, body)
    await _write(request, run, params=key_values([body], "param"))
    return _reply()


async def _set_tag(request: web.Request) -> web.Response:
    body = await _body(request)
    run = _run_of(request, body)
    await _write(request, run, tags=key_values([body], "tag"))
    return _reply()


async def _delete_tag(request: web.Request) -> web.Response:
    raise not_implemented(
        "the AI API cannot delete a tag: tags are kept by name, last write wins, and a value "
        "must be 1-256 characters, so there is no 'unset'; set the tag to another value instead"
    )


async def _log_inputs(request: web.Request) -> web.Response:
    raise not_implemented(
        "the AI API has no datasets or model inputs of a run: log_input is not relayed "
        "(log the dataset's name as a tag or param instead)"
    )


async def _artifacts(request: web.Request) -> web.Response:
    # Read (and drop) the upload first: a refusal sent mid-upload reaches the client as a
    # broken pipe, which it retries, instead of as this message.
    async for _ in request.content.iter_chunked(64 * 1024):
        pass
    raise not_implemented(
        f"metricrelay ingest stores no artifacts ({request.method} {request.path}): it relays "
        "metrics, params and tags to SAP AI Core; keep artifacts in the execution's output "
        "artifacts (or log to an MLflow server with artifact storage)"
    )


async def _unknown(request: web.Request) -> web.Response:
    raise endpoint_not_found(request.method, request.path)


_ROUTES: Final = (
    ("GET", "/experiments/get-by-name", _experiment_by_name),
    ("POST", "/experiments/create", _experiment_create),
    ("GET", "/experiments/get", _experiment_get),
    ("POST", "/runs/create", _run_create),
    ("GET", "/runs/get", _run_get),
    ("POST", "/runs/update", _run_update),
    ("POST", "/runs/log-metric", _log_metric),
    ("POST", "/runs/log-batch", _log_batch),
    ("POST", "/runs/log-parameter", _log_parameter),
    ("POST", "/runs/set-tag", _set_tag),
    ("POST", "/runs/delete-tag", _delete_tag),
    ("POST", "/runs/log-inputs", _log_inputs),
)


def add_mlflow_routes(app: web.Application) -> None:
    app[_REGISTRY] = Registry()
    for method, path, handler in _ROUTES:
        app.router.add_route(method, PREFIX + path, handler)
    app.router.add_route("*", r"/api/{version:\d+\.\d+}/mlflow-artifacts{tail:.*}", _artifacts)
    app.router.add_route("*", r"/{api:(ajax-)?api}/{version:\d+\.\d+}/mlflow{tail:.*}", _unknown)


# --------------------------------------------------------------------------- errors


@web.middleware
async def mlflow_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer on MLflow's paths in MLflow's error shape; other paths pass untouched."""
    if not is_mlflow_path(request.path):
        return await handler(request)
    status, close = None, False
    try:
        return await handler(request)
    except MlflowError as exc:
        error = exc
    except QueueUnavailable:
        error = MlflowError("TEMPORARILY_UNAVAILABLE", "the metrics queue is unavailable")
    except ApiError as exc:  # the body reader's 413
        error = invalid(f"{exc.message}: {'; '.join(exc.details)}".rstrip(": "))
        status, close = exc.status, exc.close
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = endpoint_not_found(request.method, request.path)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        error = MlflowError("INTERNAL_ERROR", "internal error of the ingest")
    response = mlflow_response(error)
    if status is not None:
        response.set_status(status)
    if close:
        response.force_close()
    return response
