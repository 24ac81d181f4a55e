"""The coalescer: limits, linger, last-write-wins, order and acknowledgement bookkeeping."""

from __future__ import annotations

import orjson
import pytest

from metricrelay.codec import EncodedFragment
from metricrelay.models import MAX_CUSTOM_INFO_BYTES
from metricrelay.relay.batching import Body, CloseReason, Coalescer, Limits
from metricrelay.relay.entries import EntryBook


def frag(
    metrics: int | list[bytes] = 0,
    tags: dict[str, str] | None = None,
    custom_info: dict[str, str] | None = None,
    execution: str = "exec-1",
    group: str = "default",
) -> EncodedFragment:
    encoded = (
        [orjson.dumps({"name": "loss", "value": float(i)}) for i in range(metrics)]
        if isinstance(metrics, int)
        else metrics
    )
    return EncodedFragment(
        group,
        execution,
        encoded,
        [(k, orjson.dumps({"name": k, "value": v})) for k, v in (tags or {}).items()],
        [(k, orjson.dumps({"name": k, "value": v})) for k, v in (custom_info or {}).items()],
    )


def decoded(body: Body) -> dict[str, object]:
    data = body.encode()
    assert len(data) == body.size
    result: dict[str, object] = orjson.loads(data)
    return result


def test_one_metric_makes_one_exact_body() -> None:
    coalescer = Coalescer()
    assert coalescer.add("1-0", frag(1, {"stage": "dev"}, {"report": "{}"}), now=0.0) == []
    [body] = coalescer.flush()
    assert body.encode() == (
        b'{"executionId":"exec-1","metrics":[{"name":"loss","value":0.0}],'
        b'"tags":[{"name":"stage","value":"dev"}],"customInfo":[{"name":"report","value":"{}"}]}'
    )
    assert body.close_reason is CloseReason.FLUSH
    assert list(body.sources) == ["1-0"]
    assert coalescer.complete(body) == ["1-0"]
    assert len(coalescer.book) == 1  # done, kept until its acknowledgement is written
    coalescer.book.acked(["1-0"])
    assert len(coalescer.book) == 0


def test_an_entry_spanning_bodies_is_done_only_when_all_are() -> None:
    coalescer = Coalescer()
    coalescer.add("1-0", frag(2500), now=0.0)
    full = coalescer.take_ready()
    assert [len(b.metrics) for b in full] == [1000, 1000]
    assert all(b.close_reason is CloseReason.METRICS for b in full)
    [rest] = coalescer.flush()
    assert len(rest.metrics) == 500
    assert coalescer.complete(full[1]) == []
    assert coalescer.complete(rest) == []
    assert coalescer.complete(full[0]) == ["1-0"]


def test_linger_closes_the_oldest_bodies_first() -> None:
    coalescer = Coalescer(linger=0.5)
    coalescer.add("1-0", frag(1, execution="exec-a"), now=10.0)
    coalescer.add("2-0", frag(1, execution="exec-b"), now=10.3)
    assert coalescer.next_deadline() == 10.5
    assert coalescer.poll(10.49) == []
    [first] = coalescer.poll(10.5)
    assert first.execution_id == "exec-a"
    assert first.close_reason is CloseReason.LINGER
    assert coalescer.next_deadline() == pytest.approx(10.8)
    [second] = coalescer.poll(11.0)
    assert second.execution_id == "exec-b"
    assert coalescer.next_deadline() is None


def test_bodies_are_per_resource_group_and_execution() -> None:
    coalescer = Coalescer()
    coalescer.add("1-0", frag(1, execution="exec-a", group="g1"), now=0.0)
    coalescer.add("2-0", frag(1, execution="exec-a", group="g2"), now=0.0)
    coalescer.add("3-0", frag(1, execution="exec-b", group="g1"), now=0.0)
    bodies = coalescer.flush()
    assert [b.key for b in bodies] == [("g1", "exec-a"), ("g2", "exec-a"), ("g1", "exec-b")]


def test_tags_and_custom_info_last_write_wins_within_a_body() -> None:
    coalescer = Coalescer()
    coalescer.add("1-0", frag(0, {"stage": "dev", "team": "a"}, {"cm": "old"}), now=0.0)
    coalescer.add("2-0", frag(0, {"stage": "prod"}, {"cm": "new!"}), now=0.1)
    [body] = coalescer.flush()
    assert decoded(body) == {
        "executionId": "exec-1",
        "tags": [{"name": "stage", "value": "prod"}, {"name": "team", "value": "a"}],
        "customInfo": [{"name": "cm", "value": "new!"}],
    }
    assert list(body.sources) == ["1-0", "2-0"]  # the superseded entry is covered too
    assert coalescer.complete(body) == ["1-0", "2-0"]


@pytest.mark.parametrize(
    ("limits", "entries", "reason"),
    [
        (Limits(max_tags=2), [frag(0, {"a": "1", "b": "2", "c": "3"})], CloseReason.TAGS),
        (Limits(max_custom_info=1), [frag(0, None, {"a": "1", "b": "2"})], CloseReason.CUSTOM_INFO),
        (
            Limits(max_custom_info_bytes=100),
            [frag(0, None, {"a": "x" * 40, "b": "y" * 40})],
            CloseReason.CUSTOM_INFO_BYTES,
        ),
        (Limits(max_body_bytes=300), [frag(20)], CloseReason.BYTES),
    ],
)
def test_each_limit_closes_a_body(
    limits: Limits, entries: list[EncodedFragment], reason: CloseReason
) -> None:
    coalescer = Coalescer(limits)
    for number, entry in enumerate(entries):
        coalescer.add(f"{number}-0", entry, now=0.0)
    first, *more = coalescer.take_ready()
    assert first.close_reason is reason
    rest = more + coalescer.flush()
    assert rest
    for body in [first, *rest]:
        data = decoded(body)
        assert len(body.encode()) <= limits.max_body_bytes
        assert len(data.get("tags", [])) <= limits.max_tags  # type: ignore[arg-type]
        assert body.custom_info_bytes <= limits.max_custom_info_bytes


def test_replacing_a_tag_that_would_overflow_the_budget_opens_a_new_body() -> None:
    coalescer = Coalescer(Limits(max_body_bytes=300))
    coalescer.add("1-0", frag(3, {"a": "x"}), now=0.0)
    coalescer.add("2-0", frag(0, {"a": "y" * 200}), now=0.0)
    [old] = coalescer.take_ready()
    assert old.close_reason is CloseReason.BYTES
    [new] = coalescer.flush()
    assert decoded(old)["tags"] == [{"name": "a", "value": "x"}]
    assert decoded(new)["tags"] == [{"name": "a", "value": "y" * 200}]


def test_only_a_documented_limit_makes_an_item_invalid_at_intake() -> None:
    coalescer = Coalescer()
    huge = "x" * MAX_CUSTOM_INFO_BYTES  # encoded with its name, over the API's 5 MB
    entry = frag(2, None, {"huge": huge, "ok": "fine"})
    assert coalescer.add("1-0", entry, now=0.0) == []
    [rejected] = coalescer.take_rejected()
    assert rejected.section == "customInfo"
    assert f"at most {MAX_CUSTOM_INFO_BYTES}" in rejected.reason
    assert orjson.loads(rejected.resource()) == {
        "resourceGroup": "default",
        "executionId": "exec-1",
        "customInfo": [{"name": "huge", "value": huge}],
    }
    [body] = coalescer.flush()
    assert decoded(body)["customInfo"] == [{"name": "ok", "value": "fine"}]
    assert coalescer.complete(body) == []  # the rejected item still holds the entry
    assert coalescer.resolve(rejected) == ["1-0"]


def test_an_item_over_the_byte_budget_travels_alone_instead_of_being_rejected() -> None:
    coalescer = Coalescer(Limits(max_body_bytes=200, max_custom_info_bytes=1000))
    big = orjson.dumps(
        {"name": "loss", "value": 1.0, "labels": [{"name": "a", "value": "v" * 250}]}
    )
    ok = orjson.dumps({"name": "ok", "value": 1.0})
    coalescer.add("1-0", frag([ok, big, ok], None, {"cm": "c" * 2000}), now=0.0)
    assert coalescer.take_rejected() == []
    bodies = [*coalescer.take_ready(), *coalescer.flush()]
    assert [len(b.metrics) for b in bodies] == [1, 1, 1, 0]
    assert bodies[1].metrics[0][0] == big and bodies[1].size > 200
    assert decoded(bodies[3])["customInfo"] == [{"name": "cm", "value": "c" * 2000}]
    assert [b.size <= 200 for b in bodies] == [True, False, True, False]


def test_an_entry_with_no_items_is_done_at_once() -> None:
    coalescer = Coalescer()
    assert coalescer.add("1-0", frag(0), now=0.0) == ["1-0"]
    assert coalescer.flush() == []


def test_a_body_exactly_at_the_budget_is_allowed() -> None:
    one = orjson.dumps({"name": "loss", "value": 0.0})
    head = len(b'{"executionId":"exec-1"') + len(b',"metrics":[') + len(b"]}")
    budget = head + 5 * len(one) + 4  # five metrics and four commas
    coalescer = Coalescer(Limits(max_body_bytes=budget))
    coalescer.add("1-0", frag([one] * 6), now=0.0)
    [full] = coalescer.take_ready()
    assert full.size == budget == len(full.encode())
    assert len(full.metrics) == 5


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_metrics"):
        Limits(max_metrics=0)
    with pytest.raises(ValueError, match="max_body_bytes"):
        Limits(max_body_bytes=100)


def test_the_book_refuses_a_release_without_a_hold() -> None:
    ledger = EntryBook()
    ledger.hold("1-0", 2)
    assert ledger.release(["1-0"]) == []
    assert "1-0" in ledger
    assert ledger.release(["1-0"]) == ["1-0"]
    with pytest.raises(KeyError):
        ledger.release(["1-0"])


def test_split_keeps_order_sizes_and_sources() -> None:
    coalescer = Coalescer()
    coalescer.add("1-0", frag(3, {"a": "1"}), now=0.0)
    coalescer.add("2-0", frag(2, {"a": "2"}, {"cm": "{}"}), now=0.0)
    [body] = coalescer.flush()
    first, second = body.split()
    halves = [decoded(first), decoded(second)]  # asserts size == len(encode()) for each
    assert [m["value"] for h in halves for m in h.get("metrics", [])] == [0.0, 1.0, 2.0, 0.0, 1.0]
    assert halves[1]["tags"] == [{"name": "a", "value": "2"}]
    assert halves[1]["customInfo"] == [{"name": "cm", "value": "{}"}]
    assert set(first.sources) | set(second.sources) == {"1-0", "2-0"}
    resource = orjson.loads(first.resource())
    assert resource["resourceGroup"] == "default" and resource["executionId"] == "exec-1"
    with pytest.raises(ValueError, match="cannot be split"):
        first.split()[0].split()[0].split()


def test_learning_from_413_shrinks_later_bodies_never_below_the_floor() -> None:
    coalescer = Coalescer(Limits(max_body_bytes=1_000_000))
    coalescer.add("1-0", frag(800), now=0.0)
    [body] = coalescer.flush()
    learned = coalescer.learn_too_large(body, now=0.0)
    assert learned.max_metrics == 400
    assert learned.max_body_bytes == max(body.size // 2, 16 * 1024)
    small = Coalescer(Limits(max_body_bytes=1000))
    small.add("1-0", frag(20), now=0.0)
    assert small.learn_too_large(small.flush()[0], now=0.0).max_body_bytes == 1000


def test_learned_limits_never_condemn_an_item_and_recover_after_a_quiet_period() -> None:
    """Issue 14, failure mode 4: a 413 about the metric count halved the byte budget, and then
    intake dead-lettered as invalid every customInfo item larger than it, for good."""
    coalescer = Coalescer(recover_after=60.0)
    coalescer.add("1-0", frag(200), now=0.0)
    [body] = coalescer.flush()
    for now in (1.0, 2.0, 3.0):  # the API takes 100 metrics a request: 413s, halving each time
        learned = coalescer.learn_too_large(body, now=now)
    assert learned.max_metrics == 100 and learned.max_body_bytes == 16 * 1024
    report = {"mid": "m" * 20_000, "big": "b" * 1_000_000}  # the API allows 5 MB
    assert coalescer.add("2-0", frag(0, None, report), now=4.0) == []
    assert coalescer.take_rejected() == []
    sent = [*coalescer.take_ready(), *coalescer.flush()]
    assert sorted(len(decoded(b)["customInfo"][0]["value"]) for b in sent) == [20_000, 1_000_000]
    coalescer.poll(50.0)
    assert coalescer.limits.max_metrics == 100  # not quiet long enough yet
    coalescer.poll(63.0)
    assert coalescer.limits.max_metrics == 200  # one step up per quiet period
    assert coalescer.limits.max_body_bytes == 32 * 1024
    for now in (123.0, 183.0, 243.0, 303.0, 363.0, 423.0, 483.0, 543.0, 603.0):
        coalescer.poll(now)
    assert coalescer.limits == coalescer.configured == Limits()
