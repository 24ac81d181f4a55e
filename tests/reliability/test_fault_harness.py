"""The seeded fault harness (issue 14): Redis faults, API faults, kills and a freeze; invariants.

Three workers on the default configuration reach the private Redis through a
:class:`~metricrelay.devtools.faultproxy.FaultProxy` (resets, Redis errors, OOM on writes, slow
replies),
the reference API injects 503s, 429s, resets after storing, 413s and 400s (for a name only it
refuses), two workers are SIGKILLed and the proxy freezes Redis for longer than the lease TTL, all
while a producer writes straight to Redis. Then the faults stop, the workers get SIGTERM, a burst
worker drains the rest, and every invariant is checked and reported (all of them, not just the
first that fails). The same on a Redis Cluster, with MOVED/ASK storms and a failover:
tests/cluster/test_cluster_fault_harness.py.

One run per seed, every random choice (the producer's, the kills', the proxy's, the API's) from
it. Seeds: ``METRICRELAY_FAULT_SEEDS`` (comma-joined, default ``1,2``; with
``METRICRELAY_CHAOS_SCALE`` above 1, as ``make chaos`` sets, 1 to 20). A failing seed reproduces
on its own: ``METRICRELAY_FAULT_SEEDS=<n> pytest -s tests/reliability/test_fault_harness.py``
(``-s`` shows the report: what was injected, when, and each broken invariant). A seed fixes the
data, the kills, the freeze and the sequences of proxy and API decisions; which command or request
a decision falls on depends on how the processes interleave, so a rerun injects the same mix of
faults, not always at the same instants.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from tests.support.stopping import sigterm_all
from tests.support.waiting import until_sync

from metricrelay.devtools.demo_stack import DEMO_TOKEN, QUICK_WORKER_ENV, ChildProcess, start_worker
from metricrelay.devtools.faultproxy import FaultConfig, FaultProxy
from metricrelay.keys import Keys

KEYS = Keys()
SCALE = int(os.environ.get("METRICRELAY_CHAOS_SCALE", "1"))  # make chaos: 10
Identity = tuple[str, str, int, tuple[tuple[str, str], ...]]


def _seeds() -> list[int]:
    chosen = os.environ.get("METRICRELAY_FAULT_SEEDS", "").strip()
    if chosen:
        return [int(part) for part in chosen.split(",") if part.strip()]
    return list(range(1, 21)) if SCALE > 1 else [1, 2]


SEEDS = _seeds()
QUICK = dict(QUICK_WORKER_ENV)  # seconds, not minutes, per run
DRAIN_DEADLINE_S = 5.0
WORKER_ENV = {
    **QUICK,
    "METRICRELAY_LEASE_TTL": "2",
    "METRICRELAY_REDIS_TIMEOUT": "2",
    "METRICRELAY_REQUEST_TIMEOUT": "2",
    "METRICRELAY_DRAIN_DEADLINE": str(DRAIN_DEADLINE_S),
}
# A name the worker takes and the API refuses (400): only the API knows, as with a rule of the
# real API that the worker's validation does not cover.
REFUSED_NAME = "refused"
# What the producer writes wrong, and the reason each must be dead-lettered with, once.
INVALID_KINDS = {"nan": "invalid", "labels": "invalid", "refused": "rejected"}
# Retry-After is whole seconds (HTTP delta-seconds): 1, which the workers' QUICK
# METRICRELAY_RETRY_AFTER_CAP turns into 0.2 s.
API_FAULTS = (
    *("--fail-rate", "0.05", "--throttle-rate", "0.05", "--retry-after", "1"),
    *("--reset-rate", "0.02", "--reset-when", "after", "--max-metrics-per-request", "300"),
    *("--reject-names", f"^{REFUSED_NAME}$"),  # 400 for a body holding one: the bad item isolated
)
# Faults are on while the producer writes (~8 s, a few hundred commands of three workers): rates
# at which each kind is expected a few times per run. OOM hits only writes, the fewest commands.
PROXY_FAULTS = FaultConfig(
    reset_before=0.01,
    reset_after=0.01,
    error=0.01,
    oom_writes=0.02,
    slow=0.03,
    slow_max_s=0.3,
    stall=0.005,  # no reply for longer than the workers' METRICRELAY_REDIS_TIMEOUT: a timeout
    stall_s=3.0,
)
# At scale 8: 120k points over 60 executions with 6 SIGKILLs (the issue's own reproduction).
EXECUTIONS = [f"harness-{number:02d}" for number in range(min(60, 12 * SCALE))]
TOTAL_POINTS = 15_000 * SCALE
ROUNDS = 20  # production is paced over this many rounds, so kills and the freeze land mid-work
ROUND_S = 0.4
FREEZE_S = 3.0  # longer than the 2 s lease TTL
KILLS = min(6, 2 * SCALE)
WORKERS = (1, 2, 3)
BASE_TIME = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
API_PATCH_LOG = re.compile(rb"PATCH ([^/\s]+)/(\S+): (\d+) points")


def identity(execution: str, metric: dict[str, Any]) -> Identity:
    labels = tuple((label["name"], label["value"]) for label in metric.get("labels") or [])
    return (execution, metric["name"], metric.get("step", -1), labels)


# --- the producer --------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the producer wrote, per execution."""

    valid: dict[str, set[Identity]] = field(default_factory=dict)
    invalid: dict[Identity, str] = field(default_factory=dict)  # identity → what is wrong
    writes: Counter[str] = field(default_factory=Counter)  # entries, the `last` tag's counter
    last_tag: dict[str, str] = field(default_factory=dict)  # the last value of `last` written
    steps: Counter[str] = field(default_factory=Counter)
    entries: int = 0

    @property
    def points(self) -> int:
        return sum(len(points) for points in self.valid.values())


def _metric(ledger: Ledger, rng: random.Random, execution: str) -> dict[str, Any]:
    step = ledger.steps[execution]
    ledger.steps[execution] += 1  # every point of an execution has a step of its own
    stamp = BASE_TIME + timedelta(milliseconds=step)
    return {
        "name": rng.choice(("loss", "accuracy")),
        "value": rng.random(),
        "step": step,
        "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "labels": [{"name": "rank", "value": str(rng.randrange(8))}],
    }


def _invalid(ledger: Ledger, rng: random.Random, execution: str, kind: str) -> dict[str, Any]:
    metric = _metric(ledger, rng, execution)
    if kind == "nan":
        metric["value"] = "NaN"
    elif kind == "refused":
        metric["name"] = REFUSED_NAME
    else:
        metric["labels"] += [{"name": f"extra{n}", "value": "x"} for n in range(20)]  # 21
    ledger.invalid[identity(execution, metric)] = kind
    return metric


def _entry(
    ledger: Ledger, rng: random.Random, execution: str, *, tag: bool, invalid: str | None
) -> dict[str, Any]:
    size = 1 if rng.random() < 0.8 else rng.randint(50, 200)
    metrics = [_metric(ledger, rng, execution) for _ in range(size)]
    ledger.valid.setdefault(execution, set()).update(identity(execution, m) for m in metrics)
    if invalid is not None:
        metrics.insert(rng.randrange(len(metrics) + 1), _invalid(ledger, rng, execution, invalid))
    ledger.writes[execution] += 1
    fragment: dict[str, Any] = {"executionId": execution, "metrics": metrics}
    if tag:  # a counter that grows with every write: the last one written must win
        ledger.last_tag[execution] = str(ledger.writes[execution])
        fragment["tags"] = [{"name": "last", "value": ledger.last_tag[execution]}]
    ledger.entries += 1
    return fragment


def produce(client: redis.Redis, ledger: Ledger, rng: random.Random, points: int) -> None:
    """Plain XADDs straight to Redis until ``points`` more valid points are written."""
    pipe = client.pipeline(transaction=False)
    target = ledger.points + points
    while ledger.points < target:
        roll = rng.random()
        invalid = rng.choice(sorted(INVALID_KINDS)) if roll < 0.005 else None
        fragment = _entry(ledger, rng, rng.choice(EXECUTIONS), tag=roll >= 0.9, invalid=invalid)
        pipe.xadd(KEYS.events, {"resource": orjson.dumps(fragment)})
    pipe.execute()


def produce_last(client: redis.Redis, ledger: Ledger, rng: random.Random) -> None:
    """So that every run checks every invalid kind and every execution's final tag: what the
    random rounds did not write, written now (in random order, like the rest)."""
    missing = sorted(set(INVALID_KINDS) - set(ledger.invalid.values()))
    wanted: list[tuple[str, bool, str | None]] = [
        (rng.choice(EXECUTIONS), False, m) for m in missing
    ]
    wanted += [(e, True, None) for e in EXECUTIONS if e not in ledger.last_tag]
    rng.shuffle(wanted)
    pipe = client.pipeline(transaction=False)
    for execution, tag, invalid in wanted:
        fragment = _entry(ledger, rng, execution, tag=tag, invalid=invalid)
        pipe.xadd(KEYS.events, {"resource": orjson.dumps(fragment)})
    pipe.execute()


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    """One seed's processes and what was done to them."""

    stack: Any
    seed: int
    proxy: FaultProxy
    workers: dict[int, ChildProcess] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)  # kills, freezes, exits, for the report
    started: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.2f}s {what}")

    def start_worker(self, number: int) -> None:
        worker = start_worker(
            self.stack.folder, number, self.proxy.url, self.stack.api_url, **WORKER_ENV
        )
        self.stack.workers.append(worker)
        self.workers[number] = worker

    def restart_the_fallen(self) -> None:
        """A worker that ended by itself is started again, as its orchestrator would."""
        for number, worker in self.workers.items():
            code = worker.process.poll()
            if code is not None:
                self.note(f"worker {number} exited by itself with code {code}; restarted")
                worker.stop()
                self.start_worker(number)


def start_api(stack: Any, seed: int) -> None:
    """The reference API with its seeded faults, logging each stored PATCH (DEBUG) so that the
    points it stored per execution, repeats included, can be counted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METRICRELAY_", "AICORE_"))}
    argv = ["--log-level", "DEBUG", "api", "--port", "0", "--db", str(stack.folder / "api.sqlite")]
    argv += ["--token", DEMO_TOKEN, *API_FAULTS, "--seed", str(seed)]
    stack.api = ChildProcess("api", argv, stack.folder / "api.log", env, append=True)
    stack.api_url = stack.api.bound_url()


def run_production(run: Run, ledger: Ledger, rng: random.Random) -> None:
    """Paced rounds of writes; the kills and the freeze at rounds the seed chose."""
    kill_rounds = sorted(rng.sample(range(2, ROUNDS - 2), KILLS))
    freeze_round = rng.randrange(2, ROUNDS - 2)
    client = run.stack.client()
    for number in range(ROUNDS):
        produce(client, ledger, rng, TOTAL_POINTS // ROUNDS)
        pause = ROUND_S  # pacing the producer (not waiting for anything)
        if number == freeze_round:
            run.proxy.freeze(FREEZE_S)
            run.note(f"proxy frozen for {FREEZE_S}s (round {number})")
        for _ in range(kill_rounds.count(number)):
            offset = rng.uniform(0, ROUND_S)  # anywhere in the round, so mid-work
            time.sleep(offset)
            pause -= offset
            victim = rng.choice(WORKERS)
            run.workers[victim].kill()
            run.note(f"SIGKILL worker {victim} (round {number}); restarted at once")
            run.start_worker(victim)
        time.sleep(max(0.0, pause))
        run.restart_the_fallen()
    produce_last(client, ledger, rng)


def wait_delivered(stack: Any, run: Run, timeout: float = 20.0) -> None:
    """Give the workers (faults off) the time to read the backlog, so that SIGTERM finds them
    busy with the last of it rather than far behind; stops early if none is alive."""
    client = stack.client()

    def read_or_ended() -> str | None:
        if not int(client.xinfo_groups(KEYS.events)[0].get("lag") or 0):
            return "read"
        if all(w.process.poll() is not None for w in run.workers.values()):
            return "ended"
        return None

    try:
        if until_sync(read_or_ended, timeout=timeout, interval=0.1) == "ended":
            run.note("every worker had ended before the backlog was read")
    except TimeoutError:
        run.note(f"backlog not read within {timeout}s of the faults stopping")


def stop_workers(run: Run) -> list[str]:
    """SIGTERM every worker at once; each must exit 0 within its drain deadline + 5 s."""
    named = {f"worker {number}": worker for number, worker in run.workers.items()}
    return sigterm_all(named, DRAIN_DEADLINE_S + 5.0, run.note)


def drain(stack: Any, run: Run) -> list[str]:
    """A last worker in burst mode, straight to Redis (no proxy faults), drains what is left."""
    started = time.monotonic()
    worker = start_worker(
        stack.folder, 99, stack.redis.url, stack.api_url, burst=True, **WORKER_ENV
    )
    stack.workers.append(worker)
    try:
        code = worker.process.wait(180 * SCALE)
    except subprocess.TimeoutExpired:
        worker.kill()
        return ["the burst worker did not finish within its time"]
    worker.stop()
    run.note(f"burst worker exited {code} after {time.monotonic() - started:.1f}s")
    return [] if code == 0 else [f"the burst worker exited with code {code}"]


# --- what ended up where -------------------------------------------------------------------------


@dataclass(frozen=True)
class Letter:
    """One dead letter, as a failure message names it."""

    id: str
    reason: str
    sources: str  # the event-stream ids it came from

    def __str__(self) -> str:
        return f"{self.id} {self.reason} from {self.sources}"


@dataclass
class Observed:
    """The outcome, read from the API (GET and its log) and from Redis."""

    stored: Counter[Identity]  # by GET: one per identity the API keeps
    tags: dict[str, dict[str, str]]  # execution → tag name → value
    received: Counter[str]  # points of every PATCH the API stored, repeats included
    letters: dict[Identity, list[Letter]]  # dead-lettered items by identity
    whole_letters: list[str]  # letters without a metric item (a whole entry, a tag…)
    pending: int
    undelivered: int  # entries after the group's last-delivered id (not XINFO's lag estimate)
    accepted: dict[str, int]  # points_accepted of each execution's progress hash
    backwards: dict[str, list[tuple[int, int]]]  # execution → (step, smaller step stored next)


def read_api(
    api_url: str,
) -> tuple[Counter[Identity], dict[str, dict[str, str]], dict[str, list[tuple[int, int]]]]:
    """Points by identity, tags, and each execution's steps that went backwards in the order
    the API stored them (it keeps arrival order; a repeat is not stored again)."""
    stored: Counter[Identity] = Counter()
    backwards: dict[str, list[tuple[int, int]]] = {}
    tags: dict[str, dict[str, str]] = {}
    headers = {"Authorization": f"Bearer {DEMO_TOKEN}", "AI-Resource-Group": "default"}
    for start in range(0, len(EXECUTIONS), 10):  # at most 10 executions per GET
        query = urllib.parse.urlencode({"executionIds": ",".join(EXECUTIONS[start : start + 10])})
        request = urllib.request.Request(f"{api_url}/v2/lm/metrics?{query}", headers=headers)
        with urllib.request.urlopen(request, timeout=60) as reply:
            for resource in json.loads(reply.read())["resources"]:
                execution = resource["executionId"]
                steps = [metric.get("step", -1) for metric in resource.get("metrics") or []]
                for metric in resource.get("metrics") or []:
                    stored[identity(execution, metric)] += 1
                tags[execution] = {t["name"]: t["value"] for t in resource.get("tags") or []}
                backwards[execution] = [(a, b) for a, b in itertools.pairwise(steps) if b < a]
    return stored, tags, backwards


def read_letters(client: redis.Redis) -> tuple[dict[Identity, list[Letter]], list[str]]:
    letters: dict[Identity, list[Letter]] = {}
    whole: list[str] = []
    for letter_id, fields in client.xrange(KEYS.dead):
        reason = fields[b"reason"].decode()
        try:
            fragment = orjson.loads(fields[b"resource"])
        except orjson.JSONDecodeError:
            fragment = None
        metrics = fragment.get("metrics") if isinstance(fragment, dict) else None
        if not metrics:
            error = fields.get(b"error", b"").decode(errors="replace")[:200]
            whole.append(f"{letter_id.decode()} {reason}: {error}")
            continue
        letter = Letter(letter_id.decode(), reason, fields[b"source_ids"].decode())
        for metric in metrics:
            letters.setdefault(identity(fragment["executionId"], metric), []).append(letter)
    return letters, whole


def observe(stack: Any) -> Observed:
    stored, tags, backwards = read_api(stack.api_url)
    received: Counter[str] = Counter()
    for _, execution, points in API_PATCH_LOG.findall((stack.folder / "api.log").read_bytes()):
        received[execution.decode()] += int(points)
    client = stack.client()
    letters, whole = read_letters(client)
    group = client.xinfo_groups(KEYS.events)[0]
    after = "(" + group["last-delivered-id"].decode()
    undelivered = len(client.xrange(KEYS.events, after, "+"))
    accepted = {
        e: int(client.hget(KEYS.progress("default", e), "points_accepted") or 0) for e in EXECUTIONS
    }
    return Observed(
        stored, tags, received, letters, whole, int(group["pending"]), undelivered, accepted,
        backwards,
    )  # fmt: skip


def check(ledger: Ledger, seen: Observed) -> list[str]:
    """Every invariant, each failure as one readable line."""
    failures: list[str] = []
    valid = set().union(*ledger.valid.values())
    missing = valid - set(seen.stored)
    if missing:
        failures.append(
            f"[stored] {len(missing)} of {len(valid)} valid points not stored by the API, "
            f"e.g. {sorted(missing)[:3]}"
        )
    failures += _check_letters(ledger, seen)
    if seen.pending or seen.undelivered:
        failures.append(
            f"[drained] pending {seen.pending}, undelivered {seen.undelivered} (both must be 0)"
        )
    backwards = {e: pairs[:3] for e, pairs in seen.backwards.items() if pairs}
    if backwards:
        failures.append(f"[step order] stored out of step order (step, next): {backwards}")
    for execution in EXECUTIONS:
        written = ledger.last_tag.get(execution)
        final = seen.tags.get(execution, {}).get("last")
        if final != written:
            failures.append(
                f"[tag order] {execution}: final tag last={final}, last written {written} "
                f"(of {ledger.writes[execution]} writes)"
            )
        distinct = len(ledger.valid.get(execution, ()))
        accepted, received = seen.accepted[execution], seen.received[execution]
        if not distinct <= accepted <= received:
            failures.append(
                f"[progress] {execution}: points_accepted {accepted} outside [{distinct} distinct "
                f"valid points written, {received} points the API stored, repeats included]"
            )
    return failures


def _check_letters(ledger: Ledger, seen: Observed) -> list[str]:
    failures = []
    for item, kind in sorted(ledger.invalid.items()):
        letters = seen.letters.get(item, [])
        reason = INVALID_KINDS[kind]
        if [letter.reason for letter in letters] != [reason]:
            failures.append(
                f"[dead once] bad item ({kind}) {item[:3]}: {len(letters)} dead letters "
                f"{[str(letter) for letter in letters]} (exactly one, reason {reason}, expected)"
            )
    others = Counter(
        letter.reason for item, letters in seen.letters.items() if item not in ledger.invalid
        for letter in letters
    )  # fmt: skip
    if others:
        failures.append(
            f"[nothing else dead] valid points dead-lettered, by reason: {dict(others)}"
        )
    if seen.whole_letters:
        failures.append(
            f"[nothing else dead] {len(seen.whole_letters)} other letters, e.g. "
            f"{seen.whole_letters[:3]}"
        )
    return failures


def check_logs(folder: Path) -> tuple[list[str], Counter[str]]:
    """Tracebacks and unexpected stops in worker logs (failures), and a tally of the workers'
    warnings and errors by their first words (for the report)."""
    failures = []
    tally: Counter[str] = Counter()
    for path in sorted(folder.glob("worker-*.log")):
        text = path.read_text(errors="replace")
        raised = _exceptions(text)
        if raised or "stopped unexpectedly" in text:
            failures.append(
                f"[logs] {path.name}: {text.count('Traceback')} tracebacks, "
                f"{text.count('stopped unexpectedly')} unexpected stops; raised: {raised[:4]}"
            )
        for held in re.findall(r"worker stopped holding (\d+) bytes", text):
            if held != "0":  # the memory budget must be back to zero when a worker ends
                failures.append(f"[budget] {path.name}: stopped holding {held} bytes")
        for found in re.finditer(r" (WARNING|ERROR) ([\w.]+): ([^(\n:]{0,70})", text):
            tally[f"{found[1]} {found[2]}: {found[3].strip()}"] += 1
    return failures, tally


def _exceptions(text: str) -> list[str]:
    """The exception line ending each traceback in ``text``."""
    raised: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            inside = True
        elif inside and line and not line[0].isspace():
            inside = False
            raised.append(line[:200])
    return raised


def server_stats(api_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api_url}/_stats", timeout=30) as reply:
        stats: dict[str, Any] = json.loads(reply.read())
        return stats


def report(
    seed: int, run: Run, ledger: Ledger, proxy_stats: tuple[Counter[str], Counter[str]], **more: Any
) -> None:
    print(f"\n=== fault harness, seed {seed}, scale {SCALE} ===")
    print(
        f"written: {ledger.entries} entries, {ledger.points} valid points in "
        f"{len(ledger.valid)} executions, {len(ledger.invalid)} invalid items "
        f"{dict(Counter(ledger.invalid.values()))}, tags on {len(ledger.last_tag)} executions"
    )
    faulted, total = proxy_stats
    print(f"proxy while faulty: {dict(sorted(faulted.items()))}")
    print(f"proxy in all: {dict(sorted(total.items()))}")
    for line in run.events:
        print(f"  {line}")
    for name, value in more.items():
        print(f"{name}: {value}")


# --- the test ------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(300 * SCALE)
@pytest.mark.parametrize("seed", SEEDS)
def test_faults_on_every_side_break_no_invariant(stack: Any, seed: int) -> None:
    rng = random.Random(seed)
    start_api(stack, seed)
    ledger = Ledger()
    failures: list[str] = []
    with FaultProxy("127.0.0.1", stack.redis.port, PROXY_FAULTS, seed) as proxy:
        run = Run(stack, seed, proxy)
        for number in WORKERS:
            run.start_worker(number)
        run_production(run, ledger, rng)
        proxy.set_config(FaultConfig())
        faulted = proxy.stats
        faults_by_command = proxy.by_command
        run.note(f"production done; proxy faults off; {ledger.points} points written")
        wait_delivered(stack, run)
        failures += stop_workers(run)
        proxy_stats = proxy.stats
    failures += drain(stack, run)
    seen = observe(stack)
    failures += check(ledger, seen)
    log_failures, log_tally = check_logs(stack.folder)
    failures += log_failures
    api = server_stats(stack.api_url)
    report(
        seed,
        run,
        ledger,
        (faulted, proxy_stats),
        proxy_faults=dict(sorted(faults_by_command.items())),
        api_responses=api["responses"],
        api_faults=api["faults"],
        api_storage=api["storage"],
        points_accepted=sum(seen.accepted.values()),
        api_points_received=sum(seen.received.values()),
        worker_warnings=dict(log_tally.most_common(12)),
        seconds=f"{time.monotonic() - run.started:.1f}",
        failures=len(failures),
    )
    for failure in failures:
        print(f"  FAILED {failure}")
    assert not failures, f"seed {seed}: {len(failures)} invariants broken:\n" + "\n".join(failures)
