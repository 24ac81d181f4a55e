"""Every rule of CONTRACT.md §1, checked through what the worker runs: decode_entry."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from metricrelay.codec import RESOURCE_ADAPTER, Decoded, decode_entry
from metricrelay.models import error_body

ENTRY_MS = 1_795_435_200_123  # 2026-11-23T12:00:00.123Z


def decode(document: Any) -> Decoded:
    raw = document if isinstance(document, bytes) else orjson.dumps(document)
    return decode_entry(raw, entry_ms=ENTRY_MS, default_resource_group="default")


def metric(**fields: Any) -> dict[str, Any]:
    return {"name": "loss", "value": 0.5, **fields}


def one_metric(**fields: Any) -> Decoded:
    return decode({"executionId": "exec-1", "metrics": [metric(**fields)]})


def assert_valid(decoded: Decoded) -> None:
    assert decoded.problems == [], [p.message for p in decoded.problems]
    assert decoded.fragment is not None


def assert_one_problem(decoded: Decoded, path: str, *words: str) -> str:
    assert len(decoded.problems) == 1, [p.message for p in decoded.problems]
    problem = decoded.problems[0]
    assert problem.path == path
    for word in words:
        assert word in problem.message, problem.message
    return problem.message


# ---- executionId ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "execution_id", ["abcd", "e6663ea0593fe2b2", "run.2026-11_23", "x" * 64, "A-B_C.D"]
)
def test_execution_id_accepted(execution_id: str) -> None:
    assert_valid(decode({"executionId": execution_id}))


@pytest.mark.parametrize(
    "execution_id", ["abc", "x" * 65, "run 1", "exécution", "abcd\n", "ab/cd", "", 1234, None]
)
def test_execution_id_refused_as_a_whole_entry(execution_id: object) -> None:
    decoded = decode({"executionId": execution_id, "metrics": [metric()]})
    assert decoded.fragment is None
    assert_one_problem(decoded, "", "executionId")


def test_missing_execution_id() -> None:
    decoded = decode({"metrics": [metric()]})
    assert decoded.fragment is None
    assert_one_problem(decoded, "", "executionId: is required")


# ---- metric name ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["Error Rate", "Training Loss", "loss", "a", "x" * 256, "val/acc@1", "-", "_", "損失 1"]
)
def test_metric_name_accepted(name: str) -> None:
    assert_valid(one_metric(name=name))


@pytest.mark.parametrize(
    ("name", "word"),
    [
        ("", "at least 1 character"),
        ("x" * 257, "at most 256 characters"),
        ("   ", "at least one letter, digit"),
        ("!!!", "at least one letter, digit"),
        ("損失", "at least one letter, digit"),
        (7, "valid string"),
    ],
)
def test_metric_name_refused(name: object, word: str) -> None:
    assert_one_problem(one_metric(name=name), "metrics[0]", "metrics[0].name", word)


def test_metric_name_required() -> None:
    decoded = decode({"executionId": "exec-1", "metrics": [{"value": 1}]})
    assert_one_problem(decoded, "metrics[0]", "metrics[0].name: is required")


# ---- value ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -3, 0.42, 1e308, -1e-308, 2**53])
def test_value_accepted(value: float) -> None:
    decoded = one_metric(value=value)
    assert_valid(decoded)
    assert decoded.fragment is not None
    assert orjson.loads(decoded.fragment.metrics[0])["value"] == float(value)


@pytest.mark.parametrize(
    ("raw_value", "word"),
    [
        (b"NaN", "finite number"),
        (b"Infinity", "finite number"),
        (b"-Infinity", "finite number"),
        (b"1e400", "finite number"),
        (b"true", "not a boolean"),
        (b"false", "not a boolean"),
        (b'"1.5"', "valid number"),
        (b"null", "valid number"),
        (b"[1]", "valid number"),
    ],
)
def test_value_refused(raw_value: bytes, word: str) -> None:
    raw = b'{"executionId":"exec-1","metrics":[{"name":"loss","value":' + raw_value + b"}]}"
    assert_one_problem(decode(raw), "metrics[0]", "metrics[0].value", word)


def test_value_required() -> None:
    decoded = decode({"executionId": "exec-1", "metrics": [{"name": "loss"}]})
    assert_one_problem(decoded, "metrics[0]", "metrics[0].value: is required")


# ---- step ----------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 2**63 - 1])
def test_step_accepted(step: int) -> None:
    assert_valid(one_metric(step=step))


@pytest.mark.parametrize("step", [-1, 1.5, 3.0, "3", True, 2**63])
def test_step_refused(step: object) -> None:
    raw = orjson.dumps({"executionId": "exec-1", "metrics": [metric()]})
    raw = raw.replace(b'"value":0.5', b'"value":0.5,"step":' + _json(step))
    assert_one_problem(decode(raw), "metrics[0]", "metrics[0].step")


def _json(value: object) -> bytes:
    return (
        str(value).encode()
        if isinstance(value, int) and not isinstance(value, bool)
        else (orjson.dumps(value))
    )


def test_null_step_and_timestamp_mean_absent() -> None:
    decoded = one_metric(step=None, timestamp=None, labels=None)
    assert_valid(decoded)
    assert decoded.fragment is not None
    item = orjson.loads(decoded.fragment.metrics[0])
    assert "step" not in item
    assert "labels" not in item
    assert item["timestamp"] == "2026-11-23T12:00:00.123000Z"  # the stream entry's own time


# ---- timestamp -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-23T14:00:00+02:00", "2026-11-23T12:00:00.000000Z"),
        ("2026-11-23T14:00:00.123456789+02:00", "2026-11-23T12:00:00.123456Z"),
        ("2026-11-23T12:00:00.123456Z", "2026-11-23T12:00:00.123456Z"),
    ],
)
def test_timestamp_emitted_as_canonical_utc(stamp: str, expected: str) -> None:
    decoded = one_metric(timestamp=stamp)
    assert decoded.fragment is not None
    assert orjson.loads(decoded.fragment.metrics[0])["timestamp"] == expected


@pytest.mark.parametrize("stamp", ["2026-11-23T12:00:00", "yesterday", "2026-02-30T00:00:00Z", 17])
def test_timestamp_refused(stamp: object) -> None:
    assert_one_problem(one_metric(timestamp=stamp), "metrics[0]", "metrics[0].timestamp")


# ---- labels --------------------------------------------------------------------------------


def labels(count: int, name_len: int = 4, value_len: int = 1) -> list[dict[str, str]]:
    return [{"name": f"{i:0{name_len}d}", "value": "v" * value_len} for i in range(count)]


def test_twenty_labels_and_256_chars_accepted() -> None:
    assert_valid(one_metric(labels=labels(20, name_len=256, value_len=256)))
    assert_valid(one_metric(labels=[{"name": "metrics.ai.sap.com/Artifact.name", "value": "m"}]))


@pytest.mark.parametrize(
    ("bad", "word"),
    [
        (labels(21), "at most 20 items"),
        (labels(1, name_len=257), "at most 256 characters"),
        (labels(1, value_len=257), "at most 256 characters"),
        (labels(1, value_len=0), "at least 1 character"),
        ([{"name": "", "value": "x"}], "at least 1 character"),
        ([{"name": "rank"}], "is required"),
        ({"rank": "0"}, "valid array"),
    ],
)
def test_labels_refused(bad: object, word: str) -> None:
    assert_one_problem(one_metric(labels=bad), "metrics[0]", "metrics[0].labels", word)


# ---- tags and customInfo -------------------------------------------------------------------


def test_sap_examples_accepted() -> None:
    decoded = decode(
        {
            "executionId": "e6663ea0593fe2b2",
            "metrics": [
                metric(name="Error Rate", labels=[{"name": "Artifact Group", "value": "x"}])
            ],
            "tags": [{"name": "Artifact Group", "value": "group-1"}],
            "customInfo": [{"name": "Confusion Matrix", "value": '[{"Predicted": "False"}]'}],
        }
    )
    assert_valid(decoded)


@pytest.mark.parametrize(
    ("section", "item", "word"),
    [
        ("tags", {"name": "", "value": "x"}, "tags[0].name"),
        ("tags", {"name": "x" * 257, "value": "x"}, "tags[0].name"),
        ("tags", {"name": "x", "value": ""}, "tags[0].value"),
        ("tags", {"name": "x", "value": "v" * 257}, "tags[0].value"),
        ("tags", {"name": "x", "value": 3}, "tags[0].value"),
        ("customInfo", {"name": "", "value": "x"}, "customInfo[0].name"),
        ("customInfo", {"name": "x" * 257, "value": "x"}, "customInfo[0].name"),
        ("customInfo", {"name": "x", "value": ""}, "customInfo[0].value"),
        ("customInfo", {"name": "x", "value": {"tp": 1}}, "customInfo[0].value"),
        ("customInfo", {"name": "x"}, "customInfo[0].value: is required"),
    ],
)
def test_named_items_refused(section: str, item: dict[str, object], word: str) -> None:
    decoded = decode({"executionId": "exec-1", section: [item]})
    assert_one_problem(decoded, f"{section}[0]", word)


def test_tag_of_256_chars_and_long_custom_info_accepted() -> None:
    decoded = decode(
        {
            "executionId": "exec-1",
            "tags": [{"name": "t" * 256, "value": "v" * 256}],
            "customInfo": [{"name": "c" * 256, "value": "x" * 1_000_000}],
        }
    )
    assert_valid(decoded)


# ---- the entry as a whole ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"\xff\xfe\x00", b"[1, 2]", b'"text"', b"null", b'{"executionId": "ab'],
)
def test_non_json_or_non_object_refused_whole(raw: bytes) -> None:
    decoded = decode(raw)
    assert decoded.fragment is None
    assert len(decoded.problems) == 1
    assert decoded.problems[0].path == ""
    assert decoded.problems[0].resource == raw  # the raw bytes go to the dead-letter stream


def test_invalid_utf8_inside_a_string_refused_whole() -> None:
    decoded = decode(b'{"executionId":"exec-1","tags":[{"name":"a\xff","value":"b"}]}')
    assert decoded.fragment is None
    assert "JSON" in decoded.problems[0].message


@pytest.mark.parametrize("group", ["", "has space", "x" * 254, 5])
def test_bad_resource_group_refused_whole(group: object) -> None:
    decoded = decode({"resourceGroup": group, "executionId": "exec-1", "metrics": [metric()]})
    assert decoded.fragment is None
    assert_one_problem(decoded, "", "resourceGroup")


def test_resource_group_defaults_and_overrides() -> None:
    plain = decode({"executionId": "exec-1"})
    chosen = decode({"executionId": "exec-1", "resourceGroup": "team-a"})
    nulled = decode({"executionId": "exec-1", "resourceGroup": None})
    assert plain.fragment is not None and plain.fragment.resource_group == "default"
    assert chosen.fragment is not None and chosen.fragment.resource_group == "team-a"
    assert nulled.fragment is not None and nulled.fragment.resource_group == "default"


def test_absent_null_and_extra_fields_tolerated() -> None:
    decoded = decode(
        {
            "executionId": "exec-1",
            "metrics": None,
            "tags": [{"name": "a", "value": "b", "color": "red"}],
            "createdAt": "2026-01-01T00:00:00Z",
            "future": {"x": 1},
        }
    )
    assert_valid(decoded)
    assert decoded.fragment is not None
    assert decoded.fragment.metrics == []
    assert decoded.fragment.tags == [("a", b'{"name":"a","value":"b"}')]


def test_error_body_has_the_sdk_shape() -> None:
    body = error_body("02000005", "PayloadLimitException", request_id="r-1")
    assert body == {
        "error": {
            "code": "02000005",
            "message": "PayloadLimitException",
            "requestId": "r-1",
            "target": "/metrics",
            "details": [{"code": "02000005", "message": "PayloadLimitException"}],
        }
    }


def test_resource_adapter_validates_a_patch_body() -> None:
    body = RESOURCE_ADAPTER.validate_json(
        b'{"executionId":"exec-1","metrics":[{"name":"Training Loss","value":1,"step":2}]}'
    )
    assert body["metrics"][0]["value"] == 1.0
