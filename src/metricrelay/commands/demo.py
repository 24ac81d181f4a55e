"""``metricrelay demo`` (``make run``): the whole relay, end to end, on embedded defaults.

A private redis-server, the reference API (SQLite, light fault injection), two worker processes
and a simulated distributed training (executions x ranks, each rank an Emitter). Live progress on
the terminal; at the end a summary per execution read back from the API with GET, and the
viewer's URL. Exit 0 only if every point was delivered and the one deliberately bad entry was
dead-lettered as ``invalid``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run Redis, the reference API, two workers and a simulated training, end to end",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--executions", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--step-ms", type=float, default=20.0, help="simulated time per step")
    parser.add_argument("--dir", type=Path, default=Path(".demo"), help="logs and data (reset)")
    parser.add_argument("--keep", action="store_true", help="leave everything running; Ctrl-C ends")
    parser.add_argument("--no-faults", action="store_true", help="no injected API faults")
    parser.set_defaults(handler=run)


def _get(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}", "AI-Resource-Group": "default"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as reply:
        return json.loads(reply.read())


class _Progress:
    """One status line: logged, delivered, retried, split, dead-lettered, lag."""

    def __init__(self, redis_url: str, api_url: str, executions: list[str]) -> None:
        from metricrelay.connection import sync_client  # noqa: PLC0415
        from metricrelay.keys import Keys  # noqa: PLC0415

        self.client = sync_client(redis_url)
        self.keys = Keys()
        self.api_url = api_url
        self.executions = executions
        self.tty = sys.stdout.isatty()
        self._last_print = 0.0

    def delivered(self) -> int:
        total = 0
        for execution in self.executions:
            value = self.client.hget(self.keys.progress("default", execution), "points_accepted")
            total += int(value or 0)
        return total

    def line(self, logged: int) -> str:
        responses = _get(f"{self.api_url}/_stats")["responses"]
        retried = sum(int(responses.get(s, 0)) for s in ("503", "429", "reset"))
        groups = (
            self.client.xinfo_groups(self.keys.events)
            if self.client.exists(self.keys.events)
            else []
        )
        lag = groups[0].get("lag") if groups else 0
        pending = groups[0].get("pending") if groups else 0
        split = int(responses.get("413", 0))
        dead = self.client.xlen(self.keys.dead)
        return (
            f"logged {logged:>7}  delivered {self.delivered():>7}  retried {retried:>4}  "
            f"split(413) {split:>4}  dead {dead:>2}  lag {lag}  pending {pending}"
        )

    def show(self, logged: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_print < (0.3 if self.tty else 2.0):
            return
        self._last_print = now
        text = self.line(logged)
        print(
            ("\r" + text) if self.tty else text,
            end="\n" if final or not self.tty else "",
            flush=True,
        )


def _poison(redis_url: str, execution: str) -> None:
    """One deliberately bad entry, as a buggy producer in another language might XADD it."""
    from metricrelay.connection import sync_client  # noqa: PLC0415
    from metricrelay.keys import Keys  # noqa: PLC0415

    bad = b'{"executionId":"%s","metrics":[{"name":"training_loss","value":NaN,"step":0}]}'
    sync_client(redis_url).xadd(Keys().events, {"resource": bad % execution.encode()})


def _summary(api_url: str, executions: list[str], expected: int) -> int:
    from metricrelay.devtools.demo_stack import DEMO_TOKEN  # noqa: PLC0415

    print(f"\n{'execution':16} {'points':>7} {'ranks':>5} {'tags':>5}  customInfo")
    stored = 0
    for execution in executions:
        query = urllib.parse.urlencode({"executionIds": execution})
        resources = _get(f"{api_url}/v2/lm/metrics?{query}", DEMO_TOKEN)["resources"]
        resource = resources[0] if resources else {"metrics": [], "tags": [], "customInfo": []}
        ranks = {str(m.get("labels")) for m in resource["metrics"]}
        infos = ", ".join(c["name"] for c in resource.get("customInfo") or [])
        count = len(resource["metrics"])
        stored += count
        print(
            f"{execution:16} {count:7} {len(ranks):5} {len(resource.get('tags') or []):5}  {infos}"
        )
    print(f"\nstored {stored} of {expected} points logged")
    return stored


def run(args: argparse.Namespace) -> int:
    from metricrelay.devtools.demo_stack import start_api, start_worker  # noqa: PLC0415
    from metricrelay.devtools.embedded import RedisServer  # noqa: PLC0415

    folder: Path = args.dir
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "redis").mkdir(parents=True)
    children = []
    try:
        with RedisServer(directory=folder / "redis") as redis_server:
            api = start_api(folder, faults=not args.no_faults)
            children.append(api)
            api_url = api.bound_url()
            children += [start_worker(folder, n, redis_server.url, api_url) for n in (1, 2)]
            print(f"redis {redis_server.url}  api {api_url}  logs in {folder}/")
            ok = _run_training(args, redis_server.url, api_url)
            print(f"viewer: {api_url}/")
            if args.keep:
                print("--keep: everything stays up; Ctrl-C stops it")
                threading.Event().wait()
            return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted: shutting down")
        return 130
    finally:
        for child in children:
            child.stop()


def _run_training(args: argparse.Namespace, redis_url: str, api_url: str) -> bool:
    from metricrelay.connection import sync_client  # noqa: PLC0415
    from metricrelay.devtools.demo_training import Training  # noqa: PLC0415
    from metricrelay.keys import Keys  # noqa: PLC0415

    executions = [f"demo-run-{n:02d}" for n in range(args.executions)]
    training = Training(redis_url, executions, args.ranks, args.steps, args.step_ms / 1000)
    progress = _Progress(redis_url, api_url, executions)
    started = time.monotonic()
    threads = training.start()
    _poison(redis_url, executions[0])
    while any(t.is_alive() for t in threads):
        progress.show(training.logged)
        threads[0].join(0.1)
    if training.errors:
        raise training.errors[0]
    for emitter in training.emitters:  # the end-of-run barrier of every rank
        emitter.flush(timeout=300, wait_delivered=True)
        emitter.close()
    progress.show(training.logged, final=True)
    stored = _summary(api_url, executions, training.logged)
    rows: Any = sync_client(redis_url).xrange(Keys().dead)
    dead = [fields[b"reason"].decode() for _, fields in rows]
    print(f"dead letters: {dead} (one bad entry was sent on purpose)")
    print(f"done in {time.monotonic() - started:.1f}s")
    return stored == training.logged and dead == ["invalid"]
