"""decode_entry: good items go on, each bad one is reported on its own, nothing escapes."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from metricrelay.codec import decode_entry, format_path

ENTRY_MS = 1_795_435_200_123


def decode(raw: bytes):  # type: ignore[no-untyped-def]
    return decode_entry(raw, entry_ms=ENTRY_MS, default_resource_group="default")


def test_mixed_entry_keeps_good_items_and_reports_each_bad_one() -> None:
    raw = orjson.dumps(
        {
            "resourceGroup": "team-a",
            "executionId": "exec-1",
            "metrics": [
                {"name": "loss", "value": 1.0, "step": 0},
                {"name": "loss", "value": True, "step": -1},  # two errors, one item
                {"name": "loss", "value": 3.0, "step": 2},
                {"name": "", "value": 4.0},
            ],
            "tags": [{"name": "stage", "value": ""}, {"name": "team", "value": "vision"}],
            "customInfo": [{"name": "Confusion Matrix", "value": "{}"}],
        }
    )
    decoded = decode(raw)
    assert decoded.fragment is not None
    steps = [orjson.loads(m).get("step") for m in decoded.fragment.metrics]
    assert steps == [0, 2]
    assert [name for name, _ in decoded.fragment.tags] == ["team"]
    assert [name for name, _ in decoded.fragment.custom_info] == ["Confusion Matrix"]
    by_path = {p.path: p for p in decoded.problems}
    assert sorted(by_path) == ["metrics[1]", "metrics[3]", "tags[0]"]
    two = by_path["metrics[1]"]
    assert len(two.errors) == 2
    assert two.errors[0].startswith("metrics[1].value: must be a number, not a boolean")
    assert two.errors[1].startswith("metrics[1].step: input should be greater than or equal to 0")
    # the dead-letter form holds exactly the bad item, with where it belongs
    assert orjson.loads(two.resource) == {
        "resourceGroup": "team-a",
        "executionId": "exec-1",
        "metrics": [{"name": "loss", "value": True, "step": -1}],
    }
    assert orjson.loads(by_path["tags[0]"].resource)["tags"] == [{"name": "stage", "value": ""}]


def test_malformed_section_is_reported_alone_and_the_rest_goes_on() -> None:
    raw = b'{"executionId":"exec-1","metrics":{"loss":1},"tags":[{"name":"a","value":"b"}]}'
    decoded = decode(raw)
    assert decoded.fragment is not None
    assert decoded.fragment.tags == [("a", b'{"name":"a","value":"b"}')]
    assert [p.path for p in decoded.problems] == ["metrics"]
    assert orjson.loads(decoded.problems[0].resource)["metrics"] == {"loss": 1}


def test_non_finite_and_huge_values_are_isolated() -> None:
    raw = (
        b'{"executionId":"exec-1","metrics":[{"name":"a","value":NaN},'
        b'{"name":"b","value":1,"step":100000000000000000000000000000},{"name":"c","value":2}]}'
    )
    decoded = decode(raw)
    assert decoded.fragment is not None
    assert [orjson.loads(m)["name"] for m in decoded.fragment.metrics] == ["c"]
    assert [p.path for p in decoded.problems] == ["metrics[0]", "metrics[1]"]
    assert b"100000000000000000000000000000" in decoded.problems[1].resource


def test_deep_nesting_is_refused_not_raised() -> None:
    raw = b'{"executionId":"exec-1","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    decoded = decode(raw)
    assert decoded.fragment is None
    assert decoded.problems[0].path == ""


def test_encoded_metric_is_canonical_and_compact() -> None:
    raw = orjson.dumps(
        {
            "executionId": "exec-1",
            "metrics": [
                {
                    "labels": [{"name": "rank", "value": "0"}],
                    "step": 3,
                    "timestamp": "2026-11-23T14:00:00+02:00",
                    "value": 1,
                    "name": "loss",
                    "unknown": "dropped",
                }
            ],
        }
    )
    decoded = decode(raw)
    assert decoded.fragment is not None
    assert decoded.fragment.metrics == [
        b'{"name":"loss","value":1.0,"timestamp":"2026-11-23T12:00:00.000000Z","step":3,'
        b'"labels":[{"name":"rank","value":"0"}]}'
    ]


def test_format_path() -> None:
    assert format_path(("metrics", 3, "labels", 0, "name")) == "metrics[3].labels[0].name"
    assert format_path(()) == ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
metric_like = st.fixed_dictionaries(
    {"name": json_values | st.text(max_size=260), "value": json_values | st.floats()},
    optional={"step": json_values, "timestamp": json_values, "labels": json_values},
)


@settings(max_examples=300, deadline=None)
@given(
    execution_id=st.sampled_from(["exec-1", "bad id", 5]),
    metrics=st.lists(metric_like, max_size=6) | json_values,
    tags=st.lists(st.dictionaries(st.sampled_from(["name", "value"]), json_values), max_size=3),
)
def test_decode_never_raises_and_accounts_for_every_item(
    execution_id: object, metrics: object, tags: object
) -> None:
    document = {"executionId": execution_id, "metrics": metrics, "tags": tags}
    try:
        raw = orjson.dumps(document)
    except orjson.JSONEncodeError:
        raw = repr(document).encode()
    decoded = decode(raw)
    if decoded.fragment is None:
        assert [p.path for p in decoded.problems] == [""]
        return
    # every item is either passed on or reported, never both, never neither
    for section, items, passed in (
        ("metrics", metrics, len(decoded.fragment.metrics)),
        ("tags", tags, len(decoded.fragment.tags)),
    ):
        reported = [p for p in decoded.problems if p.path.split("[")[0] == section]
        if isinstance(items, list):
            assert passed + len(reported) == len(items)
        elif items is not None:
            assert passed == 0
            assert [p.path for p in reported] == [section]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    decoded = decode(raw)
    assert decoded.fragment is not None or decoded.problems
