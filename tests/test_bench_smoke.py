"""The worker benchmark's harness runs end to end at a tiny size (no timing is asserted)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
from bench import cluster, outage, producer, spool, training, worker

pytestmark = pytest.mark.integration  # starts redis-server, the reference API and workers


def test_worker_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "worker.json"
    assert worker.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["runs"] == 1
    for section in ("workloads", "sink"):  # against the reference API, and the counting sink
        assert set(result[section]) == {"W1", "W2", "W3", "W4"}
        for cell in result[section].values():
            assert cell["points_per_s"]["median"] > 0
            assert cell["cpu_us_per_point"]["median"] > 0
            assert cell["bare_cpu_us_per_point"]["median"] > 0
    assert result["baseline_points_per_s"]["median"] > 0
    assert result["latency"]["probes"] > 0
    assert set(result["ratios"]) >= {"W2_over_baseline", "faults_over_no_faults"}


def test_cluster_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    assert cluster.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["runs"] == 1
    assert result["machine"]["sizes"]["shards"] == 8
    assert set(result["workers"]) == {"1", "2", "3"}
    for k, summary in result["workers"].items():
        assert summary["points_per_s"]["median"] > 0
        assert summary["work_points_per_s"]["median"] > 0
        assert summary["worker_cpu_us_per_point"]["median"] >= 0
        assert summary["ratio_to_one"] > 0
        (run,) = summary["runs"]
        assert len(run["shards_taken"]) == int(k)
    assert result["extrapolation"]["one_worker_on_own_core_points_per_s"] > 0


def test_producer_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "producer.json"
    assert producer.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["runs"] == 1
    assert result["points_per_run"] == 4 * 16 * 8 * 8  # every point reached Redis (checked)
    for figure in ("calling_thread", "process_cpu", "deque_append"):
        assert result[f"{figure}_us_per_point"]["median"] > 0
    assert result["ratios"]["process_over_deque"] > 1


def test_spool_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "spool.json"
    assert spool.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["runs"] == 1
    assert result["points_per_run"] == 4 * 16 * 8 * 8
    assert result["every_point_arrived"] is True  # counted in the streams after each phase
    assert result["problems"] == []
    for variant in ("direct", "spool_batch", "spool_never"):
        assert result[f"{variant}_calling_thread_us"]["median"] > 0
        assert result[f"{variant}_process_cpu_us"]["median"] > 0
    assert result["deque_append_us"]["median"] > 0
    assert result["spool_bytes_per_point"]["median"] > 0
    for replayed in ("emitter_replay", "leftover_replay"):
        assert result[f"{replayed}_points_per_s"]["median"] > 0
        assert result[f"{replayed}_records_per_s"]["median"] > 0
        assert result[f"{replayed}_process_cpu_us"]["median"] > 0
    assert set(result["ratios"]) >= {"spool_batch_over_direct_process_cpu"}


def test_training_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "training.json"
    assert training.main(["--tiny", "--out", str(out)]) == 0  # 2 DDP ranks, a few steps
    result = json.loads(out.read_text())
    assert result["machine"]["ranks"] == 2 and result["machine"]["runs"] == 1
    for variant in ("none", "emitter", "sdk_patch"):
        assert result["median_step_ms"][variant]["median"] > 0
    assert set(result["slowdown_pct_from_medians"]) == {"emitter", "sdk_patch"}
    cost = result["emitter_direct_cost"]
    assert cost["writer_thread_cpu_us_per_step"]["median"] > 0
    # 2 ranks: oversubscribed only on a machine with a single core
    expected = max(1.0, 2 / len(os.sched_getaffinity(0)))
    assert cost["oversubscription"] == expected
    wall = cost["wall_pct_of_step_on_these_cores"]["median"]
    assert wall == pytest.approx(cost["pct_of_step"]["median"] * expected, abs=0.002)
    low, high = result["slowdown_pct_from_block_medians"]["emitter"]["median_90pct_interval"]
    assert low <= high


def test_bootstrap_interval_holds_the_median_and_narrows_with_more_pairs() -> None:
    few = [float(x) for x in (-6, 3, 1, 9, -2, 4)]
    low, high = training.bootstrap_median(few)
    assert low <= statistics.median(few) <= high
    many_low, many_high = training.bootstrap_median(few * 20)
    assert high - low > many_high - many_low
    assert training.bootstrap_median(few) == [low, high]  # seeded


def test_outage_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "outage.json"
    assert outage.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["every_point_in_step_order"] is True
    assert result["spooled_fragments_at_outage_end"] > 0  # the outage did reach the emitter
    assert set(result["phases"]) == {"before", "outage", "after"}
