"""MLflow's request fields → the AI API's metric, tag and customInfo items, checked on the spot.

The checks are the Emitter's (``producer/points.py``), which apply the relay's own rules: what
passes here is what the API accepts, so nothing an MLflow client sends becomes a dead letter
later. MLflow's JSON is protobuf JSON: 64-bit integers and doubles may come as strings, and a
NaN or an infinity comes as the string ``"NaN"`` / ``"Infinity"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import orjson

from metricrelay import timestamps
from metricrelay.producer.mlflow_errors import invalid
from metricrelay.producer.points import (
    PointError,
    check_metric_name,
    check_name,
    check_step,
    check_value,
)

__all__ = [
    "PARAMETERS",
    "RUN_NAME_TAG",
    "integer",
    "key_values",
    "metric_item",
    "param_pairs",
    "parameters_info",
    "tag_items",
    "text",
]

PARAMETERS: Final = "parameters"  # the one customInfo item that holds a run's params
RUN_NAME_TAG: Final = "mlflow.runName"
_SYSTEM_PREFIX: Final = "mlflow."
_AI_RUN_NAME: Final = "run_name"


def text(body: Mapping[str, Any], *names: str, required: bool = True) -> str:
    """The first of ``names`` present as a non-empty string (MLflow sends ``run_id`` and its
    old alias ``run_uuid``)."""
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
        if value is not None and not isinstance(value, str):
            raise invalid(f"{name} must be a string, not {type(value).__name__}")
    if required:
        raise invalid(f"missing value for required parameter '{names[0]}'")
    return ""


def integer(body: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    """An int64 field: a JSON integer or a decimal string."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise invalid(f"{name} must be an integer: {value!r}")


def _number(value: object) -> object:
    """A protobuf-JSON double as a float ("NaN", "1e-3" included); anything else as it came,
    for check_value to name."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def metric_item(raw: object, where: str, *, drop_non_finite: bool = False) -> dict[str, Any] | None:
    """One MLflow metric ``{key, value, timestamp, step}`` as an AI API metric; None for a NaN
    or an infinity with ``drop_non_finite`` (else refused, as every value the API refuses)."""
    if not isinstance(raw, Mapping):
        raise invalid(f"{where} must be an object")
    number = _number(raw.get("value"))
    non_finite = isinstance(number, float) and not math.isfinite(number)
    try:
        name = check_metric_name(raw.get("key"))
        step = check_step(integer(raw, "step", 0))
        if drop_non_finite and non_finite:
            return None
        value = check_value(number)
    except PointError as exc:
        hint = " (ingest --mlflow-non-finite drop drops such values instead)" if non_finite else ""
        raise invalid(f"{where} {raw.get('key')!r}: {exc}{hint}") from None
    ms = integer(raw, "timestamp")
    item: dict[str, Any] = {"name": name, "value": value, "step": step}
    if ms is not None:  # MLflow always sends one; without it the stream entry's time is used
        try:
            item["timestamp"] = timestamps.from_epoch_ms(ms)
        except (OverflowError, ValueError):
            raise invalid(f"{where} {name!r}: timestamp {ms} ms is not a real time") from None
    return item


def tag_items(pairs: Mapping[str, str]) -> list[dict[str, str]]:
    """Run tags as AI API tags: ``mlflow.runName`` is ``run_name``, other ``mlflow.*`` system
    tags (user, source, git commit) are left out, the rest keep their names."""
    items: list[dict[str, str]] = []
    for mlflow_key, value in pairs.items():
        if mlflow_key == RUN_NAME_TAG:
            key = _AI_RUN_NAME
        elif mlflow_key.startswith(_SYSTEM_PREFIX):
            continue
        else:
            key = mlflow_key
        try:
            items.append(
                {"name": check_name(key, "tag name"), "value": check_name(value, "tag value")}
            )
        except PointError as exc:
            raise invalid(
                f"tag {key!r}: {exc} (the AI API's tags have names and values of 1-256 characters)"
            ) from None
    return items


def key_values(raw: object, what: str) -> dict[str, str]:
    """MLflow's ``[{key, value}]`` list (params, tags) as a dict, later keys winning."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise invalid(f"{what} must be a list")
    out: dict[str, str] = {}
    for index, pair in enumerate(raw):
        if not isinstance(pair, Mapping):
            raise invalid(f"{what}[{index}] must be an object")
        key, value = pair.get("key"), pair.get("value", "")
        if not isinstance(key, str) or not key:
            raise invalid(f"{what}[{index}].key must be a non-empty string")
        if not isinstance(value, str):
            raise invalid(f"{what}[{index}] {key!r}: value must be a string")
        out[key] = value
    return out


def param_pairs(raw: object) -> dict[str, str]:
    return key_values(raw, "params")


def parameters_info(merged: Mapping[str, str]) -> dict[str, str]:
    """All params of a run as ONE customInfo item: the API keeps the last customInfo of a
    name, so every write carries the whole merged object."""
    return {"name": PARAMETERS, "value": orjson.dumps(dict(merged)).decode()}
