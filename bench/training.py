"""Training benchmark: the step time of a real DDP job with and without metric logging.

torch CPU, gloo, 4 ranks (``torch.multiprocessing.spawn``), a small MLP whose step takes a few
milliseconds, 8 metrics per step and rank computed in every variant; the variants differ only in
what is done with them:

- ``none``: nothing (the baseline);
- ``emitter``: ``Emitter.log_metrics(values, step=s, labels={"rank": r})`` into a private Redis
  (no relay worker runs: the points wait in Redis, as on a training node);
- ``sdk_patch``: one ``metrics.modify`` per step and rank with SAP's SDK (``ai_core_sdk``,
  sap-ai-sdk-core) to the reference server (``metricrelay api``, in-memory store, on loopback:
  the best case for per-step PATCHes, a remote API is 50-200 ms away).

Each run times every variant for the same number of steps, in blocks taken in turn (the order
rotated per block), all in the same rank processes (one process group, the model kept), so
noise hits all alike; a step lasts as long as its slowest rank's. Per run and variant: the
median step time (robust to the bursts of other processes on a shared machine) and the mean
(which keeps every stall); reported: median/min/max over the runs of both and of the slowdown
against ``none`` of the same run, and over every pair of neighbouring blocks. On a shared machine
the step time moves by several % between runs, more than the Emitter costs, so the Emitter's own
cost is also accounted directly: the time spent in its calls (beyond the baseline's no-op call)
plus its writer thread's CPU (``/proc/self/task/<tid>/schedstat``), per step, as % of a step;
and as the wall time it takes from a machine whose cores the ranks oversubscribe (every rank's
own cost, shared by the cores: times ranks per core when there are more ranks than cores). The
block pairs' median slowdown comes with a bootstrap 90 % interval (resampled pairs, seeded).
Target (issue 16): the Emitter < 2 %. OMP_NUM_THREADS=1 and one torch thread per rank: 4 ranks
share the machine's cores. Run: ``python -m bench training [--tiny] [--runs N] [--blocks N]
[--block-steps N] [--ranks N]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import requests

from bench import report
from bench.workloads import NAMES
from metricrelay.devtools.demo_stack import DEMO_TOKEN, start_api
from metricrelay.devtools.embedded import RedisServer, free_port

RESULTS = Path(__file__).parent / "results" / "training.json"
VARIANTS = ("none", "emitter", "sdk_patch")
TARGET_EMITTER_SLOWDOWN_PCT = 2.0


@dataclass(frozen=True)
class Size:
    runs: int
    ranks: int
    blocks: int  # blocks per variant and run, the variants in turn
    block_steps: int  # timed steps per block
    warmup: int
    width: int  # hidden width of the MLP
    batch: int


FULL = Size(runs=24, ranks=4, blocks=4, block_steps=80, warmup=20, width=128, batch=64)
TINY = Size(runs=1, ranks=2, blocks=2, block_steps=3, warmup=1, width=32, batch=8)


@dataclass(frozen=True)
class Plan:
    size: Size
    port: int  # the process group's rendezvous
    redis_url: str
    api_url: str
    out: str  # where rank 0 writes the measurements
    tag: str  # makes execution ids unique per benchmark
    flush_interval: float | None  # the Emitter's; None: its default (METRICRELAY_FLUSH_INTERVAL)


def metric_values(loss: float, step: int, seconds: float, size: Size) -> dict[str, float]:
    """The 8 metrics of a step, from the step itself (computed in every variant alike)."""
    tokens = size.batch * 128 / max(seconds, 1e-9)
    return {
        "train/loss": loss,
        "train/lr": 0.01 * 0.999**step,
        "train/grad_norm": loss * 1.7 + 0.013,
        "train/tokens_per_s": tokens,
        "val/loss": loss * 1.05 + 0.002,
        "val/accuracy": 1.0 / (1.0 + loss),
        "gpu/mem_gb": 3.2 + (step % 7) * 0.011,
        "throughput": tokens / 128,
    }


def make_logger(variant: str, plan: Plan, run: int, rank: int) -> tuple[Any, Callable[..., None]]:
    """``(handle to close, log(values, step))`` for a variant; the handle is None or has
    ``close``."""
    execution_id = f"bench-train-{plan.tag}-{run}-{variant}"
    labels = {"rank": str(rank)}
    if variant == "none":
        return None, lambda values, step: None
    if variant == "emitter":
        from metricrelay import Emitter  # noqa: PLC0415 - imported where used, as users do

        emitter = Emitter(
            execution_id,
            redis_url=plan.redis_url,
            handle_sigterm=False,
            flush_interval=plan.flush_interval,
        )

        def log_emitter(values: dict[str, float], step: int) -> None:
            emitter.log_metrics(values, step=step, labels=labels)

        return emitter, log_emitter
    from ai_core_sdk.ai_core_v2_client import (  # type: ignore[import-untyped]  # noqa: PLC0415
        AICoreV2Client,
    )
    from ai_core_sdk.models import Metric, MetricLabel  # type: ignore[import-untyped]  # noqa: PLC0415

    client = AICoreV2Client(
        base_url=f"{plan.api_url}/v2",
        token_creator=lambda: f"Bearer {DEMO_TOKEN}",
        resource_group="default",
    )
    label = [MetricLabel(name="rank", value=str(rank))]

    def log_sdk(values: dict[str, float], step: int) -> None:
        now = datetime.now(UTC)
        metrics = [
            Metric(name=name, value=value, timestamp=now, step=step, labels=label)
            for name, value in values.items()
        ]
        client.metrics.modify(execution_id=execution_id, metrics=metrics)

    return None, log_sdk


class Trainer:
    """One rank's model (a small MLP in DDP), optimiser and fixed batch; ``train`` runs steps."""

    def __init__(self, size: Size) -> None:
        import torch  # noqa: PLC0415 - the rank processes import torch themselves
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        self.size = size
        self.model = DistributedDataParallel(
            torch.nn.Sequential(
                torch.nn.Linear(256, size.width),
                torch.nn.ReLU(),
                torch.nn.Linear(size.width, size.width),
                torch.nn.ReLU(),
                torch.nn.Linear(size.width, 10),
            )
        )
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.inputs = torch.randn(size.batch, 256)
        self.targets = torch.randint(0, 10, (size.batch,))
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def train(
        self, steps: int, first_step: int, log: Callable[..., None]
    ) -> tuple[list[float], float]:
        """``steps`` steps, each logging its 8 metrics: the seconds each step took, and the
        seconds spent inside ``log``."""
        durations = []
        logging = 0.0
        last = time.perf_counter()
        for step in range(first_step, first_step + steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self.inputs), self.targets)
            loss.backward()
            self.optimizer.step()
            values = metric_values(loss.item(), step, time.perf_counter() - last, self.size)
            called = time.perf_counter()
            log(values, step)
            now = time.perf_counter()
            logging += now - called
            durations.append(now - last)
            last = now
        return durations, logging


def rank_main(rank: int, plan: Plan) -> None:
    """One DDP rank: every run, the variants in blocks; rank 0 writes the measurements."""
    import torch  # noqa: PLC0415 - the rank processes import torch themselves
    import torch.distributed as dist  # noqa: PLC0415

    torch.set_num_threads(1)
    torch.manual_seed(rank)
    size = plan.size
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{plan.port}", rank=rank, world_size=size.ranks
    )
    trainer = Trainer(size)
    measured = [row for run in range(size.runs) for row in one_run(trainer, plan, run, rank)]
    if rank == 0:
        Path(plan.out).write_text(json.dumps(measured))
    # Tear down in order: the DDP model's reducer (its hooks hold the group's gloo work) before
    # the group, and no rank before every rank is done with the store rank 0 hosts. Leaving them
    # to interpreter exit once aborted rank 0 with "terminate called without an active
    # exception" (SIGABRT) in a fresh-clone CI run.
    dist.barrier()
    del trainer
    gc.collect()
    dist.destroy_process_group()


def one_run(trainer: Trainer, plan: Plan, run: int, rank: int) -> list[dict[str, Any]]:
    """Every variant for the same steps, in blocks taken in turn (the order rotated per block,
    so drifts hit all alike); a row per variant, the same on every rank."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    size = plan.size
    loggers = {variant: make_logger(variant, plan, run, rank) for variant in VARIANTS}
    emitter = loggers["emitter"][0]
    for variant in VARIANTS:
        trainer.train(size.warmup, 0, loggers[variant][1])
    durations: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    in_log = dict.fromkeys(VARIANTS, 0.0)
    dist.barrier()
    for block in range(size.blocks):
        shift = (run + block) % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            first = size.warmup + len(durations[variant])
            taken, logging = trainer.train(size.block_steps, first, loggers[variant][1])
            durations[variant] += taken
            in_log[variant] += logging
    emitter.flush(timeout=120)  # every point in Redis (untimed)
    writer_ns = thread_cpu_ns(emitter._thread.native_id)  # its whole life: every point
    written: list[Any] = [None] * size.ranks
    dist.all_gather_object(written, emitter.written_points)
    emitter.close()
    steps = size.blocks * size.block_steps
    # the Emitter's own cost per step, averaged over the ranks: its calls (beyond what the
    # baseline's no-op call takes) and its writer thread's CPU (warm-up steps included)
    direct = torch.tensor(
        [
            (in_log["emitter"] - in_log["none"]) / steps * 1e6,
            writer_ns / (steps + size.warmup) / 1000,
        ],
        dtype=torch.float64,
    )
    dist.all_reduce(direct)
    call_us, writer_us = (value / size.ranks for value in direct.tolist())
    rows = []
    for variant in VARIANTS:  # each step as long as its slowest rank's
        slowest = torch.tensor(durations[variant], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        steps_ms = [seconds * 1000 for seconds in slowest.tolist()]
        row: dict[str, Any] = {
            "run": run,
            "variant": variant,
            "median_step_ms": statistics.median(steps_ms),
            "mean_step_ms": statistics.fmean(steps_ms),
            "block_median_ms": [
                statistics.median(steps_ms[start : start + size.block_steps])
                for start in range(0, len(steps_ms), size.block_steps)
            ],
        }
        if variant == "emitter":
            row |= {"written_per_rank": written, "call_us": call_us, "writer_us": writer_us}
        rows.append(row)
    dist.barrier()
    return rows


def thread_cpu_ns(native_id: int | None) -> int:
    """CPU time a thread of this process has used, in ns (Linux: its schedstat)."""
    fields = Path(f"/proc/self/task/{native_id}/schedstat").read_text().split()
    return int(fields[0])


spread = partial(report.spread, digits=3)


def bootstrap_median(values: list[float], rounds: int = 2000) -> list[float]:
    """A percentile-bootstrap 90 % interval of the median (fixed seed: the same data give the
    same interval)."""
    rng = random.Random(16)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return [round(medians[int(rounds * 0.05)], 2), round(medians[int(rounds * 0.95) - 1], 2)]


def api_points(api_url: str, execution_id: str) -> int:
    """What the reference server stored for an execution (the SDK variant's PATCHes)."""
    reply = requests.get(
        f"{api_url}/v2/lm/metrics",
        params={"executionIds": execution_id},
        headers={"Authorization": f"Bearer {DEMO_TOKEN}", "AI-Resource-Group": "default"},
        timeout=30,
    )
    reply.raise_for_status()
    resources = reply.json().get("resources", [])
    return sum(len(resource.get("metrics") or []) for resource in resources)


def summarise(measured: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """Per variant, over the runs: the median step time and the slowdown against ``none`` of
    the same run (from per-step medians: robust to other processes' bursts on a shared machine;
    from means too, which keep every stall)."""
    size = plan.size
    per_rank = (size.warmup + size.blocks * size.block_steps) * len(NAMES)
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    for row in measured:
        runs.setdefault(row["run"], {})[row["variant"]] = row
        if row["variant"] == "emitter" and row["written_per_rank"] != [per_rank] * size.ranks:
            raise RuntimeError(f"the Emitter wrote {row['written_per_rank']} points per rank")
    for run in runs:
        stored = api_points(plan.api_url, f"bench-train-{plan.tag}-{run}-sdk_patch")
        if stored != per_rank * size.ranks:
            raise RuntimeError(f"run {run}: the API stored {stored} of the SDK's points")
    result: dict[str, Any] = {}
    for statistic in ("median_step_ms", "mean_step_ms"):
        times = {v: [rows[v][statistic] for rows in runs.values()] for v in VARIANTS}
        result[statistic] = {variant: spread(times[variant]) for variant in VARIANTS}
        result[f"slowdown_pct_from_{statistic.split('_')[0]}s"] = {
            variant: spread(
                [(t / n - 1) * 100 for t, n in zip(times[variant], times["none"], strict=True)]
            )
            for variant in VARIANTS[1:]
        }
    # the finest pairing: each block against the same run's block of the baseline next to it
    pairs = {
        variant: [
            (mine / base - 1) * 100
            for rows in runs.values()
            for mine, base in zip(
                rows[variant]["block_median_ms"], rows["none"]["block_median_ms"], strict=True
            )
        ]
        for variant in VARIANTS[1:]
    }
    result["slowdown_pct_from_block_medians"] = {
        variant: spread(values) | {"median_90pct_interval": bootstrap_median(values)}
        for variant, values in pairs.items()
    }
    emitter_rows = [rows["emitter"] for rows in runs.values()]
    own_pct = [
        (rows["emitter"]["call_us"] + rows["emitter"]["writer_us"])
        / 10
        / rows["none"]["median_step_ms"]
        for rows in runs.values()
    ]
    oversubscribed = max(1.0, size.ranks / len(os.sched_getaffinity(0)))
    result["emitter_direct_cost"] = {
        "call_us_per_step": spread([row["call_us"] for row in emitter_rows]),
        "writer_thread_cpu_us_per_step": spread([row["writer_us"] for row in emitter_rows]),
        "pct_of_step": spread(own_pct),
        "oversubscription": oversubscribed,
        "wall_pct_of_step_on_these_cores": spread([pct * oversubscribed for pct in own_pct]),
    }
    result["target_emitter_slowdown_pct"] = TARGET_EMITTER_SLOWDOWN_PCT
    result["runs"] = [
        {"run": run, **{v: round(rows[v]["median_step_ms"], 3) for v in VARIANTS}}
        for run, rows in sorted(runs.items())
    ]
    return result


def measure(size: Size, flush_interval: float | None = None) -> dict[str, Any]:
    from torch.multiprocessing.spawn import spawn  # noqa: PLC0415 - only the ranks need torch

    # one thread per rank: 4 ranks on 2 cores must not each start a thread per core
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="bench-training-") as folder, RedisServer() as redis:
        api = start_api(Path(folder), faults=False, args=("--db", ":memory:"))
        try:
            plan = Plan(
                size=size,
                port=free_port(),
                redis_url=redis.url,
                api_url=api.bound_url(),
                out=str(Path(folder) / "measured.json"),
                tag=f"{int(time.time()) % 100_000}",
                flush_interval=flush_interval,
            )
            spawn(rank_main, args=(plan,), nprocs=size.ranks, join=True)  # type: ignore[no-untyped-call]
            measured = json.loads(Path(plan.out).read_text())
            return summarise(measured, plan)
        finally:
            api.stop()


def print_table(result: dict[str, Any], size: Size) -> None:
    steps = size.blocks * size.block_steps
    print(
        f"DDP, torch CPU, gloo: {size.ranks} ranks, {steps} timed steps per variant and run "
        f"({size.blocks} blocks, variants in turn), 8 metrics per step and rank, {size.runs} runs"
    )
    for statistic, slowdown in (
        ("median_step_ms", "slowdown_pct_from_medians"),
        ("mean_step_ms", "slowdown_pct_from_means"),
    ):
        head = f"{statistic:16} {'median':>8} {'min':>8} {'max':>8}"
        print(f"{head} {'slowdown %':>11} {'min':>8} {'max':>8}")
        for variant in VARIANTS:
            row = result[statistic][variant]
            slow = result[slowdown].get(variant)
            extra = f"{slow['median']:11.1f} {slow['min']:8.1f} {slow['max']:8.1f}" if slow else ""
            print(f"{variant:16} {row['median']:8.2f} {row['min']:8.2f} {row['max']:8.2f} {extra}")
    blocks = result["slowdown_pct_from_block_medians"]["emitter"]
    low, high = blocks["median_90pct_interval"]
    print(
        f"the Emitter's slowdown per block pair ({size.runs * size.blocks} pairs): median "
        f"{blocks['median']:.1f} % (90 % interval {low:.1f} … {high:.1f}), "
        f"min {blocks['min']:.1f}, max {blocks['max']:.1f}"
    )
    cost = result["emitter_direct_cost"]
    print(
        "the Emitter's own cost per step and rank (median of runs): "
        f"{cost['call_us_per_step']['median']:.1f} µs in its calls + "
        f"{cost['writer_thread_cpu_us_per_step']['median']:.1f} µs writer-thread CPU = "
        f"{cost['pct_of_step']['median']:.2f} % of a step "
        f"(min {cost['pct_of_step']['min']:.2f}, max {cost['pct_of_step']['max']:.2f}); "
        f"at {cost['oversubscription']:.1f} ranks per core: "
        f"{cost['wall_pct_of_step_on_these_cores']['median']:.2f} % of the step's wall time"
    )
    print(f"target: the Emitter < {TARGET_EMITTER_SLOWDOWN_PCT} % slower than no logging")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench training", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="smoke size: 2 ranks, a few steps")
    parser.add_argument("--runs", type=int, help="runs (default 24)")
    parser.add_argument("--blocks", type=int, help="blocks per variant and run (default 4)")
    parser.add_argument("--block-steps", type=int, help="timed steps per block (default 80)")
    parser.add_argument("--ranks", type=int, help="DDP ranks (default 4)")
    parser.add_argument(
        "--flush-interval", type=float, help="the Emitter's flush interval (default: its own)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    base = TINY if args.tiny else FULL
    size = Size(
        runs=args.runs or base.runs,
        ranks=args.ranks or base.ranks,
        blocks=args.blocks or base.blocks,
        block_steps=args.block_steps or base.block_steps,
        warmup=base.warmup,
        width=base.width,
        batch=base.batch,
    )
    started = time.monotonic()
    result = measure(size, args.flush_interval)
    print_table(result, size)
    report.write_results(
        args.out,
        result,
        torch_threads_per_rank=1,
        emitter_flush_interval=args.flush_interval,
        seconds=round(time.monotonic() - started, 1),
        **asdict(size),
    )
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
