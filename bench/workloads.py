"""Stream entries shaped as /work/shared/WORKLOADS.md says real producers write them.

:class:`W4` is the mixed workload: W2 entries (one point, plain XADD from other languages) and W3
entries (200 points, batching producers) 1 : 1 over 64 executions; 10 % of entries also carry a
tag change, 2 % a customInfo of 1-20 kB, 0.1 % an invalid item (a bad name, a NaN value or 21
labels, in turn). Every point: a name from the 8 of an execution, a float value, a step growing
per execution, ``rank`` (and for 25 % ``node``) labels, and a timestamp of its own with
microseconds: the wall clock when the entry is made, so a point's timestamp is its production time
(the remote-API benchmark measures produce → accepted with it).
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
        labels = [{"name": "rank", "value": str(rank)}]
        if self._rng.random() < 0.25:
            labels.append({"name": "node", "value": f"node-{rank % 8}"})
        return {
            "name": NAMES[index % len(NAMES)],
            "value": self._rng.uniform(0.0, 10.0),
            "step": index // len(NAMES),
            "timestamp": stamp(at),
            "labels": labels,
        }

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
