"""Stream entries shaped as /work/shared/WORKLOADS.md says real producers write them.

- :func:`w1`: the Emitter in a DDP job, 16 executions x 8 ranks, 8 metrics a step, packed by the
  producer's own packer as the Emitter packs a flush of STEPS_PER_FLUSH steps;
- :func:`w2`: one point per entry (plain XADD from other languages), 64 executions;
- :func:`w3`: PACKED points per entry (batching producers), 64 executions;
- :class:`W4` (:func:`w4`): W2 and W3 entries 1 : 1 over 64 executions; 10 % of entries also
  carry a tag change, 2 % a customInfo of 1-20 kB, 0.1 % an invalid item (a bad name, a NaN value
  or 21 labels, in turn).

Every point: a name from the 8 of an execution, a float value, a step growing per execution,
``rank`` (and for 25 % ``node``) labels, and a timestamp of its own with microseconds: the wall
clock when the entry is made, so a point's timestamp is its production time (the remote-API
benchmark measures produce → accepted with it).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

NAMES: Final = (
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "train/tokens_per_s",
    "val/loss",
    "val/accuracy",
    "gpu/mem_gb",
    "throughput",
)
RANKS: Final = 8
PACKED: Final = 200  # points of a W3 entry
W1_EXECUTIONS: Final = 16
STEPS_PER_FLUSH: Final = 10  # a rank logging 10 steps/s with the Emitter's 1 s flush interval
TAG_SHARE: Final = 0.10
CUSTOM_INFO_SHARE: Final = 0.02
INVALID_SHARE: Final = 0.001
# NaN cannot be written as JSON by a conforming producer; one that writes it anyway sends the
# bare token, which the relay refuses like any non-finite number.
_NAN_VALUE: Final = b"NaN"


def stamp(at: float) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``."""
    seconds = int(at)
    micros = round((at - seconds) * 1_000_000)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


@dataclass
class Entry:
    execution: str
    data: bytes
    points: int  # valid points
    invalid: int  # invalid items


def _labels(rng: random.Random, rank: int) -> list[dict[str, str]]:
    labels = [{"name": "rank", "value": str(rank)}]
    if rng.random() < 0.25:
        labels.append({"name": "node", "value": f"node-{rank % 8}"})
    return labels


def point(rng: random.Random, index: int, at: float, rank: int) -> dict[str, Any]:
    """Point ``index`` of an execution (its step: index // 8) by ``rank`` at time ``at``."""
    return {
        "name": NAMES[index % len(NAMES)],
        "value": rng.uniform(0.0, 10.0),
        "step": index // len(NAMES),
        "timestamp": stamp(at),
        "labels": _labels(rng, rank),
    }


def _plain(tag: str, points: int, per_entry: int, seed: int, clock: Any) -> list[Entry]:
    rng = random.Random(seed)
    ids = [f"w-{tag}-{n:03d}" for n in range(64)]
    made = [0] * len(ids)
    out = []
    for number in range(points // per_entry):
        execution = number % len(ids)
        first, now, rank = made[execution], clock(), rng.randrange(RANKS)
        made[execution] += per_entry
        metrics = [
            point(rng, first + i, now - (per_entry - 1 - i) * 1e-6, rank) for i in range(per_entry)
        ]
        data = orjson.dumps({"executionId": ids[execution], "metrics": metrics})
        out.append(Entry(ids[execution], data, per_entry, 0))
    return out


def w2(tag: str, points: int, seed: int = 1, clock: Any = time.time) -> list[Entry]:
    """W2: one point per entry (plain XADD from other languages), 64 executions."""
    return _plain(tag, points, 1, seed, clock)


def w3(tag: str, points: int, seed: int = 1, clock: Any = time.time) -> list[Entry]:
    """W3: PACKED points per entry (batching producers), 64 executions."""
    return _plain(tag, points, PACKED, seed, clock)


def w1(tag: str, points: int, seed: int = 1, clock: Any = time.time) -> list[Entry]:
    """W1: what 16 executions x 8 ranks write through the Emitter: each rank's
    ``log_metrics({8 metrics}, step=s, labels={"rank": r})`` calls (25 % of the metrics also
    labelled ``node``), stamped once per call as the Emitter stamps them, packed by the
    producer's packer one flush (STEPS_PER_FLUSH steps) at a time, ranks and executions
    interleaved as their flushes would arrive."""
    from metricrelay.producer.packing import pack  # noqa: PLC0415 (bench-only import)

    rng = random.Random(seed)
    ids = [f"w1-{tag}-{n:03d}" for n in range(W1_EXECUTIONS)]
    per_flush = STEPS_PER_FLUSH * len(NAMES)
    out: list[Entry] = []
    step = 0
    while len(out) * per_flush < points:
        for execution in ids:
            for rank in range(RANKS):
                base = clock()
                ops = []
                for s in range(step, step + STEPS_PER_FLUSH):
                    for name in NAMES:
                        labels: tuple[tuple[str, str], ...] = (("rank", str(rank)),)
                        if rng.random() < 0.25:
                            labels = (*labels, ("node", f"node-{rank % 8}"))
                        moment = int((base + (s - step) * 1e-3) * 1e9)  # one per call
                        ops.append((name, rng.uniform(0.0, 10.0), s, labels, moment))
                for data, count in pack(ops, "default", execution):
                    out.append(Entry(execution, data, count, 0))
                if len(out) * per_flush >= points:
                    return out
        step += STEPS_PER_FLUSH
    return out


@dataclass
class W4:
    """Makes W4 entries; ``seed`` fixes the mix (and nothing else: timestamps are the clock's)."""

    tag: str  # makes execution ids unique per run
    seed: int = 1
    executions: int = 64
    clock: Any = time.time
    _rng: random.Random = field(init=False)
    _points: list[int] = field(init=False)  # per execution: points made so far
    _made: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._points = [0] * self.executions
        self.ids = [f"w4-{self.tag}-{n:03d}" for n in range(self.executions)]

    def entry(self) -> Entry:
        rng = self._rng
        number = rng.randrange(self.executions)
        count = 1 if self._made % 2 == 0 else PACKED  # W2 and W3, 1 : 1
        self._made += 1
        now = self.clock()
        first = self._points[number]
        self._points[number] += count
        rank = rng.randrange(RANKS)
        metrics = [self._point(first + i, now - (count - 1 - i) * 1e-6, rank) for i in range(count)]
        resource: dict[str, Any] = {"executionId": self.ids[number], "metrics": metrics}
        if rng.random() < TAG_SHARE:
            resource["tags"] = [{"name": "phase", "value": f"epoch-{first // 10_000}"}]
        if rng.random() < CUSTOM_INFO_SHARE:
            size = rng.randint(1_000, 20_000)
            notes = "".join(rng.choices("abcdefghij ", k=size))
            resource["customInfo"] = [{"name": f"notes-{rng.randrange(4)}", "value": notes}]
        invalid = 0
        if rng.random() < INVALID_SHARE:
            invalid = 1
            metrics.append(self._invalid(first + count, now, rank))
        data = orjson.dumps(resource)
        if invalid and metrics[-1]["value"] is None:
            data = data.replace(b'"value":null', b'"value":' + _NAN_VALUE, 1)
        return Entry(self.ids[number], data, count, invalid)

    def _point(self, index: int, at: float, rank: int) -> dict[str, Any]:
        return point(self._rng, index, at, rank)

    def _invalid(self, index: int, at: float, rank: int) -> dict[str, Any]:
        point = self._point(index, at, rank)
        kind = self._made % 3
        if kind == 0:
            point["name"] = "///"  # no letter, digit, '_' or '-'
        elif kind == 1:
            point["value"] = None  # written as NaN below
        else:
            point["labels"] = [{"name": f"l{i}", "value": "v"} for i in range(21)]
        return point


def w4(tag: str, points: int, seed: int = 1) -> list[Entry]:
    """W4 entries until they carry ``points`` valid points."""
    maker = W4(tag, seed)
    out: list[Entry] = []
    made = 0
    while made < points:
        out.append(maker.entry())
        made += out[-1].points
    return out
