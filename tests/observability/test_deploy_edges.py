"""deploy/ as an operator meets it: the image builds, an autoscaled fleet keeps its size across
`kubectl apply`, each worker is scraped once, and the alerts fire when no worker runs, through
an unreadable lag, and only above their thresholds.

None starts a Redis; the promtool tests skip without promtool, the image-build test without a
package index for hatchling.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.kustomize import render
from tests.support.promtool import NO_PROMTOOL, PROMTOOL

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus/metricrelay-rules.yml"
RULE_TESTS = DEPLOY / "prometheus/metricrelay-rules.test.yml"


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


# ---------------------------------------------------------------------------- the image


def _dockerignore_admits(path: str) -> bool:
    """Docker's rules for deploy/Dockerfile.dockerignore: the last matching pattern wins, a
    pattern matches a path or any of its parent directories, ``!`` re-admits."""
    admitted = True
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            admitted = negate
    return admitted


def _build_stage_copies() -> list[str]:
    """Sources of the first stage's COPY lines (COPY a b ./  →  a, b)."""
    sources: list[str] = []
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"] and sources:
            break
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def _build_hook_script() -> str | None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    hooks = config.get("tool", {}).get("hatch", {}).get("build", {}).get("hooks", {})
    if "custom" not in hooks:
        return None
    return str(hooks["custom"].get("path", "hatch_build.py"))  # hatchling's default name


def test_the_image_build_context_holds_the_build_hook_script() -> None:
    """The build hook (hatch_build.py, which compiles the entry recogniser) is in the image's
    build context and copied by its build stage: without it hatchling refuses to build
    ("Build script does not exist"), and so did `docker build`."""
    script = _build_hook_script()
    assert script is not None and (ROOT / script).is_file()
    assert _dockerignore_admits("pyproject.toml") and _dockerignore_admits("src/metricrelay")
    assert _dockerignore_admits(script), f"{script} is excluded from the image's build context"
    assert script in _build_stage_copies(), f"the build stage does not COPY {script}"


def test_the_image_build_stage_builds_the_wheel(tmp_path: Path) -> None:
    """The build stage's own step, on exactly what it COPYs: `pip wheel --no-deps .`."""
    context = tmp_path / "src-root"
    context.mkdir()
    for source in _build_stage_copies():
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(origin, context / source)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    if done.returncode != 0 and "hatchling" in output and "No matching distribution" in output:
        pytest.skip("no package index to fetch hatchling from")
    assert done.returncode == 0, output[-2000:]
    assert list((tmp_path / "wheels").glob("metricrelay-*.whl"))


# ---------------------------------------------------------------------------- manifests


def test_the_keda_scaled_deployment_leaves_its_replica_count_to_the_autoscaler() -> None:
    """overlays/sharded-cluster scales with KEDA, so its Deployment sets no replica count: every
    `kubectl apply -k` once set a fleet scaled to 8 back to base's 2 (Kubernetes: remove
    spec.replicas from a Deployment an HPA manages)."""
    docs = _by_kind(render("overlays/sharded-cluster"))
    target = docs["ScaledObject"]["spec"]["scaleTargetRef"]["name"]
    assert docs["Deployment"]["metadata"]["name"] == target
    assert "replicas" not in docs["Deployment"]["spec"], (
        f"the autoscaled Deployment pins replicas: {docs['Deployment']['spec']['replicas']}"
    )


def test_each_worker_is_scraped_once_by_annotation_based_discovery() -> None:
    """Only the pods ask to be scraped, not also their Service: annotation-based setups (the
    prometheus-community chart's pod and service-endpoint jobs) scraped every worker twice,
    doubling every sum() of the dashboard and the dead-letter alert."""
    base = _by_kind(render("base"))
    pod = base["Deployment"]["spec"]["template"]["metadata"]
    service = base["Service"]
    assert service["spec"]["selector"].items() <= pod["labels"].items()  # its endpoints: pods
    on_pods = pod.get("annotations", {}).get("prometheus.io/scrape") == "true"
    on_service = service["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true"
    assert on_pods or on_service
    assert not (on_pods and on_service), "both the pods and their Service ask to be scraped"


# ---------------------------------------------------------------------------- alert rules


def _promtool_test(folder: Path, tests: list[dict[str, Any]], rules: str | None = None) -> str:
    """Run `promtool test rules` on these test cases against the rules (or a variant of them);
    returns promtool's output ('' when every case passed)."""
    assert PROMTOOL is not None
    (folder / RULES.name).write_text(rules if rules is not None else RULES.read_text())
    spec = {"rule_files": [RULES.name], "evaluation_interval": "1m", "tests": tests}
    (folder / "review.test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(folder / "review.test.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return "" if done.returncode == 0 else done.stdout + done.stderr


FIRING = 'count(ALERTS{alertstate="firing", alertname=~"Metricrelay.+"})'


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_the_firing_query_sees_alerts(tmp_path: Path) -> None:
    """Guards the next test against a vacuous pass: the ALERTS query does see a firing alert."""
    case = {
        "interval": "1m",
        "input_series": [{"series": 'metricrelay_redis_full{instance="w1"}', "values": "1x10"}],
        "promql_expr_test": [
            {"expr": FIRING, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 1}]}
        ],
    }
    assert _promtool_test(tmp_path, [case]) == ""


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_some_alert_fires_when_no_worker_is_up(tmp_path: Path) -> None:
    """Some alert fires when no worker reports at all (crash-looping on a refused key, an image
    that cannot be pulled, pods that cannot be scheduled): every other rule reads series only
    a running worker exports, so metrics piled up in Redis with no alert."""
    case = {
        "interval": "1m",
        "input_series": [
            # the scrape targets are there (crash-looping pods), their scrapes fail
            {"series": 'up{job="metricrelay", instance="w1"}', "values": "1 0x60"},
            {"series": 'up{job="metricrelay", instance="w2"}', "values": "1 0x60"},
            # the last the workers said: a backlog, then nothing
            {"series": 'metricrelay_consumer_group_lag{instance="w1"}', "values": "5000 stale"},
        ],
        "promql_expr_test": [
            {"expr": FIRING, "eval_time": "45m", "exp_samples": [{"labels": "{}", "value": 1}]}
        ],
    }
    failed = _promtool_test(tmp_path, [case])
    assert failed == "", "no metricrelay alert fires while no worker is up:\n" + failed


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_lag_growing_survives_a_lag_the_worker_could_not_read_once(tmp_path: Path) -> None:
    """The lag gauge is NaN while a worker cannot read it (a failed XINFO GROUPS: just when a
    backlog builds). One NaN in the window once made deriv() NaN and restarted `for: 15m`, so
    an unreadable poll every ten minutes kept the alert silent while the backlog grew."""
    growing = " ".join(
        f"{2000 + 1000 * block}+100x8 NaN" for block in range(6)
    )  # an hour: +100 entries a minute, one unknown sample in every ten
    case = {
        "interval": "1m",
        "input_series": [
            {"series": 'metricrelay_consumer_group_lag{instance="w1"}', "values": growing}
        ],
        "promql_expr_test": [
            {
                "expr": 'count(ALERTS{alertstate="firing", alertname="MetricrelayLagGrowing"})',
                "eval_time": "59m",
                "exp_samples": [{"labels": "{}", "value": 1}],
            }
        ],
    }
    failed = _promtool_test(tmp_path, [case])
    assert failed == "", "the backlog grew for an hour without an alert:\n" + failed


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_the_api_failing_unit_test_holds_its_threshold(tmp_path: Path) -> None:
    """The rules' unit tests hold MetricrelayApiFailing's threshold: a rule lowered from 20 % to
    1 % (paging on any 5xx) fails them (their quiet check once only waited out `for:`)."""
    text = RULES.read_text()
    threshold = '/ sum(rate(metricrelay_requests_total{status!="cancelled"}[5m])) > 0.2'
    assert threshold in text
    lowered = text.replace(threshold, threshold.replace("> 0.2", "> 0.01"))
    (tmp_path / RULES.name).write_text(lowered)
    shutil.copy(RULE_TESTS, tmp_path)
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(tmp_path / RULE_TESTS.name)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0, "the unit tests accept MetricrelayApiFailing at a 1% threshold"
