"""A real Redis Cluster (3 masters + 3 replicas), the reference API, sharded worker processes,
and a plain cluster-client producer that follows the README's routing rule.

The ledger checks points by identity against GET, and order per execution two ways: stored
points of an execution are in step order (the reference API keeps arrival order), and the tag
each entry overwrites ends with the last value written (last write wins across batches).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.cluster
from tests.support.waiting import until_sync

from metricrelay.connection import REDIS_UNAVAILABLE, sync_client
from metricrelay.devtools.demo_stack import DEMO_TOKEN, ChildProcess, start_api, start_worker
from metricrelay.devtools.embedded_cluster import RedisClusterServer
from metricrelay.keys import Keys, ShardKeys

Identity = tuple[str, int]  # (execution, step): one metric name, no labels


@dataclass
class Written:
    """What the test producer wrote: identities, and the last tag value per execution."""

    points: set[Identity] = field(default_factory=set)
    last_tag: dict[str, str] = field(default_factory=dict)
    entries: int = 0


@dataclass
class Stored:
    points: Counter[Identity]
    order_breaks: dict[str, list[tuple[int, int]]]  # execution → (step, the smaller next step)
    tags: dict[str, str]


@dataclass
class ClusterStack:
    folder: Path
    cluster: RedisClusterServer
    keys: Keys
    api: ChildProcess | None = None
    api_url: str = ""
    workers: list[ChildProcess] = field(default_factory=list)  # running
    stopped: list[ChildProcess] = field(default_factory=list)

    def stop_worker(self, worker: ChildProcess) -> int:
        """SIGTERM: the worker drains, hands its shards back and exits (its code returned)."""
        self.workers.remove(worker)
        self.stopped.append(worker)
        return worker.stop()

    def start_api(self) -> None:
        self.api = start_api(self.folder, faults=False)
        self.api_url = self.api.bound_url()

    def start_worker(self, number: int, **env: str) -> ChildProcess:
        settings = {
            "METRICRELAY_SHARDS": str(self.keys.shards),
            "METRICRELAY_LEASE_TTL": "4",
            "METRICRELAY_RETRY_BUDGET": "10",
            "METRICRELAY_REQUEST_TIMEOUT": "5",
            "METRICRELAY_BLOCK_MS": "200",
            **env,
        }
        worker = start_worker(self.folder, number, self.cluster.url, self.api_url, **settings)
        self.workers.append(worker)
        return worker

    def client(self) -> redis.cluster.RedisCluster:
        client: redis.cluster.RedisCluster = sync_client(self.cluster.url)
        return client

    def produce(
        self,
        written: Written,
        executions: list[str],
        steps: range,
        *,
        per_entry: int = 25,
        keys: Keys | None = None,
    ) -> None:
        """Plain XADDs, round-robin over executions, each entry ``per_entry`` points of one
        execution plus the tag ``last_step`` it overwrites. Like the Emitter, it retries a
        write that failed (a master down until its replica takes over); a retried entry may be
        written twice, which at-least-once delivery allows and the API stores once."""
        layout = keys or self.keys
        client = self.client()
        try:
            for start in range(steps.start, steps.stop, per_entry):
                entries = []
                for execution in executions:
                    stop = min(start + per_entry, steps.stop)
                    metrics = [
                        {
                            "name": "loss",
                            "value": s / 10,
                            "step": s,
                            "timestamp": f"2026-11-24T00:00:{s % 60:02d}.{s:06d}Z",
                        }
                        for s in range(start, stop)
                    ]
                    fragment = {
                        "executionId": execution,
                        "metrics": metrics,
                        "tags": [{"name": "last_step", "value": str(stop - 1)}],
                    }
                    shard = layout.route("default", execution)
                    entries.append((shard.events, orjson.dumps(fragment)))
                    written.points |= {(execution, s) for s in range(start, stop)}
                    written.last_tag[execution] = str(stop - 1)
                    written.entries += 1
                self._write(client, entries)
        finally:
            client.close()

    @staticmethod
    def _write(client: redis.cluster.RedisCluster, entries: list[tuple[str, bytes]]) -> None:
        deadline = time.monotonic() + 60
        done = 0
        while done < len(entries):  # one at a time: a retry repeats one entry at most
            stream, resource = entries[done]
            try:
                client.xadd(stream, {"resource": resource})
                done += 1
            except REDIS_UNAVAILABLE:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # a failover takes a few seconds: retry with a deadline

    def has_work(self, shards: list[ShardKeys]) -> list[str]:
        """Shards with entries not yet delivered or not yet acknowledged."""
        client = self.client()
        busy = []
        try:
            for shard in shards:
                if not client.exists(shard.events):
                    continue
                groups = client.xinfo_groups(shard.events)
                mine = [g for g in groups if g["name"] == shard.group.encode()]
                if not mine:
                    if client.xlen(shard.events):
                        busy.append(shard.name)
                    continue
                # Not XINFO's lag: Redis 7.0 was seen to report a lag of 14 with no entry after
                # the group's last-delivered id, after slot migrations and a failover.
                after = "(" + mine[0]["last-delivered-id"].decode()
                if int(mine[0]["pending"]) or client.xrange(shard.events, after, "+", count=1):
                    busy.append(shard.name)
        finally:
            client.close()
        return busy

    def describe(self, names: list[str]) -> dict[str, Any]:
        """The group, its consumers, pending entries and lease of each named shard."""
        client = self.client()
        found: dict[str, Any] = {}
        try:
            for shard in self.keys.all_shards():
                if shard.name in names:
                    found[shard.name] = {
                        "groups": client.xinfo_groups(shard.events),
                        "consumers": client.xinfo_consumers(shard.events, shard.group),
                        "pending": client.xpending_range(shard.events, shard.group, "-", "+", 5),
                        "lease": client.get(shard.lease),
                        "stream": client.xinfo_stream(shard.events),
                    }
        finally:
            client.close()
        return found

    def owners(self) -> dict[str, str | None]:
        """shard name → the worker holding its lease."""
        client = self.client()
        try:
            found = {s.name: client.get(s.lease) for s in self.keys.all_shards()}
        finally:
            client.close()
        return {name: None if v is None else v.decode() for name, v in found.items()}

    def wait_balanced(self, workers: int, timeout: float = 60.0) -> dict[str, str | None]:
        """Until every shard is owned and no worker holds more than its share."""
        share = -(-self.keys.shards // workers)

        def balanced() -> dict[str, str | None] | None:
            owners = self.owners()
            held = Counter(owners.values())
            ok = None not in held and len(held) == workers and max(held.values()) <= share
            return owners if ok else None

        try:  # worker processes take and hand back leases
            return until_sync(balanced, timeout=timeout, interval=0.2)
        except TimeoutError:
            raise TimeoutError(
                f"shards not balanced over {workers} workers: {self.owners()}"
            ) from None

    def wait_drained(self, shards: list[ShardKeys], timeout: float = 120.0) -> None:
        """Until no shard of ``shards`` has work left; fails at once if a worker exited."""

        def drained() -> bool:
            if not self.has_work(shards):
                return True
            for worker in self.workers:
                assert worker.process.poll() is None, f"{worker.name} exited; see its log"
            return False

        try:
            until_sync(drained, timeout=timeout, interval=0.25)  # worker processes do the work
        except TimeoutError:
            busy = self.has_work(shards)
            raise TimeoutError(
                f"shards {busy} still have work after {timeout}s: {self.describe(busy)}"
            ) from None

    def stored(self, executions: list[str]) -> Stored:
        headers = {"Authorization": f"Bearer {DEMO_TOKEN}", "AI-Resource-Group": "default"}
        points: Counter[Identity] = Counter()
        breaks: dict[str, list[tuple[int, int]]] = {}
        tags: dict[str, str] = {}
        for start in range(0, len(executions), 10):
            query = urllib.parse.urlencode(
                {"executionIds": ",".join(executions[start : start + 10]), "$top": 10000}
            )
            request = urllib.request.Request(
                f"{self.api_url}/v2/lm/metrics?{query}", headers=headers
            )
            with urllib.request.urlopen(request, timeout=60) as reply:
                resources: list[dict[str, Any]] = json.loads(reply.read())["resources"]
            for resource in resources:
                execution = resource["executionId"]
                steps = [m["step"] for m in resource["metrics"]]
                points.update((execution, s) for s in steps)
                breaks[execution] = [(a, b) for a, b in itertools.pairwise(steps) if b < a]
                for tag in resource["tags"]:
                    if tag["name"] == "last_step":
                        tags[execution] = tag["value"]
        return Stored(points, breaks, tags)

    def wait_logged(self, workers: list[ChildProcess], text: str, timeout: float = 30.0) -> None:
        """Until every worker's log has ``text`` (it is up, with the settings wanted)."""
        for worker in workers:
            worker.wait_logged(re.escape(text), timeout)

    def wait_stored(self, executions: list[str], points: int, timeout: float = 60.0) -> None:
        """Until the API holds at least ``points`` points of ``executions``."""
        until_sync(
            lambda: self.stored(executions).points.total() >= points,
            timeout=timeout,
            interval=0.1,  # worker processes deliver
            what=f"{points} points stored",
        )

    def status(self, *flags: str) -> dict[str, Any]:
        """``metricrelay status --json`` against the cluster, as an operator runs it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("METRICRELAY_")}
        env["METRICRELAY_REDIS_URL"] = self.cluster.url
        done = subprocess.run(
            [sys.executable, "-m", "metricrelay", "status", "--json", *flags],
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def dead_letters(self) -> int:
        client = self.client()
        try:
            return sum(client.xlen(shard.dead) for shard in self.keys.all_shards())
        finally:
            client.close()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.api is not None:
            self.api.stop()


def assert_ledger(stored: Stored, written: Written) -> None:
    missing = written.points - set(stored.points)
    assert not missing, f"{len(missing)} points lost, e.g. {sorted(missing)[:3]}"
    assert set(stored.points) == written.points, "points stored that nobody wrote"
    broken = {e: pairs for e, pairs in stored.order_breaks.items() if pairs}
    assert not broken, f"stored out of step order: {broken}"
    assert stored.tags == written.last_tag, "a tag did not end with the last value written"
