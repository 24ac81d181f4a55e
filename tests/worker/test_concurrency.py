"""The adaptive limit (AIMD, as Vector's ARC) and the delivery slots, on an injected clock."""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from metricrelay.relay.concurrency import (
    PACED_FLOOR,
    AimdLimit,
    ConcurrencyConfig,
    DeliverySlots,
    Ewma,
)

RTT = 0.125  # exact in binary: window means of equal samples equal the baseline exactly


def window(
    aimd: AimdLimit, start: float, results: list[int | str], rtt: float = RTT, last: float = RTT
) -> float:
    """Answers (with round trips of ``rtt``) spread over one window, demand at the limit, then a
    204 taking ``last`` that closes it; returns the time of that last answer."""
    now = start
    for result in results:
        aimd.reached()
        aimd.record(now, result, rtt)
        now += RTT / (len(results) + 1)
    now = max(now, start + (aimd.baseline.mean or RTT)) + 1e-6
    aimd.record(now, 204, last)
    return now


def settled(config: ConcurrencyConfig | None = None, maximum: int = 16) -> tuple[AimdLimit, float]:
    """A limit whose first answer set the baseline to RTT and opened the first window."""
    aimd = AimdLimit(maximum, config)
    aimd.record(0.0, 204, RTT)
    assert aimd.baseline.mean == RTT
    return aimd, 0.0


def test_the_limit_starts_at_the_maximum_or_the_initial_value_within_it() -> None:
    assert AimdLimit(16).limit == 16  # where the fixed limit was
    assert AimdLimit(16, ConcurrencyConfig(initial=4)).limit == 4
    assert AimdLimit(3, ConcurrencyConfig(initial=8)).limit == 3
    with pytest.raises(ValueError, match="at least 1"):
        AimdLimit(0)


def test_quick_successful_windows_at_the_limit_add_one_each() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=1))
    limits = []
    for _ in range(5):
        now = window(aimd, now, [204, 204])
        limits.append(aimd.limit)
    assert limits == [2, 3, 4, 5, 6]


def test_no_increase_without_demand_at_the_limit() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=1))
    for _ in range(5):
        now += RTT + 1e-6
        aimd.record(now, 204, RTT)  # nobody asked for more than the limit
    assert aimd.limit == 1


def test_the_limit_never_exceeds_the_maximum() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=1), maximum=3)
    for _ in range(10):
        now = window(aimd, now, [204])
    assert aimd.limit == 3


# Unpaced (``pacing=False``) below: the in-flight AIMD on whole limits; pacing has its own tests.
@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([204] * 18 + [429] * 2, 9),  # two refused in 22 answers: the gentle x0.9
        ([204] * 4 + [429] * 5, 5),  # 6 of 11 accepted: x0.55
        ([429] * 9, 5),  # 2 of 11 accepted: x0.5, the strongest
        ([204] * 5 + [429, 503, 503], 7),  # 503 is back pressure too: 7 of 10 accepted
        ([429, 429], 9),  # too few answers to judge the share by: x0.9
    ],
)
def test_back_pressure_decreases_by_the_share_accepted(answers: list[int], expected: int) -> None:
    aimd, now = settled(ConcurrencyConfig(initial=10, pacing=False))
    window(aimd, now, answers)
    assert aimd.limit == expected


@pytest.mark.parametrize(
    ("initial", "answers", "expected"),
    [
        (15, [204] * 18 + [429] * 2, 13),  # x0.9 of the level, the limit its floor
        (2, [204] * 18 + [429] * 2, 1),
        (3, [429] * 9, 1),
        (1, [429] * 9, 1),  # never below one
    ],
)
def test_decreases_round_down_and_never_below_one(
    initial: int, answers: list[int], expected: int
) -> None:
    aimd, now = settled(ConcurrencyConfig(initial=initial, pacing=False))
    window(aimd, now, answers)
    assert aimd.limit == expected


def test_a_lone_refusal_decreases_nothing_but_stops_the_increase() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=4, pacing=False))
    now = window(aimd, now, [204, 503, 204])  # a 503 by chance, or a 429 at the bucket's edge
    assert aimd.limit == 4
    for _ in range(25):  # twenty quick answers later it is forgotten: +1 a window again
        now = window(aimd, now, [204])
    assert aimd.limit > 4
    limit = aimd.limit
    now = window(aimd, now, [429, 204])  # one alone again: tolerated
    assert aimd.limit == limit
    now = window(aimd, now, [429, 204])  # a second among the last twenty: back pressure
    assert aimd.limit == math.floor(limit * 0.9)


def test_only_back_pressure_on_patches_sent_after_a_decrease_counts() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=10, pacing=False))
    now = window(aimd, now, [429] * 9)
    assert aimd.limit == 5
    decreased = now
    # the 429s of PATCHes sent before the decrease arrive in the next window: no second one
    now = window(aimd, now, [429, 429, 429], rtt=now - decreased + 1.0)
    assert aimd.limit == 5
    now = window(aimd, now, [204] * 9 + [429])  # a PATCH sent since: back pressure again
    assert aimd.limit == 4


def test_after_a_decrease_it_holds_climbs_below_the_level_that_drew_it_then_probes() -> None:
    config = ConcurrencyConfig(initial=10, hold_after_decrease=1.0, probe_after=3.0, pacing=False)
    aimd, now = settled(config)
    now = window(aimd, now, [429] * 9)
    assert aimd.limit == 5
    pressed = now
    while now < pressed + 1.0 - RTT:  # the hold: quick answers do not make it grow
        now = window(aimd, now, [204])
        assert aimd.limit == 5
    limits = []
    now = pressed + 1.0
    while now < pressed + 3.0 - RTT:
        now = window(aimd, now, [204])
        limits.append(aimd.limit)
    assert limits[:4] == [6, 7, 8, 9] and set(limits[4:]) == {9}  # not 10: that drew the 429s
    now = window(aimd, pressed + 3.0, [204])
    assert aimd.limit == 10  # quiet long enough: probe again
    now = window(aimd, now, [204])
    assert aimd.limit == 11


def test_other_answers_are_neither_samples_nor_back_pressure() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=4))
    now = window(aimd, now, [400, 413, 500, "error", "cancelled"], rtt=5.0)
    assert aimd.limit == 5  # the closing 204 was the window's only sample: quick, so +1
    assert aimd.baseline.mean == RTT


def test_rising_latency_decreases_the_limit() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=8, hold_after_decrease=0.0))
    for _ in range(4):  # a baseline with some spread, and a limit of 12 by now
        now = window(aimd, now, [], last=RTT * 1.25)
        now = window(aimd, now, [], last=RTT * 0.75)
    aimd.reached()
    limit, mean, deviation = aimd.limit, aimd.baseline.mean, aimd.baseline.deviation
    assert mean is not None and deviation > 0
    now = window(aimd, now, [], last=mean + 2.0 * deviation)  # within 2.5 deviations: no change
    assert aimd.limit == limit
    now = window(aimd, now, [], last=3 * mean)  # clearly slower than usual: too much in flight
    assert aimd.limit == math.floor(limit * 0.9)


def test_rising_latency_with_one_in_flight_sets_no_ceiling() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=1, hold_after_decrease=0.0))
    now = window(aimd, now, [], last=10 * RTT)  # slower, but one in flight cannot be fewer
    assert aimd.limit == 1
    now = window(aimd, now, [204])
    assert aimd.limit == 2


def test_answers_slower_than_the_baseline_but_within_its_spread_change_nothing() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=4))
    for _ in range(3):  # a baseline with some spread
        now = window(aimd, now, [], last=RTT * 1.25)
        now = window(aimd, now, [], last=RTT * 0.75)
    limit, mean = aimd.limit, aimd.baseline.mean
    assert mean is not None
    now = window(aimd, now, [204], rtt=mean * 1.1, last=mean * 1.1)
    assert aimd.limit == limit


def test_ewma_mean_and_variance() -> None:
    ewma = Ewma(0.5)
    assert ewma.mean is None and ewma.deviation == 0.0
    for value in (1.0, 3.0, 3.0):
        ewma.update(value)
    # mean: 1 → 2 → 2.5; variance: 0 → 0.5*(0 + 2*1) = 1 → 0.5*(1 + 1*0.5) = 0.75
    assert ewma.mean == pytest.approx(2.5)
    assert ewma.variance == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial": 0}, "initial"),
        ({"decrease_ratio": 1.0}, "decrease_ratio"),
        ({"min_decrease_ratio": 0.0}, "min_decrease_ratio"),
        ({"min_decrease_ratio": 0.95}, "min_decrease_ratio"),
        ({"ewma_alpha": 0.0}, "ewma_alpha"),
        ({"rtt_deviation_scale": -1.0}, "rtt_deviation_scale"),
        ({"hold_after_decrease": -1.0}, "hold_after_decrease"),
        ({"probe_after": -1.0}, "probe_after"),
        ({"tolerated_refusals": -1}, "tolerated_refusals"),
        ({"tolerated_refusals": 20}, "tolerated_refusals"),
        ({"fill_wait": -1.0}, "fill_wait"),
    ],
)
def test_config_is_checked(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConcurrencyConfig(**options)  # type: ignore[arg-type]


# --- the slots ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fixed_slots_are_the_maximum() -> None:
    slots = DeliverySlots(2, ConcurrencyConfig(adaptive=False))
    assert slots.aimd is None and slots.limit == 2
    assert slots.try_take() and slots.try_take() and not slots.try_take()
    slots.request_started()
    slots.request_finished(429, 0.1)  # no effect without the adaptive limit
    assert slots.limit == 2


def test_pumps_are_called_back_in_turn_as_slots_free_up() -> None:
    slots = DeliverySlots(1, ConcurrencyConfig(adaptive=False))
    calls: list[str] = []

    def pump(name: str) -> Callable[[], None]:
        def again() -> None:
            calls.append(name)
            if not slots.try_take():
                slots.wait(pumps[name])

        return again

    pumps = {name: pump(name) for name in ("a", "b")}
    assert slots.try_take()
    for name in ("a", "b", "a"):  # registering twice keeps the first place
        pumps[name]()
    calls.clear()
    slots.give()  # "a" takes it; "b" tries and waits again
    assert calls == ["a"] and slots.in_use == 1
    slots.give()
    assert calls == ["a", "b"]
    with pytest.raises(RuntimeError, match="never taken"):
        DeliverySlots(1).give()


def test_a_growing_limit_wakes_waiting_pumps() -> None:
    clock = Clock()
    slots = DeliverySlots(4, ConcurrencyConfig(initial=1), clock=clock)
    woken: list[int] = []

    def pump() -> None:
        while slots.try_take():
            woken.append(slots.in_use)
        slots.wait(pump)

    pump()
    assert slots.in_use == 1 and woken == [1]
    slots.request_started()
    slots.request_finished(204, RTT)  # the first answer: the baseline, and the first window
    slots.request_started()  # the one PATCH fills the limit: demand reached it
    clock.now = RTT + 1e-6
    slots.request_finished(204, RTT)  # closes the window: quick, at the limit → 2
    assert slots.limit == 2 and woken == [1, 2]


def test_deliveries_sleeping_before_a_retry_do_not_make_the_limit_grow() -> None:
    clock = Clock()
    slots = DeliverySlots(8, ConcurrencyConfig(initial=2), clock=clock)
    assert slots.try_take() and slots.try_take()  # two deliveries, one of them sleeping
    for step in range(5):
        slots.request_started()  # one PATCH on the wire: below the limit of 2
        clock.now = step * (RTT + 1e-6)
        slots.request_finished(204, RTT)
    assert slots.limit == 2


# --- against a rate-limited API -------------------------------------------------------------


@dataclass
class RateLimitedApi:
    """A discrete-event model of the remote API of WORKLOADS.md: uniform 50-200 ms latency, a
    token bucket of ``rate`` requests/s (burst ``rate``) for the whole tenant, 429 beyond it;
    every body it refused retries after max(full-jitter backoff, Retry-After 1 s), keeping its
    slot, as the dispatcher does. Bodies are always waiting (a backlog)."""

    rate: float = 20.0
    seed: int = 7
    share_refusals: bool = False  # each 429 is told to the other workers (refusals.py)
    now: float = 0.0
    events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    answers: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.tokens = self.rate
        self.refilled = 0.0
        self._seq = 0
        self.workers: list[DeliverySlots] = []

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self.events, (when, self._seq, action))

    def admit(self) -> bool:
        self.tokens = min(self.rate, self.tokens + (self.now - self.refilled) * self.rate)
        self.refilled = self.now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def worker(self, config: ConcurrencyConfig) -> DeliverySlots:
        slots = DeliverySlots(16, config, clock=lambda: self.now)
        self.workers.append(slots)

        def pump() -> None:
            while slots.try_take():
                self.send(slots, 1)
            slots.wait(pump)

        self.at(0.0, pump)
        return slots

    def send(self, slots: DeliverySlots, attempt: int) -> None:
        delay = slots.start_delay()  # the dispatcher waits for its turn before each PATCH
        if delay > 0:
            self.at(self.now + delay, lambda: self._sent(slots, attempt))
        else:
            self._sent(slots, attempt)

    def _sent(self, slots: DeliverySlots, attempt: int) -> None:
        sent = self.now
        slots.request_started()

        def answer() -> None:
            status = 204 if self.admit() else 429
            self.answers.append((self.now, status))
            slots.request_finished(status, self.now - sent)
            if status == 429 and self.share_refusals:
                for other in self.workers:
                    if other is not slots:
                        other.peers_refused(1)
            if status == 204:
                slots.give()
                return
            backoff = self.rng.uniform(0, min(30.0, 0.5 * 2 ** (attempt - 1)))
            self.at(self.now + max(backoff, 1.0), lambda: self.send(slots, attempt + 1))

        self.at(sent + self.rng.uniform(0.05, 0.2), answer)

    def run(self, seconds: float) -> None:
        while self.events and self.events[0][0] <= seconds:
            self.now, _, action = heapq.heappop(self.events)
            action()

    def after(self, start: float, seconds: float) -> tuple[float, float]:
        """Accepted requests per second and the share of 429s, from ``start`` on."""
        statuses = [status for at, status in self.answers if at >= start]
        accepted = statuses.count(204)
        return accepted / (seconds - start), statuses.count(429) / len(statuses)


def _hold(workers: int, config: ConcurrencyConfig) -> tuple[float, float]:
    """Median accepted requests/s and share of 429s (seconds 10-60, seeds 1-3)."""
    results = []
    for seed in (1, 2, 3):
        api = RateLimitedApi(seed=seed)
        for _ in range(workers):
            api.worker(config)
        api.run(60.0)
        results.append(api.after(10.0, 60.0))
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_find_and_hold_the_rate_limit_without_a_429_storm(workers: int) -> None:
    api = RateLimitedApi()
    rate, throttled = _hold(workers, ConcurrencyConfig())
    assert rate >= 0.97 * api.rate  # at the limit...
    assert throttled <= 0.12  # ...with 429s a small share of the requests
    if workers == 1:  # whole in-flight steps alone fall short of the limit (three workers do not)
        unpaced, _ = _hold(workers, ConcurrencyConfig(pacing=False))
        assert rate >= unpaced + 0.5
    fixed = RateLimitedApi(seed=1)
    for _ in range(workers):
        fixed.worker(ConcurrencyConfig(adaptive=False))
    fixed.run(60.0)
    assert fixed.after(10.0, 60.0)[1] > 3 * throttled  # what a fixed 16 in flight draws


def test_workers_told_they_share_the_api_probe_as_one_and_draw_fewer_429s() -> None:
    def hold(told: int) -> tuple[float, float]:
        results = []
        for seed in range(1, 9):
            api = RateLimitedApi(seed=seed)
            for slots in [api.worker(ConcurrencyConfig()) for _ in range(3)]:
                slots.share_with(told)
            api.run(120.0)
            results.append(api.after(10.0, 120.0))
        return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)

    rate, throttled = hold(3)
    _, alone_throttled = hold(1)  # each probing as if alone: three times the probes
    assert rate >= 0.97 * RateLimitedApi().rate
    assert throttled < 0.85 * alone_throttled


def test_workers_told_of_each_others_429s_back_off_together_and_draw_few() -> None:
    def hold(workers: int, share_refusals: bool) -> tuple[float, float]:
        results = []
        for seed in range(1, 9):
            api = RateLimitedApi(seed=seed, share_refusals=share_refusals)
            for slots in [api.worker(ConcurrencyConfig()) for _ in range(workers)]:
                slots.share_with(workers)
            api.run(120.0)
            results.append(api.after(10.0, 120.0))
        return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)

    alone_rate, alone = hold(1, share_refusals=True)
    for workers in (3, 5):
        rate, throttled = hold(workers, share_refusals=True)
        _, unshared = hold(workers, share_refusals=False)
        assert rate >= 0.97 * alone_rate
        assert throttled < 0.5 * unshared  # 6.5 -> 2.5 % (3 workers), 8.3 -> 2.0 % (5)
        assert throttled <= alone  # as one flow: no more than a single worker draws


def test_a_shared_paced_step_is_the_workers_share_and_an_unpaced_one_stays_one() -> None:
    config = ConcurrencyConfig(hold_after_decrease=0.0, probe_after=0.0)
    aimd, now = pressed(config)
    aimd.share_with(4)
    level = aimd.level
    now = window(aimd, now, [204] * 3)
    assert aimd.level == pytest.approx(level + config.paced_increase / 4)
    aimd.share_with(0)  # never fewer than itself
    assert aimd.sharers == 1
    unpaced, now = settled(ConcurrencyConfig(initial=1))
    unpaced.share_with(4)
    window(unpaced, now, [204, 204])
    assert unpaced.limit == 2  # whole steps, as before: no rate limit seen yet


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_from_the_maximum_the_limit_comes_down_within_a_few_seconds(seed: int) -> None:
    api = RateLimitedApi(seed=seed)
    slots = api.worker(ConcurrencyConfig())
    assert slots.limit == 16  # where the fixed limit was
    api.run(6.0)
    assert slots.limit <= 8  # 20 requests/s at ~125 ms want ~3 in flight


# --- pacing: a request-rate limit met at its rate -----------------------------------------------


def pressed(config: ConcurrencyConfig | None = None) -> tuple[AimdLimit, float]:
    """A settled limit whose window drew back pressure (4 of 9 answers refused)."""
    aimd, now = settled(config)
    now = window(aimd, now, [429] * 4 + [204] * 4)
    return aimd, now


def test_no_pacing_until_the_api_refuses_not_even_when_slower() -> None:
    aimd, now = settled(ConcurrencyConfig(initial=8))
    now = window(aimd, now, [204] * 3, rtt=8 * RTT)
    assert aimd.limit < 8 and aimd.why == "slower"
    assert not aimd.paced and aimd.interval == 0.0


def test_after_refusals_starts_are_one_round_trip_shared_out_by_the_level() -> None:
    aimd, _ = pressed()
    assert aimd.paced
    assert aimd.interval == pytest.approx(aimd.baseline.mean / aimd.level)
    unpaced, _ = pressed(ConcurrencyConfig(pacing=False))
    assert not unpaced.paced and unpaced.interval == 0.0
    assert unpaced.level == aimd.level  # the same decrease; only the spacing differs


def test_paced_the_limit_is_the_levels_ceiling_and_the_steps_are_small() -> None:
    config = ConcurrencyConfig(hold_after_decrease=0.0, probe_after=0.0)
    aimd, now = pressed(config)
    level = aimd.level
    assert level % 1 and aimd.limit == math.ceil(level)  # its fraction is taken by spacing
    now = window(aimd, now, [204] * 3)
    assert aimd.level == pytest.approx(level + config.paced_increase)
    assert aimd.interval == pytest.approx(aimd.baseline.mean / aimd.level)


def test_503s_alone_start_no_pacing() -> None:
    aimd, now = settled()
    now = window(aimd, now, [503] * 4 + [204] * 4)
    assert aimd.level < 16 and not aimd.paced  # back pressure, but no sign of a rate limit


def test_paced_slower_answers_decrease_nothing_refusals_still_do() -> None:
    aimd, now = pressed()
    level = aimd.level
    now = window(aimd, now + 2.0, [204] * 3, rtt=8 * RTT)  # well past the hold
    assert aimd.level == level  # a rate-limited API's latency is no signal of its rate
    now = window(aimd, now, [429] * 4 + [204] * 4)
    assert aimd.level < level


def test_paced_the_level_may_fall_below_one_so_many_workers_share_a_small_limit() -> None:
    aimd, now = pressed()
    for _ in range(80):  # x0.9 a window (each opens with a lone 429 closing the last)
        now = window(aimd, now + 2.0, [429] * 8)
    assert aimd.level == pytest.approx(PACED_FLOOR)
    assert aimd.limit == 1 and aimd.interval == pytest.approx(aimd.baseline.mean / PACED_FLOOR)


def test_paced_slots_book_starts_one_interval_apart_and_waiting_counts_as_demand() -> None:
    clock = [0.0]
    slots = DeliverySlots(16, clock=lambda: clock[0])
    assert slots.start_delay() == 0.0  # not paced: no wait, no booking
    assert slots.aimd is not None
    clock[0] = pressed_into(slots.aimd)
    interval = slots.aimd.interval
    assert [slots.start_delay() for _ in range(3)] == pytest.approx([0.0, interval, 2 * interval])
    clock[0] += 3 * interval + 1e-9  # the booked turns have passed
    assert slots.start_delay() == 0.0


def test_the_pace_is_starts_per_second_once_paced_and_zero_before() -> None:
    clock = [0.0]
    slots = DeliverySlots(16, clock=lambda: clock[0])
    assert slots.pace == 0.0
    assert slots.aimd is not None
    clock[0] = pressed_into(slots.aimd)
    assert slots.pace == pytest.approx(slots.aimd.level / slots.aimd.baseline.mean)
    assert DeliverySlots(4, ConcurrencyConfig(adaptive=False)).pace == 0.0


def pressed_into(aimd: AimdLimit) -> float:
    """Drive a fresh ``aimd`` as :func:`pressed` does; the time of its last answer."""
    aimd.record(0.0, 204, RTT)
    return window(aimd, 0.0, [429] * 4 + [204] * 4)


def test_paced_a_start_that_waited_for_its_turn_is_demand_enough_to_grow() -> None:
    """Paced, PATCHes in flight seldom fill the limit (their starts are spaced); a PATCH that
    had to wait for its turn says more would have been sent."""
    clock = [0.0]
    config = ConcurrencyConfig(hold_after_decrease=0.0, probe_after=0.0)
    slots = DeliverySlots(16, config, clock=lambda: clock[0])
    assert slots.aimd is not None
    clock[0] = pressed_into(slots.aimd)
    level = slots.aimd.level

    def one_window(waited: bool) -> None:
        clock[0] += 1.0  # past every booked turn
        assert slots.start_delay() == 0.0
        if waited:
            assert slots.start_delay() > 0.0  # a second PATCH at once waits for its turn
        slots.request_started()  # one in flight: far from the limit
        clock[0] += RTT
        slots.request_finished(204, RTT)  # closes the window, quick

    one_window(waited=False)
    assert slots.aimd.level == level  # no demand beyond the pace: no growth
    one_window(waited=True)
    assert slots.aimd.level == pytest.approx(level + config.paced_increase)
