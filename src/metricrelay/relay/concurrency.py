"""How many bodies may be in flight: AIMD on the limit (adaptive) and the slots that enforce it.

The API says what it takes through its answers, as in Vector's adaptive request concurrency
(ARC): quick 2xx answers while every slot is busy mean more would fit; 429s and 503s, or answers
clearly slower than usual, mean too much is in flight. The limit is judged once per window of one
average round trip:

- +1 (additive increase) when the window reached the limit, saw no back pressure and its mean RTT
  was at most the baseline;
- multiplicative decrease (never below 1) when it saw back pressure or its mean RTT rose above the
  baseline by more than ``rtt_deviation_scale`` standard deviations. The baseline is an EWMA (with
  its variance) of the windows' mean RTTs; only 2xx answers are RTT samples.

What an API with a tenant-wide request-rate limit adds. There the limit is coarse (at 20
requests/s and 125 ms, 2 in flight are 16/s and 3 are 24/s), 429s come in bursts, and a delivery
sleeping out its Retry-After keeps its slot, which already paces it:

- the limit is the floor of a fractional level, so a decrease at small limits need not halve it;
- a lone 429 or 503 (up to ``tolerated_refusals`` among the last RECENT_ANSWERS answers) is the
  rate limit's edge or chance, not overload: it stops any increase and decreases nothing;
- with enough answers in the window, the decrease is their accepted share (within
  [``min_decrease_ratio``, ``decrease_ratio``]): far over the limit, down fast (16 in flight
  against 20/s come down to a handful within a few seconds; meanwhile the deliveries the first
  429s sent to sleep already pace the rest);
- one decrease per congestion event: only back pressure on PATCHes sent after the last decrease
  counts (those sent before drew it, or echo it);
- no increase for ``hold_after_decrease`` seconds after a decrease, and none back up to the limit
  that last drew back pressure until ``probe_after`` seconds passed without more;
- "reached" counts PATCHes awaiting an answer, not deliveries: a sleeping delivery is no evidence
  that more would fit;
- **pacing**: once back pressure with a 429 among it drew a decrease (``pacing``; 503s alone do
  not), whole in-flight steps are too coarse to meet a request-rate limit (one worker oscillated
  between 2 and 3 in flight, 16 and 24 requests/s, and held ~17). From then on the level's
  fraction counts: the limit is its ceiling, and PATCH starts are spaced by one baseline round
  trip divided by the level (:attr:`AimdLimit.interval`, booked by
  :meth:`DeliverySlots.start_delay`), so a level of 2.5 sends 2.5 per round trip; the increase
  is ``paced_increase`` instead of 1; a start that had to wait for its turn is demand (as
  "reached" is); latency no longer decreases the level (a rate-limited API's round trips say
  nothing of its rate, and windows of two or three answers made spurious decreases); and the
  level may fall to PACED_FLOOR, below one in flight, so that many workers can share a small
  limit.

It starts at the maximum (``initial``), as the fixed limit did, and comes down when answered so.
:class:`AimdLimit` is pure: no I/O, no clock of its own (it is told ``now``). :class:`DeliverySlots`
(one per worker process, shared by every shard's scheduler) is synchronous and reads the clock it
was given.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["BACK_PRESSURE", "AimdLimit", "ConcurrencyConfig", "DeliverySlots", "Ewma"]

log = logging.getLogger(__name__)

# Answers that say "too much": the API's rate limit and its overload. Network errors are not
# counted: a reset says nothing about load, and a timeout's long RTT is no sample either.
BACK_PRESSURE: Final = frozenset({429, 503})
# The answers ``tolerated_refusals`` counts among.
RECENT_ANSWERS: Final = 20
# Answers in a window enough to trust their accepted share for the decrease.
_SHARE_SAMPLE: Final = 8
# The lowest level when paced: one PATCH in flight, started every 1 / PACED_FLOOR round trips (so
# that many workers can share a small rate limit).
PACED_FLOOR: Final = 0.1
# How long after its last 429 the API counts as throttling (DeliverySlots.throttled).
THROTTLED_S: Final = 10.0
# The first window's length, before any round trip was measured.
FIRST_WINDOW_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class ConcurrencyConfig:
    """The relay's defaults; the upper bound is the ``concurrency`` setting.

    ``adaptive`` off: the limit is the maximum, as before. ``fill_queued``: a body waiting for a
    slot takes in the bodies of its execution queued behind it, up to the body limits, and
    full bodies go first; one that can still grow waits at most ``fill_wait`` seconds (from its
    opening) behind them (scheduler.py); ``fill_while_throttled`` (adaptive only): while the API
    throttles (:meth:`DeliverySlots.throttled`) it waits so even with a slot free. ``pacing``
    and ``paced_increase``: see the module docstring.
    """

    adaptive: bool = True
    initial: int | None = None  # None: the maximum, as a fixed limit would be
    decrease_ratio: float = 0.9
    min_decrease_ratio: float = 0.5
    ewma_alpha: float = 0.4
    rtt_deviation_scale: float = 2.5
    hold_after_decrease: float = 1.0
    probe_after: float = 3.0
    tolerated_refusals: int = 1
    pacing: bool = True
    paced_increase: float = 0.05
    fill_queued: bool = True
    fill_wait: float = 5.0
    fill_while_throttled: bool = True

    def __post_init__(self) -> None:
        if self.initial is not None and self.initial < 1:
            raise ValueError("the initial concurrency must be at least 1")
        if not 0.0 < self.min_decrease_ratio <= self.decrease_ratio < 1.0:
            raise ValueError(
                "need 0 < min_decrease_ratio <= decrease_ratio < 1 (the decrease's bounds)"
            )
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise ValueError("ewma_alpha must be in (0, 1]")
        if not self.rtt_deviation_scale >= 0.0:
            raise ValueError("rtt_deviation_scale must not be negative")
        if not self.hold_after_decrease >= 0.0:
            raise ValueError("hold_after_decrease must not be negative")
        if not self.probe_after >= 0.0:
            raise ValueError("probe_after must not be negative")
        if not self.fill_wait >= 0.0:
            raise ValueError("fill_wait must not be negative")
        if not self.paced_increase > 0.0:
            raise ValueError("paced_increase must be positive")
        if not 0 <= self.tolerated_refusals < RECENT_ANSWERS:
            raise ValueError(f"tolerated_refusals must be in [0, {RECENT_ANSWERS})")


class Ewma:
    """Exponentially weighted mean and variance (West's incremental form, as Vector's EwmaVar)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.mean: float | None = None
        self.variance = 0.0

    def update(self, value: float) -> None:
        if self.mean is None:
            self.mean = value
            return
        diff = value - self.mean
        step = self.alpha * diff
        self.mean += step
        self.variance = (1.0 - self.alpha) * (self.variance + diff * step)

    @property
    def deviation(self) -> float:
        return math.sqrt(self.variance)


class AimdLimit:
    """The adaptive limit; see the module docstring. Told of each answer with :meth:`record`."""

    def __init__(self, maximum: int, config: ConcurrencyConfig | None = None) -> None:
        if maximum < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.config = config or ConcurrencyConfig()
        self.maximum = maximum
        self.level = float(min(self.config.initial or maximum, maximum))  # limit: its floor
        self.baseline = Ewma(self.config.ewma_alpha)  # of the windows' mean RTTs
        self._next_window: float | None = None  # when the current window ends
        self._decreased_at = -math.inf
        self._hold_until = -math.inf  # no increase before this, after a decrease
        self.paced = False  # refusals were seen: PATCH starts are spaced (see interval)
        self._ceiling: float | None = None  # the level that last drew back pressure, and when
        self._pressed_at = -math.inf
        self._rtt_sum = 0.0
        self._rtt_count = 0
        self._answers = 0  # in this window, of PATCHes sent after the last decrease
        self._refused = 0  # of those, 429s and 503s: back pressure
        self._throttled = 0  # of those, 429s
        self._reached = False  # the window wanted more than the limit allowed
        self._recent: deque[bool] = deque(maxlen=RECENT_ANSWERS)  # refused or not
        self.why = ""  # what the last change was for
        self.throttled_at = -math.inf  # the last 429
        self.sharers = 1  # workers probing the same API (see share_with)

    @property
    def limit(self) -> int:
        if self.paced:  # the level's fraction is taken by spacing the starts
            return max(1, math.ceil(self.level))
        return max(1, int(self.level))

    @property
    def interval(self) -> float:
        """The least time between two PATCH starts: none until the API refused some; then one
        round trip (the baseline) shared out by the level, so a level of 2.5 sends 2.5 PATCHes
        per round trip, not 2 or 3: a tenant's request-rate limit is met at its rate."""
        if not self.paced or self.baseline.mean is None:
            return 0.0
        return self.baseline.mean / self.level

    def reached(self) -> None:
        """As many PATCHes were awaiting an answer as the limit allows: more might have fit."""
        self._reached = True

    def record(self, now: float, result: int | str, rtt: float) -> None:
        """One answer (an HTTP status, or "error"/"cancelled") and its round trip in seconds."""
        refused = result in BACK_PRESSURE
        if result == 429:
            self.throttled_at = now
        self._recent.append(refused)
        if now - rtt >= self._decreased_at:  # those sent before drew it, or echo it
            self._answers += 1
            self._refused += refused
            self._throttled += result == 429
        if isinstance(result, int) and 200 <= result < 300:
            self._rtt_sum += rtt
            self._rtt_count += 1
        if self._next_window is None:  # the first answer opens the first window
            if self._rtt_count:  # and its RTT is the first baseline
                self.baseline.update(rtt)
                self._rtt_sum, self._rtt_count = 0.0, 0
            self._next_window = now + (rtt if self.baseline.mean is not None else FIRST_WINDOW_S)
        elif now >= self._next_window:
            self._close_window(now)

    def _close_window(self, now: float) -> None:
        current = self._rtt_sum / self._rtt_count if self._rtt_count else None
        self._judge(now, current)
        if current is not None:
            self.baseline.update(current)
        window = self.baseline.mean if self.baseline.mean is not None else FIRST_WINDOW_S
        self._next_window = now + window
        self._rtt_sum, self._rtt_count = 0.0, 0
        self._answers = self._refused = self._throttled = 0
        self._reached = False

    def _judge(self, now: float, current: float | None) -> None:
        past = self.baseline.mean
        quick = slower = False
        if current is not None and past is not None:
            quick = current <= past
            slower = current > past + self.config.rtt_deviation_scale * self.baseline.deviation
        pressed = self._refused and sum(self._recent) > self.config.tolerated_refusals
        if pressed or (slower and self.limit > 1 and not self.paced):
            self.why = f"{self._refused} of {self._answers} refused" if pressed else "slower"
            # a 429 says "rate limit"; 503s alone (overload, or chance) start no pacing
            self.paced = self.paced or bool(pressed and self._throttled and self.config.pacing)
            self._decrease(now)
        elif (
            quick
            and not self._refused  # tolerated, but no reason to ask for more either
            and self._reached
            and self.limit < self.maximum
            and now >= self._hold_until
            and not self._capped(now)
        ):
            self.level = min(float(self.maximum), self.level + self._step())
            self.why = "quick"

    def share_with(self, workers: int) -> None:
        """``workers`` (this one included) deliver to the same API: paced, each probes upward
        by its share of ``paced_increase``, so that together they probe as one worker does
        (independent probes added up at the tenant's shared rate limit: three workers drew
        three times the 429s of one)."""
        self.sharers = max(1, workers)

    def _step(self) -> float:
        return self.config.paced_increase / self.sharers if self.paced else 1.0

    def _decrease(self, now: float) -> None:
        self._ceiling, self._pressed_at = self.level, now
        ratio = self.config.decrease_ratio
        if self._answers >= _SHARE_SAMPLE:  # enough answers to say how much fits: use it
            accepted = 1.0 - self._refused / self._answers
            ratio = max(self.config.min_decrease_ratio, min(ratio, accepted))
        floor = PACED_FLOOR if self.paced else 1.0
        if self.level > floor:
            self.level = max(floor, self.level * ratio)
            self._decreased_at = now
            self._hold_until = now + self.config.hold_after_decrease

    def _capped(self, now: float) -> bool:
        """One more step would reach the level that last drew back pressure (unpaced: its limit),
        not long enough ago."""
        if self._ceiling is None:
            return False
        if self.paced and self.level + self._step() < self._ceiling:
            return False
        if not self.paced and self.limit + 1 < int(self._ceiling):
            return False
        if now < self._pressed_at + self.config.probe_after:
            return True
        self._ceiling = None
        return False


class DeliverySlots:
    """The in-flight limit shared by the schedulers of one worker process (one per shard).

    A scheduler takes a slot before it starts a delivery (:meth:`try_take`) and gives it back when
    the delivery ends (:meth:`give`); one that found none registers its pump (:meth:`wait`), and
    pumps are called back in turn as slots free up or the limit grows. The dispatcher reports
    every PATCH (the :class:`~metricrelay.relay.dispatch.RequestObserver` protocol) for the
    adaptive limit to learn from; the limit counts as reached when the PATCHes awaiting an
    answer fill it (see the module docstring).
    """

    def __init__(
        self,
        maximum: int,
        config: ConcurrencyConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if maximum < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.config = config or ConcurrencyConfig()
        self.maximum = maximum
        self.aimd = AimdLimit(maximum, self.config) if self.config.adaptive else None
        self.clock = clock
        self.in_use = 0
        self.requests = 0  # PATCHes awaiting an answer (a delivery may be sleeping instead)
        self._pumps: dict[Callable[[], None], None] = {}  # an ordered set, first come first
        self.on_throttled: Callable[[], None] | None = None  # told of each 429 (refusals.py)
        self.peer_refusals = 0  # 429s answered to other workers, as told (refusals.py)
        self._next_start = -math.inf  # the earliest time the next PATCH may start (pacing)

    @property
    def limit(self) -> int:
        return self.maximum if self.aimd is None else self.aimd.limit

    @property
    def pace(self) -> float:
        """PATCH starts per second allowed while paced (the gauge's); 0.0 while not paced."""
        interval = 0.0 if self.aimd is None else self.aimd.interval
        return 1.0 / interval if interval > 0.0 else 0.0

    def try_take(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def give(self) -> None:
        if self.in_use < 1:
            raise RuntimeError("a delivery slot was given back that was never taken")
        self.in_use -= 1
        self._wake()

    def wait(self, pump: Callable[[], None]) -> None:
        """Call ``pump`` once a slot may be free (it tries again, and waits again if need be)."""
        self._pumps[pump] = None

    def share_with(self, workers: int) -> None:
        """How many worker processes deliver to the API now (:meth:`AimdLimit.share_with`)."""
        if self.aimd is not None:
            self.aimd.share_with(workers)

    def throttled(self) -> bool:
        """The API answered 429 in the last THROTTLED_S seconds (adaptive, with
        ``fill_while_throttled``): requests are scarcer than slots, so bodies should be full."""
        return (
            self.aimd is not None
            and self.config.fill_while_throttled
            and self.clock() - self.aimd.throttled_at < THROTTLED_S
        )

    def start_delay(self) -> float:
        """How long the PATCH about to be sent waits for its turn (0 while not paced); its start
        is booked, so PATCHes waiting together leave one interval apart, in the order asked."""
        aimd = self.aimd
        if aimd is None or (interval := aimd.interval) <= 0.0:
            return 0.0
        now = self.clock()
        start = max(now, self._next_start)
        self._next_start = start + interval
        if start > now:  # it must wait for its turn: more would have been sent
            aimd.reached()
        return start - now

    def request_started(self) -> None:
        self.requests += 1
        if self.aimd is not None and self.requests >= self.limit:
            self.aimd.reached()

    def peers_refused(self, count: int) -> None:
        """Other workers sharing the API got ``count`` 429s: back pressure here too, as if
        answered to a PATCH sent one round trip ago (so that the workers decrease together,
        as one flow, instead of each probing on until the limit refuses it too)."""
        self.peer_refusals += count
        aimd = self.aimd
        if aimd is None or aimd.baseline.mean is None:
            return
        now = self.clock()
        for _ in range(count):
            aimd.record(now, 429, aimd.baseline.mean)

    def request_finished(self, result: int | str, seconds: float) -> None:
        self.requests -= 1
        if result == 429 and self.on_throttled is not None:
            self.on_throttled()
        if self.aimd is None:
            return
        before = self.aimd.limit
        self.aimd.record(self.clock(), result, seconds)
        if self.aimd.limit != before:
            log.debug("delivery limit %d -> %d (%s)", before, self.aimd.limit, self.aimd.why)
        if self.aimd.limit > before:
            self._wake()

    def _wake(self) -> None:
        # A pump registers again only after failing to take a slot, i.e. when none is left.
        while self._pumps and self.in_use < self.limit:
            pump = next(iter(self._pumps))
            del self._pumps[pump]
            pump()
