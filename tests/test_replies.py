"""Redis reply values: text whether or not the client decodes, stream ids in Redis's order."""

from __future__ import annotations

import pytest

from metricrelay.replies import MAX_SEQ, as_text, id_key


def test_replies_are_text_whether_or_not_the_client_decodes() -> None:
    assert as_text(b"1700000000000-0") == as_text("1700000000000-0") == "1700000000000-0"
    assert as_text(b"odd\xffkey") == "odd\ufffdkey"  # shown, never raised


def test_stream_ids_sort_as_numbers() -> None:
    ids = ["10-0", "9-5", "9-10", "10-1"]
    assert sorted(ids, key=id_key) == ["9-5", "9-10", "10-0", "10-1"]
    assert id_key("1700000000000-3") == (1700000000000, 3)
    # without a sequence: the millisecond's first entry, or its last as an upper bound
    assert id_key("12") == (12, 0) and id_key("12", upper=True) == (12, MAX_SEQ)


@pytest.mark.parametrize("bad", ["", "-", "12-", "-3", "a-1", "1-2-3", " 1-2", "1.5-0"])
def test_anything_else_is_not_a_stream_id(bad: str) -> None:
    with pytest.raises(ValueError, match="not a stream id"):
        id_key(bad)
