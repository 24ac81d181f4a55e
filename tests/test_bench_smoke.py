"""The worker benchmark's harness runs end to end at a tiny size (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench import worker

pytestmark = pytest.mark.integration  # starts redis-server, the reference API and workers


def test_worker_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "worker.json"
    assert worker.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["runs"] == 1
    assert result["single"]["points_per_s"]["median"] > 0
    assert result["packed"]["ceiling_entries_per_s"]["median"] > 0
    assert result["baseline_points_per_s"]["median"] > 0
    assert result["latency"]["probes"] > 0
    assert set(result["ratios"]) >= {"single_over_baseline", "faults_over_no_faults"}
