"""Property tests of the coalescer over random streams of fragments and random limits."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from metricrelay.codec import EncodedFragment
from metricrelay.models import MAX_CUSTOM_INFO_BYTES
from metricrelay.relay.batching import Body, Coalescer, Limits, Rejected

EXECUTIONS = [
    ("default", "exec-a"),
    ("default", "exec-b"),
    ("team-2", "exec-a"),
    ("g", "e-long-" * 8),
]
NAMES = ["stage", "team", "lr", "Confusion Matrix"]


@dataclass
class Entry:
    source: str
    fragment: EncodedFragment
    advance: float  # seconds between the previous entry and this one
    poll: bool


@dataclass
class Outcome:
    bodies: list[Body] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    released_at_intake: list[str] = field(default_factory=list)


@st.composite
def limits(draw: st.DrawFn) -> Limits:
    return Limits(
        max_metrics=draw(st.integers(1, 12)),
        max_tags=draw(st.integers(1, 4)),
        max_custom_info=draw(st.integers(1, 3)),
        max_custom_info_bytes=draw(st.integers(40, 400)),
        max_body_bytes=draw(st.integers(200, 1200)),
    )


@st.composite
def streams(draw: st.DrawFn) -> list[Entry]:
    entries = []
    serial = 0
    for number in range(draw(st.integers(1, 40))):
        group, execution = draw(st.sampled_from(EXECUTIONS))
        metrics = []
        for _ in range(draw(st.integers(0, 15))):
            serial += 1
            pad = "p" * draw(st.integers(0, 300))  # some too large for a small budget
            metrics.append(orjson.dumps({"name": "m", "value": float(serial), "pad": pad}))
        tags = [
            (
                name,
                orjson.dumps(
                    {"name": name, "value": draw(st.text("xyz", min_size=1, max_size=60))}
                ),
            )
            for name in draw(st.lists(st.sampled_from(NAMES), max_size=3))
        ]
        infos = [
            (name, orjson.dumps({"name": name, "value": "v" * draw(st.integers(1, 300))}))
            for name in draw(st.lists(st.sampled_from(NAMES), max_size=2))
        ]
        entries.append(
            Entry(
                f"{number + 1}-0",
                EncodedFragment(group, execution, metrics, tags, infos),
                draw(st.sampled_from([0.0, 0.01, 0.2, 0.6])),
                draw(st.booleans()),
            )
        )
    return entries


def run(coalescer: Coalescer, entries: list[Entry]) -> Outcome:
    outcome = Outcome()
    now = 0.0
    for entry in entries:
        now += entry.advance
        outcome.released_at_intake += coalescer.add(entry.source, entry.fragment, now)
        outcome.rejected += coalescer.take_rejected()
        outcome.bodies += coalescer.poll(now) if entry.poll else coalescer.take_ready()
    outcome.bodies += coalescer.flush()
    outcome.rejected += coalescer.take_rejected()
    return outcome


def items_of(body: Body) -> dict[str, list[object]]:
    data = body.encode()
    assert len(data) == body.size  # the reported size is what goes on the wire
    document = orjson.loads(data)
    assert document["executionId"] == body.execution_id
    return document  # type: ignore[no-any-return]


@settings(max_examples=250, deadline=None)
@given(limits(), streams())
def test_no_body_breaks_any_limit(limits: Limits, entries: list[Entry]) -> None:
    outcome = run(Coalescer(limits, linger=0.5), entries)
    for body in outcome.bodies:
        document = items_of(body)
        assert len(document.get("metrics", [])) <= limits.max_metrics
        assert len(document.get("tags", [])) <= limits.max_tags
        infos = document.get("customInfo", [])
        assert len(infos) <= limits.max_custom_info
        if body.item_count == 1:  # an item over the budget travels alone, never rejected
            continue
        assert 0 < body.size <= limits.max_body_bytes
        assert sum(len(orjson.dumps(i)) for i in infos) <= limits.max_custom_info_bytes
        tag_names = [t["name"] for t in document.get("tags", [])]  # type: ignore[index]
        assert len(tag_names) == len(set(tag_names))


@settings(max_examples=250, deadline=None)
@given(limits(), streams())
def test_every_metric_once_in_stream_order_per_execution(
    limits: Limits, entries: list[Entry]
) -> None:
    outcome = run(Coalescer(limits, linger=0.5), entries)
    rejected = {r.item for r in outcome.rejected if r.section == "metrics"}
    for key in EXECUTIONS:
        written = [
            m
            for e in entries
            if (e.fragment.resource_group, e.fragment.execution_id) == key
            for m in e.fragment.metrics
        ]
        sent = [
            orjson.dumps(m)
            for b in outcome.bodies
            if b.key == key
            for m in items_of(b).get("metrics", [])
        ]
        lost_to_rejection = [m for m in written if m in rejected]
        assert sent == [m for m in written if m not in rejected]
        assert len(sent) + len(lost_to_rejection) == len(written)
    for r in outcome.rejected:  # a rejection is only for what breaks a documented limit
        assert r.section == "customInfo" and len(r.item) > MAX_CUSTOM_INFO_BYTES


@settings(max_examples=250, deadline=None)
@given(limits(), streams())
def test_tags_and_custom_info_end_with_the_last_value_written(
    limits: Limits, entries: list[Entry]
) -> None:
    outcome = run(Coalescer(limits, linger=0.5), entries)
    # an item's fit depends on its execution id's length too: key rejections by execution
    rejected = {(r.resource_group, r.execution_id, r.section, r.item) for r in outcome.rejected}
    for section, attribute in (("tags", "tags"), ("customInfo", "custom_info")):
        expected: dict[tuple[str, str, str], bytes] = {}
        for e in entries:
            key = (e.fragment.resource_group, e.fragment.execution_id)
            for name, data in getattr(e.fragment, attribute):
                if (*key, section, data) not in rejected:
                    expected[(e.fragment.resource_group, e.fragment.execution_id, name)] = data
        applied: dict[tuple[str, str, str], bytes] = {}
        for body in outcome.bodies:  # the server upserts by name, body after body
            for item in items_of(body).get(section, []):
                applied[(*body.key, item["name"])] = orjson.dumps(item)  # type: ignore[index]
        assert applied == expected


@settings(max_examples=250, deadline=None)
@given(limits(), streams(), st.randoms(use_true_random=False))
def test_every_stream_id_is_released_exactly_once_and_only_when_done(
    limits: Limits, entries: list[Entry], rng: random.Random
) -> None:
    coalescer = Coalescer(limits, linger=0.5)
    outcome = run(coalescer, entries)
    parts: list[Body | Rejected] = [*outcome.bodies, *outcome.rejected]
    rng.shuffle(parts)  # deliveries and dead-letter writes finish in any order
    holders: dict[str, set[int]] = {}
    for index, part in enumerate(parts):
        for source in part.sources if isinstance(part, Body) else [part.source]:
            holders.setdefault(source, set()).add(index)
    released = list(outcome.released_at_intake)
    for source in released:
        assert source not in holders  # only entries with nothing to send are done at intake
    for index, part in enumerate(parts):
        for source in part.sources if isinstance(part, Body) else [part.source]:
            holders[source].discard(index)
        done = coalescer.complete(part) if isinstance(part, Body) else coalescer.resolve(part)
        for source in done:
            assert not holders[source], "released while a part holding it is unfinished"
        released += done
    assert sorted(released) == sorted(e.source for e in entries)
    coalescer.book.acked(released)
    assert len(coalescer.book) == 0
