"""The seeded fault harness on a Redis Cluster (issue 14): MOVED/ASK storms, a failover, kills.

Three workers share 8 shards of a real cluster (3 masters + 3 replicas) while a producer writes
and, chosen by the seed: the slots of shard streams and of the fleet's key migrate between
masters again and again (each migration a few keys at a time, so clients meet ASK while it runs
and MOVED after it — with multi-key scripts, TRYAGAIN), workers are SIGKILLed and started again,
one master is killed and its replica promoted, and the reference API injects 503s, 429s, resets
after storing and 413s. Then every worker gets SIGTERM and must exit 0 within its drain deadline
plus 5 s, and the invariants are checked: every point stored once, in step order per execution,
every final tag the last written, nothing dead-lettered, nothing pending or lagging, no
traceback, every worker's memory budget back to zero.

Seeds: ``METRICRELAY_FAULT_SEEDS`` (default ``1``; ``make chaos`` runs 1 to 5). A failing seed
reproduces on its own: ``METRICRELAY_FAULT_SEEDS=<n> pytest -s
tests/cluster/test_cluster_fault_harness.py``; the report (``-s``) lists what was done when.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter

import pytest
from tests.support.cluster_stack import ClusterStack, Written, assert_ledger
from tests.support.stopping import sigterm_all

from metricrelay.devtools.demo_stack import QUICK_WORKER_ENV, start_api
from metricrelay.devtools.embedded_cluster import ClusterNode

SCALE = int(os.environ.get("METRICRELAY_CHAOS_SCALE", "1"))
_CHOSEN = os.environ.get("METRICRELAY_FAULT_SEEDS", "").strip()
SEEDS = (
    [int(s) for s in _CHOSEN.split(",") if s.strip()]
    if _CHOSEN
    else ([1] if SCALE == 1 else [1, 2, 3, 4, 5])
)
EXECUTIONS = [f"storm-{n:03d}" for n in range(24)]
STEPS = 400 * SCALE  # times 24 executions: 9,600 points at scale 1
MOVES = 16 * SCALE  # slot migrations, spread over the production
KILLS = 2 * SCALE  # worker SIGKILLs, at moves the seed picks
DRAIN_DEADLINE_S = 5.0
WORKER_ENV = {
    **QUICK_WORKER_ENV,
    "METRICRELAY_LEASE_TTL": "2",
    "METRICRELAY_REDIS_TIMEOUT": "2",
    "METRICRELAY_DRAIN_DEADLINE": str(DRAIN_DEADLINE_S),
}
API_FAULTS = (
    *("--fail-rate", "0.05", "--throttle-rate", "0.05", "--retry-after", "1"),
    *("--reset-rate", "0.02", "--reset-when", "after", "--max-metrics-per-request", "300"),
)


class Storm:
    """The seeded disturbances and a log of them, for the report."""

    def __init__(self, stack: ClusterStack, seed: int) -> None:
        self.stack = stack
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.events: list[str] = []
        self.moves: Counter[str] = Counter()

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.2f}s {what}")

    def move_one(self) -> None:
        """Migrate the slot of one shard (or, now and then, of the fleet's key) to another
        master, a few keys per MIGRATE so the ASK window is real."""
        cluster = self.stack.cluster
        shards = self.stack.keys.all_shards()
        key = (
            self.stack.keys.workers if self.rng.random() < 0.15 else self.rng.choice(shards).events
        )
        source = cluster.master_of_key(key)
        target = self.rng.choice([m for m in cluster.masters() if m is not source])
        batch, pause = self.rng.choice((1, 2, 3)), self.rng.uniform(0.0, 0.2)
        cluster.move_slot_of(key, target, batch=batch, pause=pause)
        self.moves[key] += 1

    def kill_worker(self) -> None:
        victim = self.rng.choice(self.stack.workers)
        number = int(victim.name.rsplit("-", 1)[1])
        victim.kill()
        self.stack.workers.remove(victim)
        self.stack.start_worker(number, **WORKER_ENV)
        self.note(f"SIGKILL {victim.name}; started again")

    def kill_master(self) -> ClusterNode:
        victim = self.rng.choice(self.stack.cluster.masters())
        self.note(f"master {victim.port} killed")
        promoted = self.stack.cluster.kill_master(victim)
        self.note(f"replica {promoted.port} promoted")
        return promoted


def produce_in_background(
    stack: ClusterStack, written: Written
) -> tuple[threading.Thread, list[BaseException]]:
    failed: list[BaseException] = []

    def produce() -> None:
        try:
            for start in range(0, STEPS, 25):  # paced, so the storm lands mid-production
                stack.produce(written, EXECUTIONS, range(start, min(start + 25, STEPS)))
                time.sleep(0.2)
        except BaseException as exc:  # reported by the test
            failed.append(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    return thread, failed


def stop_all(stack: ClusterStack, storm: Storm) -> list[str]:
    """SIGTERM every worker at once; each must exit 0 within its drain deadline + 5 s."""
    workers = list(stack.workers)
    failures = sigterm_all({w.name: w for w in workers}, DRAIN_DEADLINE_S + 5.0, storm.note)
    for worker in workers:
        stack.stop_worker(worker)  # reaped already: off the running list
    return failures


REDIRECTIONS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED")


def redirections(stack: ClusterStack) -> Counter[str]:
    """MOVED, ASK, TRYAGAIN… answered by the live nodes (INFO errorstats); a killed master's
    counts are gone with it."""
    counts: Counter[str] = Counter()
    for node in stack.cluster.live():
        for name, stat in node.client.info("errorstats").items():
            if name.removeprefix("errorstat_") in REDIRECTIONS:
                counts[name.removeprefix("errorstat_")] += int(stat["count"])
    return counts


def check_logs(stack: ClusterStack) -> list[str]:
    failures = []
    for path in sorted(stack.folder.glob("worker-*.log")):
        text = path.read_text(errors="replace")
        if "Traceback" in text or "stopped unexpectedly" in text:
            failures.append(f"{path.name}: a traceback or an unexpected stop")
        held = [n for n in re.findall(r"worker stopped holding (\d+) bytes", text) if n != "0"]
        if held:
            failures.append(f"{path.name}: stopped holding {held} bytes")
    return failures


@pytest.mark.integration
@pytest.mark.timeout(420 * SCALE)
@pytest.mark.parametrize("seed", SEEDS)
def test_moved_ask_storms_kills_and_a_failover_break_no_invariant(
    cluster_stack: ClusterStack, seed: int
) -> None:
    stack = cluster_stack
    assert stack.api is not None
    stack.api.stop()  # the fixture's API, faultless: this one injects the seed's faults
    stack.api = start_api(stack.folder, faults=False, args=(*API_FAULTS, "--seed", str(seed)))
    stack.api_url = stack.api.bound_url()
    for number in range(3):
        stack.start_worker(number, **WORKER_ENV)
    stack.wait_balanced(3)
    storm = Storm(stack, seed)
    kill_at = set(storm.rng.sample(range(1, MOVES), KILLS))
    failover_at = storm.rng.randrange(1, MOVES)
    written = Written()
    producer, failed = produce_in_background(stack, written)
    failures: list[str] = []
    for move in range(MOVES):
        storm.move_one()
        if move in kill_at:
            storm.kill_worker()
        if move == failover_at:
            storm.kill_master()
        for worker in stack.workers:
            if worker.process.poll() is not None:
                failures.append(f"{worker.name} ended by itself ({worker.process.poll()})")
        time.sleep(storm.rng.uniform(0.0, 0.3))  # spread over the production
    storm.note(f"{MOVES} slot migrations done: {dict(storm.moves)}")
    producer.join(180 * SCALE)
    assert not producer.is_alive() and not failed, f"the producer failed: {failed}"
    storm.note(f"production done: {len(written.points)} points in {written.entries} entries")
    stack.wait_drained(stack.keys.all_shards(), timeout=120 * SCALE)
    storm.note("drained")
    failures += stop_all(stack, storm)
    failures += check_logs(stack)
    stored = stack.stored(EXECUTIONS)
    redirects = redirections(stack)
    print(f"\n=== cluster fault harness, seed {seed}, scale {SCALE} ===")
    for line in storm.events:
        print(f"  {line}")
    print(f"redirections and refusals the live nodes answered: {dict(redirects)}")
    print(f"stored {sum(stored.points.values())} points; dead letters {stack.dead_letters()}")
    assert not failures, "\n".join(failures)
    assert redirects["MOVED"] > 0, "the storm caused no MOVED: it tested nothing"
    assert_ledger(stored, written)
    assert stack.dead_letters() == 0
    assert stack.has_work(stack.keys.all_shards()) == []
