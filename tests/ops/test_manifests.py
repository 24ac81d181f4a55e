"""deploy/: every rendered object validates against its schema, and the wiring holds together.

Rendering: tests/support/kustomize.py (the tool when it is on PATH, else a fallback that reads
the documents directly) — and when a tool is there, a test checks that the fallback renders
exactly what the tool renders.

Schemas: core objects against the Kubernetes OpenAPI schemas that ``kubernetes-validate``
ships (strict: unknown fields are errors). KEDA's ScaledObject is a CRD, not in those: it is
validated against ``schemas/keda-scaledobject-v1alpha1.json`` (generated from the models of
cloudcoil-models-keda 2.16.1.0, which are generated from KEDA 2.16.1's CRD; see its $comment),
and the redis-streams and redis-cluster-streams triggers' metadata — a free string map in the
CRD — is checked field by field against KEDA's documented parameters. The Prometheus
Operator's PrometheusRule (deploy/k8s/monitoring) against ``schemas/prometheusrule-v1.json``.

The bundled Redis is locked down twice, and both are checked here: it requires the password of
the Secret ``metricrelay-redis-auth`` (every Redis client in the rendering takes it from that
Secret; a redis-server started with the StatefulSet's own command refuses anyone without it),
and NetworkPolicies admit to it only the workers, an ingest and labelled producer namespaces.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import redis
from redis.connection import parse_url
from tests.support.kustomize import (
    K8S,
    documents,
    render,
    render_directly,
    render_with_tool,
    tool,
)
from tests.support.waiting import until_sync

from metricrelay.connection import is_cluster, startup_nodes
from metricrelay.devtools.embedded import RedisServer, find_redis_server
from metricrelay.keys import CONSUMER_GROUP
from metricrelay.relay.auth import auth_mode
from metricrelay.settings import ENV_PREFIX, FIELDS, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TARGETS = ("base", "redis", "overlays/with-redis", "overlays/sharded-cluster", "monitoring")
K8S_VERSION = "1.30.0"
SCHEMAS = Path(__file__).parent / "schemas"
KEDA_SCHEMA = json.loads((SCHEMAS / "keda-scaledobject-v1alpha1.json").read_text())
PROMETHEUS_RULE_SCHEMA = json.loads((SCHEMAS / "prometheusrule-v1.json").read_text())
# The bundled Redis's password: this Secret's key, read by Redis and by every client of it.
REDIS_AUTH = {"name": "metricrelay-redis-auth", "key": "password"}
PRODUCER_NAMESPACES = {"metricrelay.io/producer": "true"}  # the label README documents
INGEST_PODS = {"app.kubernetes.io/name": "metricrelay", "app.kubernetes.io/component": "ingest"}
# Lists of a pod spec that kustomize merges by their items' names (strategic merge keys).
# redis-streams and redis-cluster-streams trigger metadata, from KEDA's scaler documentation
_STREAM_FIELDS = {
    "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount",
    "streamLength", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl",
}  # fmt: skip
TRIGGER_FIELDS = {
    "redis-streams": _STREAM_FIELDS | {
        "address", "host", "port", "addressFromEnv", "hostFromEnv", "portFromEnv", "databaseIndex",
    },
    "redis-cluster-streams": _STREAM_FIELDS | {
        "addresses", "hosts", "ports", "addressesFromEnv", "hostsFromEnv", "portsFromEnv",
    },
}  # fmt: skip
TRIGGER_ADDRESS = {
    "redis-streams": {"address", "host", "addressFromEnv", "hostFromEnv"},
    "redis-cluster-streams": {"addresses", "hosts", "addressesFromEnv", "hostsFromEnv"},
}
# Read by the CLI rather than Settings (logging must work before settings do).
CLI_VARIABLES = {"METRICRELAY_LOG_FORMAT"}


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


def _keda_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(KEDA_SCHEMA)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    for trigger in doc["spec"]["triggers"]:
        kind = trigger["type"]
        if kind not in TRIGGER_FIELDS:
            errors.append(f"no check for {kind} triggers")
            continue
        meta = trigger["metadata"]
        errors += [f"unknown {kind} field {name}" for name in set(meta) - TRIGGER_FIELDS[kind]]
        if "stream" not in meta:
            errors.append(f"{kind} needs stream")
        if not TRIGGER_ADDRESS[kind] & set(meta):
            errors.append(f"{kind} needs one of {sorted(TRIGGER_ADDRESS[kind])}")
        if "lagCount" in meta and "consumerGroup" not in meta:
            errors.append("lagCount needs consumerGroup")
        for name in ("lagCount", "activationLagCount", "pendingEntriesCount", "databaseIndex"):
            if name in meta and not str(meta[name]).isdigit():
                errors.append(f"{name} must be a whole number in a string")
    modifiers = (doc["spec"].get("advanced") or {}).get("scalingModifiers")
    if modifiers:
        names = {trigger.get("name") for trigger in doc["spec"]["triggers"]}
        used = set(re.findall(r"[A-Za-z_]\w*", modifiers.get("formula", "")))
        errors += [f"the formula names no trigger {name}" for name in sorted(used - names)]
        if "target" not in modifiers:
            errors.append("scalingModifiers needs a target")
    return errors


def _prometheus_rule_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(PROMETHEUS_RULE_SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates(target: str) -> None:
    docs = render(target)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            assert _keda_errors(doc) == [], doc["metadata"]["name"]
        elif doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert _prometheus_rule_errors(doc) == [], doc["metadata"]["name"]
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "name", ["service-key-secret.yaml", "redis-url-secret.yaml", "redis-auth-secret.yaml"]
)
def test_secret_examples_validate_and_hold_placeholders_only(name: str) -> None:
    [doc] = documents((K8S / "examples" / name).read_text())
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["kind"] == "Secret"
    for value in doc["stringData"].values():
        assert "<" in value  # every secret value is a <placeholder>


def test_schema_validation_catches_mistakes() -> None:
    """Guards against a vacuous check: a typo or a missing field must fail."""
    base = _by_kind(render("base"))
    deployment = json.loads(json.dumps(base["Deployment"]))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    sharded = json.loads(json.dumps(_by_kind(render("overlays/sharded-cluster"))["ScaledObject"]))
    scaled = json.loads(json.dumps(sharded))
    scaled["spec"]["minReplicas"] = 2
    scaled["spec"]["triggers"] = [
        {"type": "redis-streams", "metadata": {"stream": "s", "lagcount": "10"}}
    ]
    del scaled["spec"]["scaleTargetRef"]
    errors = " | ".join(_keda_errors(scaled))
    assert "minReplicas" in errors
    assert "scaleTargetRef" in errors
    assert "unknown redis-streams field lagcount" in errors
    sharded["spec"]["triggers"][3]["name"] = "shard3"
    sharded["spec"]["triggers"][4]["metadata"]["addresses"] = sharded["spec"]["triggers"][4][
        "metadata"
    ].pop("addressesFromEnv")
    sharded["spec"]["triggers"][4]["metadata"]["address"] = "redis:6379"
    del sharded["spec"]["triggers"][5]["metadata"]["addressesFromEnv"]
    errors = " | ".join(_keda_errors(sharded))
    assert "the formula names no trigger s3" in errors
    assert "unknown redis-cluster-streams field address" in errors
    assert "redis-cluster-streams needs one of" in errors
    rule = json.loads(json.dumps(_by_kind(render("monitoring"))["PrometheusRule"]))
    rule["spec"]["groups"][0]["rules"][0]["fore"] = "5m"
    rule["spec"]["groups"][0]["rules"][1]["for"] = "five minutes"
    del rule["spec"]["groups"][0]["rules"][2]["expr"]
    errors = " | ".join(_prometheus_rule_errors(rule))
    assert "'fore' was unexpected" in errors
    assert "'five minutes' does not match" in errors
    assert "'expr' is a required property" in errors


@pytest.mark.skipif(tool() is None, reason="neither kustomize nor kubectl is installed")
@pytest.mark.parametrize("target", TARGETS)
def test_the_fallback_renders_what_kustomize_renders(target: str) -> None:
    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return (doc["kind"], doc["metadata"]["name"])

    tool = sorted(render_with_tool(K8S / target), key=key)
    direct = sorted(render_directly(K8S / target), key=key)
    assert tool == direct


def test_the_worker_deployment() -> None:
    base = _by_kind(render("base"))
    deployment, config = base["Deployment"], base["ConfigMap"]["data"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert deployment["spec"]["replicas"] >= 2
    assert container["image"] == "metricrelay:0.1.0"
    assert container["args"] == ["worker"]
    port = int(config["METRICRELAY_HEALTH_PORT"])
    assert port == 9095
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] > float(config["METRICRELAY_DRAIN_DEADLINE"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["enableServiceLinks"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # the service key: a Secret mounted as a directory, the variable pointing at a file in it
    env = {item["name"]: item["value"] for item in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    key_path = Path(env["METRICRELAY_SERVICE_KEY"])
    assert str(key_path.parent) == mounts["service-key"]
    assert volumes["service-key"]["secret"]["secretName"] == "metricrelay-service-key"
    assert not any("subPath" in m for m in container["volumeMounts"])  # rotation reaches pods
    sources = [next(iter(source.values())) for source in container["envFrom"]]
    assert sources == [
        {"name": "metricrelay-config"}, {"name": "metricrelay-redis", "optional": True},
    ]  # fmt: skip
    assert not any(k in config for k in ("METRICRELAY_CLIENT_SECRET", "METRICRELAY_TOKEN"))


def test_the_config_map_is_a_valid_configuration(tmp_path: Path) -> None:
    config = _by_kind(render("base"))["ConfigMap"]["data"]
    for variable in config:
        if variable.startswith(ENV_PREFIX) and variable not in CLI_VARIABLES:
            field = variable.removeprefix(ENV_PREFIX).lower()
            assert field in FIELDS, f"{variable} is no setting"
    # with the example key mounted where the Deployment points, the worker would start (oauth)
    [secret] = documents((K8S / "examples/service-key-secret.yaml").read_text())
    key = tmp_path / "service-key.json"
    key.write_text(secret["stringData"]["service-key.json"])
    settings = Settings.from_sources(env={**config, "METRICRELAY_SERVICE_KEY": str(key)})
    assert auth_mode(settings.api) == "oauth"
    assert settings.observability.health_port == 9095
    assert settings.worker.drain_deadline == 25


def test_the_base_runs_one_active_and_one_standby_replica_without_keda() -> None:
    """One stream has one owner at a time (its lease): more replicas than streams only stand
    by, so the base runs two (one takes over when the other stops) and scales nothing."""
    base = _by_kind(render("base"))
    assert "ScaledObject" not in base
    assert base["Deployment"]["spec"]["replicas"] == 2
    assert base["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    settings = Settings.from_sources(env=base["ConfigMap"]["data"])
    assert settings.sharding.shards == 1 and settings.sharding.lease_ttl > 0
    assert not any(name.startswith("KEDA_") for name in base["ConfigMap"]["data"])


def test_the_sharded_overlay_scales_on_the_lag_of_every_shard() -> None:
    """overlays/sharded-cluster: the worker's own settings, read from the rendered ConfigMap,
    name exactly the streams KEDA watches, on the nodes the worker connects to."""
    docs = _by_kind(render("overlays/sharded-cluster"))
    scaled, config = docs["ScaledObject"]["spec"], docs["ConfigMap"]["data"]
    settings = Settings.from_sources(env=config)
    assert settings.sharding.shards == 8
    assert is_cluster(settings.redis.redis_url, settings.redis.cluster)
    streams = [trigger["metadata"]["stream"] for trigger in scaled["triggers"]]
    assert streams == [shard.events for shard in settings.keys().all_shards()]
    assert len(set(streams)) == settings.sharding.shards
    names = [trigger["name"] for trigger in scaled["triggers"]]
    formula = scaled["advanced"]["scalingModifiers"]["formula"]
    assert sorted(formula.replace(" ", "").split("+")) == sorted(names)  # the sum of all lags
    assert scaled["advanced"]["scalingModifiers"]["target"] == "1000"
    assert scaled["maxReplicaCount"] == settings.sharding.shards  # a worker owns whole shards
    for trigger in scaled["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-cluster-streams"
        assert meta["consumerGroup"] == CONSUMER_GROUP
        _, nodes = startup_nodes(settings.redis.redis_url)
        assert config[meta["addressesFromEnv"]] == ",".join(f"{h}:{p}" for h, p in nodes)
    deployment = json.loads(json.dumps(_by_kind(render("base"))["Deployment"]))
    del deployment["spec"]["replicas"]  # KEDA's to set: kubectl apply must not reset it
    assert docs["Deployment"] == deployment  # otherwise only config differs
    assert scaled["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert scaled["minReplicaCount"] >= 2  # one stands by


def test_selectors_match_the_pods() -> None:
    docs = render("overlays/with-redis")
    kinds = _by_kind(docs)
    pods = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kinds["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pods.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pods.items()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services["metricrelay-metrics"]["spec"]["selector"].items() <= pods.items()
    redis_pods = kinds["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    assert services["metricrelay-redis"]["spec"]["selector"].items() <= redis_pods.items()
    assert kinds["StatefulSet"]["spec"]["serviceName"] == "metricrelay-redis"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "metricrelay"
    }


class _ConfiguredRedis(RedisServer):
    """The test's redis-server, started from the StatefulSet's redis.conf."""

    def __init__(self, config: Path) -> None:
        super().__init__()
        self.config = config

    def _argv(self) -> list[str]:
        # the file first; then what must differ here: loopback, a free port, a scratch dir
        return [
            find_redis_server(), str(self.config), "--port", str(self.port),
            "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip


@pytest.mark.integration  # starts a redis-server with the manifest's redis.conf
def test_the_redis_config_runs_with_aof_everysec(tmp_path: Path) -> None:
    config = _by_kind(render("redis"))["ConfigMap"]["data"]["redis.conf"]
    path = tmp_path / "redis.conf"
    path.write_text(config)
    with _ConfiguredRedis(path) as server:
        client = redis.Redis.from_url(server.url)
        settings = {
            name: client.config_get(name)[name]
            for name in ("appendonly", "appendfsync", "maxmemory-policy")
        }
        client.close()
    assert settings == {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
    }


def test_the_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    [user] = [line for line in lines if line.startswith("USER ")]
    assert not user.split()[1].startswith(("0", "root"))
    assert lines.index(user) > max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    assert 'ENTRYPOINT ["metricrelay"]' in lines
    assert lines[-1] == 'CMD ["worker"]'
    # no credential baked in: no ENV/ARG that names one, no key file copied
    for line in lines:
        if line.startswith(("ENV", "ARG")):
            assert not re.search(r"SECRET|TOKEN|PASSWORD|CLIENT_ID|SERVICE_KEY", line, re.I)
    assert not any(line.startswith("COPY") and ".json" in line for line in lines)


# ---------------------------------------------------------------------------- the bundled Redis


def _from_secret(container: dict[str, Any], variable: str) -> dict[str, Any] | None:
    for item in container.get("env", []):
        if item["name"] == variable:
            ref: dict[str, Any] | None = item.get("valueFrom", {}).get("secretKeyRef")
            return ref
    return None


def _expand(container: dict[str, Any], config: dict[str, str], secret: str) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom ConfigMaps first, then env
    entries in order, each expanding $(NAME) of the entries defined before it (only those)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config)
    defined: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            assert item["valueFrom"]["secretKeyRef"] == REDIS_AUTH
            value = secret
        else:
            value = re.sub(
                r"\$\((\w+)\)", lambda m: defined.get(m.group(1), m.group(0)), item["value"]
            )
        defined[item["name"]] = env[item["name"]] = value
    return env


def _redis_service(docs: list[dict[str, Any]]) -> tuple[str, int]:
    [service] = [
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("redis")
    ]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    return host, service["spec"]["ports"][0]["port"]


def test_redis_requires_the_password_of_the_secret() -> None:
    docs = render("overlays/with-redis")
    kinds = _by_kind(docs)
    [container] = kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["sh", "-c"]
    [script] = container["args"]
    # exec: redis-server is PID 1 and gets SIGTERM (final AOF fsync); "-" last: stdin config
    first = script.splitlines()[0]
    assert first.startswith("exec redis-server /etc/redis/redis.conf ") and first.endswith(
        " - <<EOF"
    )
    assert "requirepass $REDIS_PASSWORD" in script.splitlines()
    assert _from_secret(container, "REDIS_PASSWORD") == REDIS_AUTH
    assert _from_secret(container, "REDISCLI_AUTH") == REDIS_AUTH  # the probes' redis-cli
    assert "PONG" in " ".join(container["readinessProbe"]["exec"]["command"])  # not NOAUTH
    [redis_conf] = [
        d["data"]["redis.conf"]
        for d in docs
        if d["kind"] == "ConfigMap" and "redis.conf" in d["data"]
    ]
    assert not re.search(r"^\s*requirepass", redis_conf, re.MULTILINE)  # one source: the Secret
    [example] = documents((K8S / "examples/redis-auth-secret.yaml").read_text())
    assert example["metadata"]["name"] == REDIS_AUTH["name"]
    assert REDIS_AUTH["key"] in example["stringData"]


def test_every_client_of_the_bundled_redis_takes_the_password_from_the_secret() -> None:
    """Every container whose METRICRELAY_REDIS_URL (as Kubernetes builds its environment) names
    the bundled Redis gets the Secret's password into that URL — and there is at least one."""
    docs = render("overlays/with-redis")
    host, port = _redis_service(docs)
    config = next(d["data"] for d in docs if d["metadata"]["name"] == "metricrelay-config")
    clients = 0
    for doc in docs:
        if doc["kind"] not in {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}:
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            env = _expand(container, config, secret="s3cr3t0123abcdef")
            if "METRICRELAY_REDIS_URL" not in env:
                continue
            env.pop("METRICRELAY_SERVICE_KEY", None)  # a file in the pod, not here
            settings = Settings.from_sources(env=env)
            parts = parse_url(settings.redis.redis_url)  # type: ignore[no-untyped-call]
            if parts.get("host") != host:
                continue
            clients += 1
            assert _from_secret(container, "REDIS_PASSWORD") == REDIS_AUTH, doc["metadata"]
            assert (parts["password"], parts.get("port")) == ("s3cr3t0123abcdef", port)
    assert clients == 1  # the workers (the ingest and producers run elsewhere: README)
    # the base, for a Redis of your own, knows nothing of this Secret
    assert "metricrelay-redis-auth" not in json.dumps(render("base"))


def _peers(rule: dict[str, Any]) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    peers = set()
    for peer in rule["from"]:
        [(kind, selector)] = peer.items()  # one selector per peer: both would mean "and"
        assert set(selector) == {"matchLabels"}, peer
        peers.add((kind, frozenset(selector["matchLabels"].items())))
    return peers


def _selected(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) <= {"matchLabels"}
    return bool(selector) and selector["matchLabels"].items() <= labels.items()


def test_network_policies_admit_to_redis_only_workers_ingest_and_producers() -> None:
    docs = render("overlays/with-redis")
    kinds = _by_kind(docs)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    redis_pods = kinds["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    worker_pods = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    [guard] = [p for p in policies if _selected(p, redis_pods)]
    assert guard["spec"]["policyTypes"] == ["Ingress"]
    [rule] = guard["spec"]["ingress"]
    [redis_port] = kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    _, service_port = _redis_service(docs)
    assert rule["ports"] == [{"protocol": "TCP", "port": redis_port["containerPort"]}]
    assert redis_port["containerPort"] == service_port
    worker_peer = {"app.kubernetes.io/name": "metricrelay", "app.kubernetes.io/component": "worker"}
    assert _peers(rule) == {
        ("podSelector", frozenset(worker_peer.items())),
        ("podSelector", frozenset(INGEST_PODS.items())),
        ("namespaceSelector", frozenset(PRODUCER_NAMESPACES.items())),
    }
    assert worker_peer.items() <= worker_pods.items()  # the peer is the workers' pods
    assert not INGEST_PODS.items() <= redis_pods.items()
    # the workers' own policy: only their metrics/probe port, and it does not cover Redis
    [workers] = [p for p in policies if _selected(p, worker_pods)]
    assert not _selected(workers, redis_pods)
    assert workers["spec"]["policyTypes"] == ["Ingress"]
    [container] = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert workers["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": container["ports"][0]["name"]}]}
    ]
    assert container["ports"][0]["containerPort"] == 9095


class _PasswordRedis(RedisServer):
    """A redis-server started by the StatefulSet's own command (sh -c script), with the paths of
    the pod replaced by the test's; ready once it answers at all (NOAUTH included)."""

    def __init__(self, script: str, config: Path) -> None:
        super().__init__()
        self.script, self.config = script, config

    def _argv(self) -> list[str]:
        extra = (
            f"--dir {self.directory} --port {self.port} --bind 127.0.0.1 "
            f"--logfile {self.directory / 'redis.log'}"
        )
        script = (
            self.script.replace("redis-server ", f"{find_redis_server()} ", 1)
            .replace("/etc/redis/redis.conf", str(self.config))
            .replace("--dir /data", extra)
        )
        return ["sh", "-c", script]

    def _wait_ready(self, timeout: float) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=1)

        def state() -> str | None:
            assert self.process is not None
            if self.process.poll() is not None:
                return "exited"
            try:
                client.ping()
            except redis.AuthenticationError:
                return "locked"
            except redis.ConnectionError:
                return None  # not listening yet
            return "open"

        try:
            return until_sync(state, timeout=timeout, what="redis-server answering") == "locked"
        finally:
            client.close()


@pytest.mark.integration  # starts a redis-server with the StatefulSet's command and redis.conf
def test_the_redis_command_refuses_clients_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render("overlays/with-redis")
    kinds = _by_kind(docs)
    [container] = kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    [script] = container["args"]
    redis_conf = next(d["data"]["redis.conf"] for d in docs if "redis.conf" in d.get("data", {}))
    config = tmp_path / "redis.conf"
    config.write_text(redis_conf)
    password = "0123456789abcdef" * 4  # what `openssl rand -hex 32` gives
    monkeypatch.setenv("REDIS_PASSWORD", password)
    host, _ = _redis_service(docs)
    [worker] = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    config_map = next(d["data"] for d in docs if d["metadata"]["name"] == "metricrelay-config")
    with _PasswordRedis(script, config) as server:
        worker_url = _expand(worker, config_map, password)["METRICRELAY_REDIS_URL"]
        local_url = worker_url.replace(f"{host}:6379", f"127.0.0.1:{server.port}")
        anonymous = redis.Redis(port=server.port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        wrong = redis.Redis.from_url(local_url.replace(password, "not-the-password"))
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
        wrong.close()
        client = redis.Redis.from_url(local_url)  # the worker's URL, password from the Secret
        client.xadd("metricrelay:events", {"resource": b"{}"})
        assert client.xlen("metricrelay:events") == 1
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()
