"""The request budget: GCRA maths with an injected clock, then end to end at 3× the limit."""

from __future__ import annotations

import bisect
import random

import pytest

from gateway import budget
from gateway.budget import Budget, Grant, Refusal
from gateway.emulator import Emulator
from gateway.errors import RateLimited, UpstreamLockedOut
from gateway.stores.memory import MemoryBudgetStore
from tests.support import APP_ID, TOKENS, blast, start_gateway


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


class FakeTime:
    """A clock that only moves when someone sleeps (optionally oversleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.overshoot = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.overshoot


@pytest.mark.parametrize("limit", [1, 10, 200, 1000])
@pytest.mark.parametrize("jitter", [0.0, 0.01, 0.05])
def test_no_sliding_second_exceeds_the_limit_despite_late_arrivals(limit: int, jitter: float) -> None:
    """Slots booked at 3× the limit, each arriving up to `jitter` late: never more than `limit` per second."""
    rng = random.Random(limit)
    interval = budget.interval_for(limit, jitter)
    tat, now, arrivals = 0.0, 0.0, []
    for _ in range(limit * 30):
        now += rng.expovariate(3 * limit)
        tat, decision = budget.reserve(tat, now, interval, max_wait=float("inf"))
        assert isinstance(decision, Grant)
        arrivals.append(now + decision.wait + rng.uniform(0, jitter))
    assert busiest_second(arrivals) <= limit
    # ... while using nearly all of it: the last 10 s of arrivals run at the paced rate.
    assert busiest_second(arrivals) >= limit * 0.95 - 1


def test_exact_slot_spacing_would_overrun_with_late_arrivals() -> None:
    """Why the margin: spacing slots at exactly 1/limit lets one late arrival make limit+1 in a second."""
    arrivals = [k / 200 for k in range(400)]
    arrivals[0] += 0.005  # one call 5 ms late
    assert busiest_second(arrivals) == 201
    spaced = [k * budget.interval_for(200, 0.01) for k in range(400)]
    spaced[0] += 0.005
    assert busiest_second(spaced) <= 200


def test_a_refusal_books_nothing() -> None:
    """Past the wait cap the call is refused and the schedule is unchanged."""
    tat, decision = budget.reserve(tat=10.0, now=5.0, interval=0.1, max_wait=2.0)
    assert decision == Refusal(retry_after=3.0)
    assert tat == 10.0
    tat, decision = budget.reserve(tat=10.0, now=8.5, interval=0.1, max_wait=2.0)
    assert decision == Grant(wait=1.5)
    assert tat == pytest.approx(10.1)


def test_defer_pushes_the_schedule() -> None:
    """After "too frequent" no slot is granted before now + pause, and never earlier than booked."""
    assert budget.defer(tat=3.0, now=5.0, pause=1.0) == 6.0
    assert budget.defer(tat=9.0, now=5.0, pause=1.0) == 9.0


async def test_acquire_paces_and_refuses_past_the_cap() -> None:
    """Callers wait their turn; one that would wait past the cap gets RateLimited with Retry-After."""
    t = FakeTime()
    paced = Budget(local=MemoryBudgetStore(clock=t.clock), jitter=0.0, clock=t.clock, sleep=t.sleep)
    waits = [await paced.acquire("app", "api", qps=2, max_wait=10) for _ in range(3)]
    interval = budget.interval_for(2, 0.0)
    assert waits == pytest.approx([0.0, interval, interval])
    t.now -= 2 * interval  # three callers at once: the next would wait 3 intervals
    with pytest.raises(RateLimited) as refused:
        await paced.acquire("app", "api", qps=2, max_wait=0.5)
    assert refused.value.retry_after is not None
    assert refused.value.retry_after >= 1


async def test_a_caller_woken_late_books_a_new_slot() -> None:
    """Oversleeping past a quarter of the jitter forfeits the slot rather than crowd the next second."""
    t = FakeTime()
    store = MemoryBudgetStore(clock=t.clock)
    paced = Budget(local=store, jitter=0.02, clock=t.clock, sleep=t.sleep)
    await paced.acquire("app", "api", qps=100, max_wait=10)
    t.overshoot = 0.02
    await paced.acquire("app", "api", qps=100, max_wait=10)  # sleeps, wakes 20 ms late, books again
    interval = budget.interval_for(100, 0.02)
    # slot 1 at 1000, slot 2 at 1000+I forfeited (woken at 1000+I+0.02), re-booked right then
    assert store._tat[("app", "api")] == pytest.approx(1000.0 + interval + 0.02 + interval)


async def test_a_paused_tenant_gets_no_slot() -> None:
    """While a tenant is paused (70050) every acquire fails at once with the time left."""
    t = FakeTime()
    paced = Budget(local=MemoryBudgetStore(clock=t.clock), jitter=0.01, clock=t.clock, sleep=t.sleep)
    await paced.pause("app", 60.0, 70050, "locked out")
    with pytest.raises(UpstreamLockedOut) as paused:
        await paced.acquire("app", "any-api", qps=200, max_wait=10)
    assert paused.value.retry_after == 60.0
    t.now += 60.0
    assert await paced.acquire("app", "any-api", qps=200, max_wait=10) == 0.0


async def test_gateway_never_exceeds_200_per_second_under_600_offered(upstream_url: str, emulator: Emulator) -> None:
    """600 writes/s for 3 s through one gateway: Tencent never sees more than 200 in a sliding
    second, never answers 60007, and the budget is used; the excess waits, then gets 429."""
    async with start_gateway(upstream_url, budget_max_wait=1.0) as gateway:
        paths = ["/v1/tenants/acme/rooms/room-1"] * 1800
        statuses = await blast(
            gateway.url, paths, token=TOKENS["rw"], method="PATCH", json={"activity_status": 1}, spacing=1 / 600
        )
    key = f"{APP_ID}:update_room_info"
    assert emulator.busiest_second(key) <= 200
    assert emulator.busiest_second(key) >= 190
    assert emulator.codes[60007] == 0
    assert set(statuses) <= {204, 429}
    assert statuses.count(204) == emulator.calls["update_room_info"]
    assert statuses.count(429) > 0


def test_clock_sync_trusts_the_quickest_round_trip() -> None:
    """The offset comes from the round trip with the least slack, so a slow reply can't skew it."""
    sync = budget.ClockSync(window=10.0)
    # Remote clock = ours + 500 s. A quick round trip (1 ms) and then a slow one whose
    # decision happened right at the start of a 40 ms round trip.
    sync.sample(sent=100.000, received=100.001, remote=600.0005)
    sync.sample(sent=101.000, received=101.040, remote=601.000)
    assert sync.local(600.0005) == pytest.approx(100.0005, abs=1e-6)
    # Past the window even a worse sample replaces a stale best (clocks may step).
    sync.sample(sent=112.000, received=112.004, remote=612.002)
    assert sync.local(612.002) == pytest.approx(112.002, abs=1e-6)
