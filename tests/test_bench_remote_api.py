"""The remote-API benchmark's harness runs end to end at a tiny size (no figure is asserted
beyond its being there: at this size they mean nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench import remote_api

pytestmark = pytest.mark.integration  # starts redis-server, the API and worker processes


def test_remote_api_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "remote_api.json"
    assert remote_api.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["runs"] == 1
    assert set(result["configurations"]) == {"adaptive/1", "adaptive/3"}
    for summary in result["configurations"].values():
        (run,) = summary["runs"]
        assert run["points_stored"] == run["points_written"]  # every valid point delivered
        assert run["points_per_s"] > 0 and run["points_per_request"] >= 1
        assert run["latency_p99_ms"] > 0
