"""The reliability suite's stack of real processes (the ``stack`` fixture) and its ledger check.

The ledger counts points by identity — (execution, name, step, labels) — on both sides: what
producers wrote, and what ended up stored by the API (GET) or in the dead-letter stream.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from metricrelay.devtools.demo_stack import DEMO_TOKEN, ChildProcess, start_api, start_worker
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

KEYS = Keys()
Identity = tuple[str, str, int, tuple[tuple[str, str], ...]]


def identity(execution: str, metric: dict[str, Any]) -> Identity:
    labels = tuple((label["name"], label["value"]) for label in metric.get("labels") or [])
    return (execution, metric["name"], metric.get("step", -1), labels)


@dataclass
class Audit:
    written: set[Identity]
    stored: Counter[Identity]
    dead: dict[Identity, str]
    pending: int
    undelivered: int

    @property
    def missing(self) -> set[Identity]:
        return self.written - set(self.stored) - set(self.dead)

    def reasons(self) -> Counter[str]:
        return Counter(self.dead.values())

    def assert_balanced(self) -> None:
        assert not self.missing, f"{len(self.missing)} points lost, e.g. {sorted(self.missing)[:3]}"
        assert self.pending == 0, f"{self.pending} entries still pending"
        assert self.undelivered == 0, f"{self.undelivered} entries never delivered"


@dataclass
class Stack:
    """A private Redis, the reference API and worker processes, all in ``folder``."""

    folder: Path
    redis: RedisServer
    api_args: tuple[str, ...] = ()
    api: ChildProcess | None = None
    api_url: str = ""
    workers: list[ChildProcess] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)

    def start_api(self) -> str:
        self.api = start_api(self.folder, faults=False, args=self.api_args)
        self.api_url = self.api.bound_url()
        return self.api_url

    def start_worker(self, number: int, *, burst: bool = False, **env: str) -> ChildProcess:
        worker = start_worker(
            self.folder,
            number,
            self.redis.url,
            self.api_url,
            burst=burst,
            **{**self.worker_env, **env},
        )
        self.workers.append(worker)
        return worker

    identity = staticmethod(identity)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def xadd_points(
        self, execution: str, steps: range, *, per_entry: int = 50, name: str = "loss"
    ) -> set[Identity]:
        """Plain-XADD producer: points of ``steps`` packed ``per_entry`` to an entry."""
        written: set[Identity] = set()
        pipe = self.client().pipeline(transaction=False)
        for start in range(steps.start, steps.stop, per_entry):
            metrics = [
                {"name": name, "value": 1.0, "step": s, "labels": [{"name": "rank", "value": "0"}]}
                for s in range(start, min(start + per_entry, steps.stop))
            ]
            written |= {identity(execution, m) for m in metrics}
            pipe.xadd(
                KEYS.events,
                {"resource": orjson.dumps({"executionId": execution, "metrics": metrics})},
            )
        pipe.execute()
        return written

    def audit(self, written: set[Identity], executions: list[str]) -> Audit:
        stored: Counter[Identity] = Counter()
        headers = {"Authorization": f"Bearer {DEMO_TOKEN}", "AI-Resource-Group": "default"}
        for start in range(0, len(executions), 10):
            query = urllib.parse.urlencode(
                {"executionIds": ",".join(executions[start : start + 10])}
            )
            request = urllib.request.Request(
                f"{self.api_url}/v2/lm/metrics?{query}", headers=headers
            )
            with urllib.request.urlopen(request, timeout=60) as reply:
                for resource in json.loads(reply.read())["resources"]:
                    for metric in resource["metrics"]:
                        stored[identity(resource["executionId"], metric)] += 1
        dead: dict[Identity, str] = {}
        client = self.client()
        for _, fields in client.xrange(KEYS.dead):
            try:
                fragment = orjson.loads(fields[b"resource"])
            except orjson.JSONDecodeError:
                continue
            if isinstance(fragment, dict):
                for metric in fragment.get("metrics") or []:
                    if isinstance(metric, dict) and "name" in metric:
                        dead[identity(fragment.get("executionId", ""), metric)] = fields[
                            b"reason"
                        ].decode()
        groups = client.xinfo_groups(KEYS.events) if client.exists(KEYS.events) else []
        pending = int(groups[0]["pending"]) if groups else 0
        undelivered = int(groups[0].get("lag") or 0) if groups else client.xlen(KEYS.events)
        return Audit(written, stored, dead, pending, undelivered)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.stop()
        if self.api is not None and self.api.process.poll() is None:
            self.api.stop()
