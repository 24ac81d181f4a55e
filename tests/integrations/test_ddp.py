"""A real distributed run: torchrun starts 4 CPU ranks, DDP over gloo, a Lightning Trainer
(``strategy="ddp"``, 4 devices) in each; every rank logs through MetricRelayLogger and through
a plain Emitter of its own; a worker delivers to the reference API. Every point of every rank
arrives, labelled by its rank, at its step; the rank-0-only logger's points come from one rank.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.integrations.readback import custom_info, points
from tests.support.stack import Stack

pytestmark = pytest.mark.integration  # Redis, the reference API and a worker

SCRIPT = Path(__file__).parent / "scripts" / "lightning_fit.py"
RANKS = 4
STEPS = list(range(20))  # scripts/lightning_fit.py: 20 optimizer steps per rank


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_four_ranks_every_point_arrives_labelled_by_rank(
    stack: Stack, read_run: Any, tmp_path: Path
) -> None:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    torchrun += ["--nproc-per-node", str(RANKS), "--master-addr", "127.0.0.1"]
    torchrun += ["--master-port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [*torchrun, str(SCRIPT), "run-ddp", stack.redis.url, str(tmp_path)],
        capture_output=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    lines = [json.loads(line) for line in run.stdout.decode().splitlines() if line.startswith("{")]
    assert sorted(line["rank"] for line in lines) == list(range(RANKS))

    every = points(read_run("run-ddp-all"))
    expected = {(name, str(rank)): STEPS for name in ("train_loss", "epoch") for rank in range(4)}
    assert every == expected  # exact: each rank's 20 steps, once, under its own label

    plain = points(read_run("run-ddp-plain"))
    assert plain == {("plain_loss", str(rank)): STEPS for rank in range(RANKS)}

    zero = read_run("run-ddp-zero")
    assert points(zero) == {("train_loss", None): STEPS, ("epoch", None): STEPS}
    params = {"lr": 0.05, "layer/hidden": 16, "layer/act": "relu"}  # flattened as Lightning does
    assert custom_info(zero)["hyperparameters"] == params
    assert custom_info(read_run("run-ddp-all"))["hyperparameters"] == params

    # each rank's barriers waited for its own points: what it wrote was accepted by then
    for line in lines:
        logged_all, logged_zero, plain_barrier = line["accepted"]
        assert logged_all is not None and logged_all >= 2 * len(STEPS)
        assert (logged_zero is None) == (line["rank"] != 0)
        assert plain_barrier >= len(STEPS)
