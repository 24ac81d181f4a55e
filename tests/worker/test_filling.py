"""Merging queued bodies of one execution: the same items in order, within every limit."""

from __future__ import annotations

import random

import orjson
import pytest

from metricrelay.codec import EncodedFragment
from metricrelay.relay.batching import Body, CloseReason, Coalescer, Limits
from metricrelay.relay.entries import EntryBook
from metricrelay.relay.filling import Filler, absorb, top_up


def metric(step: int, size: int = 0) -> bytes:
    item = {"name": "train/loss", "value": step + 0.5, "step": step, "pad": "x" * size}
    return orjson.dumps(item)


def named(name: str, value: str) -> tuple[str, bytes]:
    return name, orjson.dumps({"name": name, "value": value})


def fragment(
    steps: range = range(0),
    tags: list[tuple[str, bytes]] | None = None,
    infos: list[tuple[str, bytes]] | None = None,
    execution: str = "exec-1",
) -> EncodedFragment:
    return EncodedFragment("g", execution, [metric(s) for s in steps], tags or [], infos or [])


def bodies_of(coalescer: Coalescer, *parts: tuple[str, EncodedFragment]) -> list[Body]:
    """One body per part (each flushed on its own), as lingering bodies come out."""
    out = []
    for source, part in parts:
        coalescer.add(source, part, now=0.0)
        out += coalescer.flush()
    return out


def decoded(body: Body) -> dict[str, object]:
    return orjson.loads(body.encode())


def test_a_merge_is_what_one_open_body_would_have_been() -> None:
    parts = [
        ("1-0", fragment(range(0, 3), tags=[named("phase", "warmup")])),
        ("2-0", fragment(range(3, 5), infos=[named("config", "a" * 40)])),
        ("3-0", fragment(range(5, 6), tags=[named("phase", "train"), named("lr", "0.1")])),
    ]
    separate = Coalescer()
    first, *later = bodies_of(separate, *parts)
    for body in later:
        assert absorb(first, body, separate.limits) == []
        assert first.size == len(first.encode())
    together = Coalescer()
    for source, part in parts:
        together.add(source, part, now=0.0)
    [expected] = together.flush()
    assert first.encode() == expected.encode()
    assert list(first.sources) == ["1-0", "2-0", "3-0"]
    assert first.custom_info_bytes == expected.custom_info_bytes
    assert decoded(first)["tags"] == [
        {"name": "phase", "value": "train"},  # the later value, in the first one's place
        {"name": "lr", "value": "0.1"},
    ]


def test_random_merges_keep_sizes_exact_and_items_in_order() -> None:
    rng = random.Random(5)
    for _ in range(50):
        coalescer = Coalescer()
        parts = []
        step = 0
        for number in range(rng.randint(2, 6)):
            count = rng.randint(0, 4)
            tags = [named(f"t{rng.randint(0, 3)}", str(rng.random()))]
            tags *= rng.randint(0, 2)
            infos = [named(f"c{rng.randint(0, 2)}", "v" * rng.randint(1, 30))]
            infos *= rng.random() < 0.3
            if not count and not tags and not infos:
                count = 1
            parts.append((f"{number}-0", fragment(range(step, step + count), tags, infos)))
            step += count
        first, *later = bodies_of(coalescer, *parts)
        for body in later:
            assert absorb(first, body, coalescer.limits) is not None
            assert first.size == len(first.encode())
        assert [m["step"] for m in decoded(first).get("metrics", [])] == list(range(step))


@pytest.mark.parametrize(
    ("limits", "second"),
    [
        (Limits(max_metrics=5), fragment(range(3, 6))),
        (Limits(max_tags=2), fragment(tags=[named("b", "1"), named("c", "1")])),
        (Limits(max_custom_info=1), fragment(infos=[named("other", "1")])),
        (Limits(max_custom_info_bytes=60), fragment(infos=[named("more", "x" * 20)])),
        (Limits(max_body_bytes=300), fragment(range(3, 6))),
    ],
)
def test_nothing_moves_when_any_limit_would_break(limits: Limits, second: EncodedFragment) -> None:
    coalescer = Coalescer(limits)
    first_part = fragment(range(0, 3), tags=[named("a", "1")], infos=[named("info", "y" * 20)])
    first, other = bodies_of(coalescer, ("1-0", first_part), ("2-0", second))
    before = first.encode()
    assert absorb(first, other, limits) is None
    assert first.encode() == before and list(first.sources) == ["1-0"]


def test_a_replaced_name_does_not_count_twice_against_the_limits() -> None:
    limits = Limits(max_tags=1, max_custom_info=1)
    coalescer = Coalescer(limits)
    first, other = bodies_of(
        coalescer,
        ("1-0", fragment(tags=[named("a", "1")], infos=[named("c", "x")])),
        ("2-0", fragment(tags=[named("a", "2")], infos=[named("c", "y")])),
    )
    assert absorb(first, other, limits) == []
    assert decoded(first) == {
        "executionId": "exec-1",
        "tags": [{"name": "a", "value": "2"}],
        "customInfo": [{"name": "c", "value": "y"}],
    }


def test_bodies_of_other_executions_never_merge() -> None:
    coalescer = Coalescer()
    first, other = bodies_of(
        coalescer, ("1-0", fragment(range(1))), ("2-0", fragment(range(1), execution="exec-2"))
    )
    with pytest.raises(ValueError, match="one execution"):
        absorb(first, other, coalescer.limits)


def test_the_filler_gives_back_the_extra_hold_of_an_entry_in_both_bodies() -> None:
    book = EntryBook()
    coalescer = Coalescer(Limits(max_metrics=4), book=book)
    book.admit("1-0", 100)
    coalescer.add("1-0", fragment(range(0, 6)), now=0.0)  # 4 + 2: the entry is in two bodies
    first, second = coalescer.take_ready() + coalescer.flush()
    assert first.close_reason is CloseReason.METRICS
    fill = Filler(coalescer)
    assert not fill(first, second)  # 6 metrics: too many for one body
    coalescer.limits = Limits(max_metrics=10)  # a learned limit recovered, say
    assert fill(first, second)
    assert first.close_reason is CloseReason.FLUSH and len(first.metrics) == 6
    assert coalescer.complete(first) == ["1-0"]  # one body, one hold: the entry is done


def test_top_up_moves_the_first_metrics_that_fit_and_leaves_the_rest_in_order() -> None:
    coalescer = Coalescer(Limits(max_metrics=5))
    first, other = bodies_of(
        coalescer,
        ("1-0", fragment(range(0, 3))),
        ("2-0", fragment(range(3, 7), tags=[named("phase", "late")])),
    )
    assert absorb(first, other, coalescer.limits) is None  # 7 metrics: not all of it
    assert top_up(first, other, coalescer.limits) == ["2-0"]
    assert [m["step"] for m in decoded(first)["metrics"]] == [0, 1, 2, 3, 4]
    assert "tags" not in decoded(first)  # the later body's tag stays with its later metrics
    assert decoded(other) == {
        "executionId": "exec-1",
        "metrics": [orjson.loads(metric(5)), orjson.loads(metric(6))],
        "tags": [{"name": "phase", "value": "late"}],
    }
    assert first.size == len(first.encode()) and other.size == len(other.encode())
    assert list(first.sources) == ["1-0", "2-0"] and list(other.sources) == ["2-0"]


def test_top_up_keeps_the_byte_budget() -> None:
    one = len(metric(0, size=100))
    coalescer = Coalescer(Limits(max_body_bytes=4 * one + 60))
    first = Body("g", "exec-1", 0.0, b'{"executionId":"exec-1"')
    first.metrics.append((metric(0, size=100), "1-0"))
    first.metric_count, first.size = 1, len(first.encode())
    other = Body("g", "exec-1", 0.0, b'{"executionId":"exec-1"')
    for step in range(1, 6):
        other.metrics.append((metric(step, size=100), "2-0"))
    other.metric_count, other.size = 5, len(other.encode())
    top_up(first, other, coalescer.limits)
    assert first.size == len(first.encode()) <= coalescer.limits.max_body_bytes
    assert len(first.metrics) == 4 and len(other.metrics) == 2


def test_filling_a_queue_makes_every_body_but_the_last_full_in_order() -> None:
    """What the scheduler does with an execution's queue: each later body fills the last one,
    and what does not fit queues behind it."""
    rng = random.Random(11)
    book = EntryBook()
    coalescer = Coalescer(Limits(max_metrics=50), book=book)
    fill = Filler(coalescer)
    step = 0
    queue: list[Body] = []
    for number in range(60):
        count = rng.choice([1, 1, 20])  # W2 and W3 entries, shrunk
        book.admit(f"{number}-0", 10)
        coalescer.add(f"{number}-0", fragment(range(step, step + count)), now=0.0)
        step += count
        for body in coalescer.flush():
            if not queue or not fill(queue[-1], body):
                queue.append(body)
    steps = [m["step"] for body in queue for m in decoded(body)["metrics"]]
    assert steps == list(range(step))
    assert all(len(body.metrics) == 50 for body in queue[:-1])
    assert all(body.size == len(body.encode()) for body in queue)
    done = [i for body in queue for i in coalescer.complete(body)]
    assert sorted(done, key=lambda i: int(i.split("-")[0])) == [f"{n}-0" for n in range(60)]
    assert len(done) == len(set(done))  # every entry done once: holds exactly right
