"""The whole-entry fast path gives what codec.py's pydantic path gives, or declines.

codec.py is the judge of every rule and message; wholeentry.py may only recognise entries that
need no judgement. So every test here compares the two: an entry the fast path takes must decode
on the slow path with no problem and to the same items, and bodies built from its run must be
the bodies built from its items one by one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from bench import workloads  # the realistic shapes live with the benchmarks
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.entries import STAMP, entry, metric

from metricrelay.codec import EncodedFragment, decode_entry, whole_fragment
from metricrelay.relay.batching import Body, Coalescer, Limits
from metricrelay.relay.filling import top_up
from metricrelay.wholeentry import items_of, read_checked


def slow(raw: bytes) -> EncodedFragment:
    decoded = decode_entry(raw, entry_ms=1_700_000_000_000, default_resource_group="dflt")
    assert decoded.problems == [] and decoded.fragment is not None
    return decoded.fragment


def fast(raw: bytes) -> EncodedFragment | None:
    fragment = whole_fragment(raw, "dflt")
    return fragment if fragment is not None and fragment.run_count else None


def fast_msgspec(raw: bytes) -> EncodedFragment | None:
    """The msgspec pass alone (what the C recogniser of test_entryscan.py declines goes there)."""
    whole = read_checked(raw)
    if whole is None or not whole[3]:
        return None
    group, execution, run, count, tags, infos = whole
    return EncodedFragment(group or "dflt", execution, [], tags, infos, run, count)


def same_items(raw: bytes, path: Callable[[bytes], EncodedFragment | None] = fast) -> None:
    """``raw`` is taken by the fast path and gives codec.py's items."""
    whole, judged = path(raw), slow(raw)
    assert whole is not None, f"declined: {raw[:200]!r}"
    assert (whole.resource_group, whole.execution_id) == (
        judged.resource_group,
        judged.execution_id,
    )
    assert [orjson.loads(m) for m in items_of(whole.run)] == [
        orjson.loads(m) for m in judged.metrics
    ]
    assert whole.run_count == len(judged.metrics)
    for mine, theirs in ((whole.tags, judged.tags), (whole.custom_info, judged.custom_info)):
        assert [(n, orjson.loads(d)) for n, d in mine] == [(n, orjson.loads(d)) for n, d in theirs]


@pytest.mark.parametrize(
    "entries",
    [
        workloads.w1("t", 800),
        workloads.w2("t", 50),
        workloads.w3("t", 600),
        [e for e in workloads.w4("t", 3000, seed=5) if not e.invalid],
    ],
    ids=["W1", "W2", "W3", "W4-valid"],
)
def test_realistic_entries_travel_whole_with_the_items_codec_would_give(
    entries: list[workloads.Entry],
) -> None:
    for made in entries:
        same_items(made.data)


@pytest.mark.parametrize(
    "raw",
    [
        entry(metric(timestamp="2026-12-01T13:00:00.123456+01:00")),  # rewritten to UTC
        entry(metric(timestamp="2026-12-01T12:00:00Z")),  # no microseconds: rewritten
        entry(metric(timestamp=...)),  # no timestamp: the entry's time is added
        entry(metric(step=None)),  # null is dropped
        entry(metric(labels=[])),  # an empty list is dropped
        entry(metric(labels=None)),
        entry(metric(extra=1)),  # unknown fields are dropped
        entry(metric(), extra=1),
        entry(metric(), tags=[]),
        entry(metric(), resourceGroup=None),
        entry(),  # no metrics at all
        b'{"executionId":"exec-1","metrics":[{"name":"a","value":1,"timestamp" :"'
        + STAMP.encode()
        + b'"}]}',  # a key parted from its colon: point_count would not see it
        b'{"executionId":"exec-1","metrics":[{"name":"a","value":1,"timestamp":"'
        + STAMP.encode()
        + b'","timestamp":"2026-12-01T13:00:00+01:00"}]}',  # the key twice
        # what codec.py refuses
        entry(metric(name="///")),
        entry(metric(name="")),
        entry(metric(value=True)),
        entry(metric(value="1")),
        entry(metric(step=-1)),
        entry(metric(step=2**63)),
        entry(metric(step=1.0)),
        entry(metric(timestamp="2026-02-30T12:00:00.000000Z")),
        entry(metric(timestamp="2026-12-01T12:00:00.000000")),
        entry(metric(labels=[{"name": f"l{i}", "value": "v"} for i in range(21)])),
        entry(metric(labels=[{"name": "rank", "value": "x" * 257}])),
        entry(metric(), tags=[{"name": "t", "value": ""}]),
        entry(metric(), customInfo=[{"name": "c", "value": ""}]),
        orjson.dumps({"executionId": "ex", "metrics": [metric()]}),
        orjson.dumps({"executionId": "exec-1\n", "metrics": [metric()]}),
        entry(metric(), resourceGroup="has space"),
        entry(metric()).replace(b'"value":0.5', b'"value":NaN'),
        entry(metric()).replace(b'"value":0.5', b'"value":1e400'),
        b"not json",
    ],
)
def test_what_needs_judgement_is_declined(raw: bytes) -> None:
    assert fast(raw) is None


def test_tags_and_custom_info_travel_by_name_in_order() -> None:
    raw = entry(
        metric(),
        metric(name="acc", value=3),  # an integer value is a number too
        tags=[{"name": "phase", "value": "a"}, {"name": "phase", "value": "b"}],
        customInfo=[{"name": "notes", "value": "x" * 1000}],
        resourceGroup="team-1",
    )
    same_items(raw)
    whole = fast(raw)
    assert whole is not None and whole.resource_group == "team-1"
    assert [name for name, _ in whole.tags] == ["phase", "phase"]


def test_a_new_metric_name_is_checked_against_the_pattern_each_time_it_is_new() -> None:
    same_items(entry(metric(name="fresh-name-1")))
    assert fast(entry(metric(name="fresh-name-1"), metric(name="..."))) is None


def test_items_of_cuts_a_run_into_its_items() -> None:
    items = [orjson.dumps(metric(step=n, name=f"{{m{n}")) for n in range(4)]
    assert items_of(b",".join(items)) == items
    assert items_of(items[0]) == [items[0]]
    assert items_of(b' {"a":1} , {"b":[{"c":2}]} ') == [b'{"a":1}', b'{"b":[{"c":2}]}']


# -- a strategy of near-valid entries: valid points, some with one field changed -------------

names = st.sampled_from(["loss", "train/loss", "a b", "é", "///", "", "x" * 257])
stamps = st.sampled_from(
    [STAMP, "2026-12-01T12:00:00Z", "2026-12-01T12:00:00.1234567Z", "2026-13-01T00:00:00.000000Z"]
)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70), st.booleans()
)
labels = st.lists(st.fixed_dictionaries({"name": names, "value": names}), max_size=22)
CHANGES = {
    "name": names,
    "value": values,
    "timestamp": st.one_of(stamps, st.just(...)),
    "step": st.one_of(st.none(), st.just(...), st.integers(-2, 2**64)),
    "labels": st.one_of(st.none(), st.just(...), labels),
}


@st.composite
def metrics(draw: st.DrawFn) -> dict[str, Any]:
    item = metric(value=draw(st.floats(-1e6, 1e6)), step=draw(st.integers(0, 10**6)))
    if draw(st.integers(0, 3)) == 0:  # one in four points has a field changed
        field = draw(st.sampled_from(sorted(CHANGES)))
        item = metric(**{**item, field: draw(CHANGES[field])})
    return item


@settings(max_examples=400, deadline=None)
@given(
    st.lists(metrics(), max_size=6),
    st.lists(st.fixed_dictionaries({"name": names, "value": names}), max_size=3),
    st.sampled_from(["exec-1", "x", "team/1"]),
)
def test_anything_the_fast_path_takes_codec_takes_alike(
    items: list[dict[str, Any]], tags: list[dict[str, str]], execution: str
) -> None:
    document: dict[str, Any] = {"executionId": execution, "metrics": items}
    if tags:
        document["tags"] = tags
    try:
        raw = orjson.dumps(document)
    except orjson.JSONEncodeError:  # integers beyond 64 bits: written by json instead
        import json  # noqa: PLC0415

        raw = json.dumps(document).encode()
    for path in (fast, fast_msgspec):  # the intake (C recogniser first), the msgspec pass
        if path(raw) is not None:
            same_items(raw, path)


# -- runs in the coalescer make the bodies single items would ---------------------------------


def bodies(fragments: list[tuple[str, EncodedFragment]], limits: Limits) -> list[bytes]:
    coalescer = Coalescer(limits, linger=1e9)
    out: list[Body] = []
    for source, fragment in fragments:
        coalescer.add(source, fragment, now=0.0)
        out += coalescer.take_ready()
    out += coalescer.flush()
    return [body.encode() for body in out]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32),
    st.integers(1, 30),
    st.integers(400, 20_000),
    st.lists(st.integers(1, 40), min_size=1, max_size=25),
)
def test_runs_make_the_same_bodies_as_single_items(
    seed: int, max_metrics: int, max_bytes: int, sizes: list[int]
) -> None:
    rng = random.Random(seed)
    raws = []
    for number, size in enumerate(sizes):
        points = [
            workloads.point(rng, number * 50 + i, 1.7e9 + i, rng.randrange(8)) for i in range(size)
        ]
        raws.append(orjson.dumps({"executionId": f"exec-{number % 3}", "metrics": points}))
    limits = Limits(max_metrics=max_metrics, max_body_bytes=max_bytes)
    by_runs, by_items = [], []
    for number, raw in enumerate(raws):
        whole = fast(raw)
        assert whole is not None
        by_runs.append((f"{number}-0", whole))
        by_items.append((f"{number}-0", slow(raw)))
    assert [orjson.loads(b) for b in bodies(by_runs, limits)] == [
        orjson.loads(b) for b in bodies(by_items, limits)
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32),
    st.integers(2, 30),
    st.integers(2_000, 40_000),
    st.lists(st.integers(1, 40), min_size=2, max_size=12),
)
def test_filling_moves_runs_as_it_moves_single_items(
    seed: int, max_metrics: int, max_bytes: int, sizes: list[int]
) -> None:
    """A queued body topped up from the next one (filling.py) ends the same, whether the next
    one's points came as runs or one by one; so does the next one."""
    rng = random.Random(seed)
    raws = [
        orjson.dumps(
            {
                "executionId": "exec-1",
                "metrics": [
                    workloads.point(rng, number * 50 + i, 1.7e9 + i, 0) for i in range(size)
                ],
            }
        )
        for number, size in enumerate(sizes)
    ]
    big = Limits(max_metrics=10_000, max_body_bytes=10_000_000)
    limits = Limits(max_metrics=max_metrics, max_body_bytes=max_bytes)
    outcomes = []
    for decode_one in (fast, slow):
        coalescer = Coalescer(big, linger=1e9)
        coalescer.add("0-0", decode_one(raws[0]), now=0.0)  # type: ignore[arg-type]
        (first,) = coalescer.flush()
        for number, raw in enumerate(raws[1:], 1):
            coalescer.add(f"{number}-0", decode_one(raw), now=0.0)  # type: ignore[arg-type]
        (second,) = coalescer.flush()
        if first.size > limits.max_body_bytes or first.metric_count > limits.max_metrics:
            return  # no room to top up at all: nothing to compare
        top_up(first, second, limits)
        outcomes.append(
            (
                orjson.loads(first.encode()),
                orjson.loads(second.encode()),
                first.metric_count,
                second.metric_count,
                first.size == len(first.encode()),
                second.size == len(second.encode()),
            )
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][4] and outcomes[0][5]
