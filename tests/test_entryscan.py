"""The native recogniser (_entryscan.c) takes only what codec.py takes, and gives the same.

Like wholeentry.py it may decline anything; what it takes must decode on codec.py's pydantic
path with no problem and to the same points. Checked on the workloads, on the shapes producers
write (compact JSON, Python's ``json.dumps``), on entries one field away from valid, and on
valid entries with random bytes changed, inserted or deleted.
"""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from bench import workloads
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.entries import STAMP, entry, metric

from metricrelay import wholeentry
from metricrelay._entryscan import scan  # built by hatch_build.py at install
from metricrelay.codec import decode_entry
from metricrelay.models import MAX_LABELS, MAX_NAME_CHARS
from metricrelay.wholeentry import items_of


def judged(raw: bytes) -> tuple[str, str, list[Any]] | None:
    """(resource group, execution, points) as codec.py's pydantic path gives them, or None when
    it reports a problem or rewrites the entry (a timestamp filled in, a null dropped)."""
    decoded = decode_entry(raw, entry_ms=1_700_000_000_000, default_resource_group="dflt")
    if decoded.problems or decoded.fragment is None:
        return None
    fragment = decoded.fragment
    return (
        fragment.resource_group,
        fragment.execution_id,
        [orjson.loads(m) for m in fragment.metrics],
    )


def _as_api_reads(point: dict[str, Any]) -> dict[str, Any]:
    """A value as the API reads it: a double. An integer written with more digits than a double
    holds travels as written (as through wholeentry.read) and reads as the float codec.py makes."""
    return {**point, "value": float(point["value"])}


def agrees(raw: bytes) -> bool:
    """True when scan took ``raw``; fails when it took what codec.py would not give alike."""
    found = scan(raw)
    if found is None:
        return False
    group, execution, run, count = found
    truth = judged(raw)
    assert truth is not None, f"scan took what codec.py refuses: {raw[:300]!r}"
    assert (group or "dflt", execution) == truth[:2]
    assert [_as_api_reads(orjson.loads(item)) for item in items_of(run)] == truth[2]
    assert count == len(truth[2]) == wholeentry.point_count(run)
    return True


def test_the_native_recogniser_is_built() -> None:
    """CI's machine has a C compiler: the fast path must not silently be the fallback."""
    assert wholeentry.NATIVE


@pytest.mark.parametrize("make", [workloads.w1, workloads.w2, workloads.w3])
def test_it_takes_every_realistic_entry_and_gives_the_msgspec_pass_result(make: Any) -> None:
    for made in make("scan", 400):
        assert agrees(made.data)
        # the two fast passes agree exactly (bytes of the run included)
        assert wholeentry.read_checked(made.data) == (*scan(made.data), [], [])  # type: ignore[misc]


def test_python_json_dumps_spacing_is_taken() -> None:
    point = {"name": "loss", "value": 0.5, "timestamp": STAMP, "step": 3}
    point["labels"] = [{"name": "rank", "value": "0"}]
    raw = json.dumps({"executionId": "exec-1", "metrics": [point, point]}, indent=1).encode()
    assert agrees(raw)


@pytest.mark.parametrize(
    "raw",
    [
        entry(metric(), tags=[{"name": "t", "value": "v"}]),  # tags: the msgspec pass's
        entry(metric(), customInfo=[{"name": "c", "value": "v"}]),
        entry(metric(name="caf\u00e9")),  # non-ASCII text
        entry(metric(name='a"b')),  # an escape
        entry(metric(timestamp="2024-02-29T00:00:00.000000Z")).replace(b"2024", b"2023"),
        entry(metric(timestamp="2026-12-01T24:00:00.000000Z")),
        entry(metric(timestamp="0000-12-01T12:00:00.000000Z")),
        entry(metric(timestamp="2026-04-31T12:00:00.000000Z")),
        entry(metric(value=1e308)).replace(b"1e+308", b"1e+309"),
        entry(metric(value=1)).replace(b'"value":1', b'"value":' + b"9" * 400),
        entry(metric(value=1)).replace(b'"value":1', b'"value":01'),
        entry(metric(value=1)).replace(b'"value":1', b'"value":1.'),
        entry(metric(value=1)).replace(b'"value":1', b'"value":-'),
        entry(metric(step=2**63 - 1)).replace(b"9223372036854775807", b"9223372036854775808"),
        entry(metric(step=1)).replace(b'"step":1', b'"step":1e0'),
        entry(metric(labels=[])),
        entry(metric(labels=[{"name": "rank"}])),
        entry(metric(labels=[{"name": "rank", "value": "0", "extra": "1"}])),
        entry(metric(labels=[{"name": "rank", "value": "0"}])).replace(
            b'"value":"0"', b'"value":"0","name":"x"'
        ),
        entry(metric(), metric()).replace(b"},{", b"}{"),
        entry(metric()) + b"x",
        entry(metric(step=1)).replace(b'"step":1', b'"step":1,"step":2'),
        entry(metric()).replace(b'"exec-1"', b'"exec-1","executionId":"exec-2"'),
        entry(),
        entry(metric(), resourceGroup=None),
        entry(metric(), resourceGroup=""),
    ],
)
def test_it_declines_what_needs_judgement(raw: bytes) -> None:
    assert scan(raw) is None


def test_the_largest_step_and_the_edges_of_a_real_date_are_taken() -> None:
    assert agrees(entry(metric(step=2**63 - 1, timestamp="2024-02-29T23:59:59.999999Z")))
    assert agrees(entry(metric(timestamp="0001-01-01T00:00:00.000000Z", value=-1.5e-300)))
    assert agrees(entry(metric(labels=[{"name": f"l{i}", "value": "v"} for i in range(20)])))
    big = entry(metric(name="x" * 256, value=1)).replace(b'"value":1', b'"value":' + b"9" * 300)
    assert agrees(big)  # 300 digits: finite without a conversion


def test_its_limits_are_the_models_limits() -> None:
    """_entryscan.c repeats MAX_NAME_CHARS and MAX_LABELS: at each limit taken, one past it not."""
    longest = "x" * MAX_NAME_CHARS
    assert agrees(entry(metric(name=longest, labels=[{"name": longest, "value": longest}])))
    assert scan(entry(metric(name=longest + "x"))) is None
    assert scan(entry(metric(labels=[{"name": "rank", "value": longest + "x"}]))) is None
    most = [{"name": f"l{i}", "value": "v"} for i in range(MAX_LABELS)]
    assert agrees(entry(metric(labels=most)))
    assert scan(entry(metric(labels=[*most, {"name": "one", "value": "more"}]))) is None


_ALPHABET = b'{}[],:"\\ 0123456789.eE+-aZ/_\x00\x7f\xc3\xa9tfnul'


def mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(3)
        if kind == 0 and at < len(data):
            del data[at]
        elif kind == 1 and at < len(data):
            data[at] = rng.choice(_ALPHABET)
        else:
            data[at:at] = bytes([rng.choice(_ALPHABET)])
    return bytes(data)


def mutated(seed: int) -> bytes:
    """A valid entry of 1-3 points with 1-3 bytes changed, inserted or deleted."""
    rng = random.Random(seed)
    labels = [{"name": "rank", "value": str(rng.randrange(8))}]
    points = [
        metric(name=rng.choice(workloads.NAMES), value=rng.uniform(-9, 9), step=s, labels=labels)
        for s in range(rng.randint(1, 3))
    ]
    raw = entry(*points, **({"resourceGroup": "team-1"} if rng.random() < 0.3 else {}))
    return mutate(raw, rng)


@settings(max_examples=3000, deadline=None)
@given(st.integers(0, 2**32))
def test_whatever_bytes_are_changed_it_takes_nothing_codec_would_not_give_alike(seed: int) -> None:
    agrees(mutated(seed))


def test_the_changed_bytes_lead_to_both_answers() -> None:
    """The fuzzing above is not empty: some changed entries are still taken (and compared)."""
    taken = sum(agrees(mutated(seed)) for seed in range(1000))
    assert 20 < taken < 900
