"""The request budget: GCRA maths with an injected clock, then end to end at 3× the limit."""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import budget
from gateway.budget import FORGET_AFTER, HORIZON, Booking, EmbeddedBudget, Fleet, Grant, Paused, Refusal, Share, Slot
from gateway.budget import schedule as sched
from gateway.budget.clock import ClockSync
from gateway.budget.dispatch import Dispatcher, Moved
from gateway.budget.modes import Answered, FleetBudget, Mode
from gateway.budget.schedule import interval_for
from gateway.health import Breaker, StoreUnavailable
from gateway.settings import Settings
from gateway.stores.memory import MemoryBudgetStore
from gateway.transport import OnTime, PooledTransport, Proxy, Reply
from live_engine_emulator import Emulator
from tests.fleet import emulator_process, emulator_stats
from tests.support import APP_ID, TOKENS, Call, ScriptedTencent, blast, start_gateway


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


ME = Share("checkout")


class FakeTime:
    """A clock that only moves when someone sleeps (optionally oversleeping, or ``gated``)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.overshoot = 0.0
        self.gate: asyncio.Event | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.overshoot
        if self.gate is not None:
            await self.gate.wait()

    def gated(self) -> asyncio.Event:
        """From now on the clock moves as sleepers sleep, but they wake when the event is set."""
        self.gate = asyncio.Event()
        return self.gate


@pytest.mark.parametrize("limit", [1, 10, 200, 1000])
@pytest.mark.parametrize("jitter", [0.0, 0.01, 0.05])
def test_no_sliding_second_exceeds_the_limit_despite_late_arrivals(limit: int, jitter: float) -> None:
    """Slots booked at 3× the limit, each arriving up to `jitter` late: never more than `limit` per second."""
    rng = random.Random(limit)
    interval = budget.interval_for(limit, jitter)
    tat, now, arrivals = 0.0, 0.0, []
    for _ in range(limit * 30):
        now += rng.expovariate(3 * limit)
        tat, decision = sched.reserve(tat, now, interval, max_wait=float("inf"))
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
    tat, decision = sched.reserve(tat=10.0, now=5.0, interval=0.1, max_wait=2.0)
    assert decision == Refusal(retry_after=3.0)
    assert tat == 10.0
    tat, decision = sched.reserve(tat=10.0, now=8.5, interval=0.1, max_wait=2.0)
    assert decision == Grant(wait=1.5, booking=Booking(start=10.0, end=10.1))
    assert tat == pytest.approx(10.1)


def test_an_unused_slot_handed_back_is_undone_while_nobody_booked_after_it() -> None:
    """A call that could not leave in time hands its slot back: while the TAT is still where
    its booking left it, the schedule goes back to that slot (the next booking is now, not an
    interval later); once anybody booked after it, the handed-back slot changes nothing."""
    tat, first = sched.reserve(tat=0.0, now=10.0, interval=1.0, max_wait=0.0)
    assert isinstance(first, Grant)
    assert first.booking == Booking(start=10.0, end=11.0)
    assert tat == 11.0
    tat, again = sched.reserve(tat, now=10.02, interval=1.0, max_wait=0.0, unbook=first.booking)
    assert again == Grant(wait=0.0, booking=Booking(start=10.02, end=11.02))
    # Somebody booked after the slot: handing it back must not free a slot under theirs.
    tat, mine = sched.reserve(tat=0.0, now=20.0, interval=1.0, max_wait=5.0)
    tat, theirs = sched.reserve(tat, now=20.0, interval=1.0, max_wait=5.0)
    assert isinstance(mine, Grant)
    assert isinstance(theirs, Grant)
    tat, rebooked = sched.reserve(tat, now=20.02, interval=1.0, max_wait=5.0, unbook=mine.booking)
    assert rebooked == Grant(wait=pytest.approx(1.98), booking=Booking(start=22.0, end=23.0))


def embedded(t: FakeTime, jitter: float) -> EmbeddedBudget:
    return EmbeddedBudget(store=MemoryBudgetStore(clock=t.clock), jitter=jitter, clock=t.clock, sleep=t.sleep)


async def slot(paced: EmbeddedBudget | FleetBudget, qps: int, max_wait: float, forfeit: Slot | None = None) -> Slot:
    """A slot for ME on ("app", "api"), which the test expects to be granted."""
    got = await paced.acquire("app", "api", qps=qps, max_wait=max_wait, share=ME, forfeit=forfeit)
    assert isinstance(got, Slot), got
    return got


async def test_a_late_call_on_a_quiet_schedule_books_again_at_once() -> None:
    """At 1 call/s and no wait allowed, a call whose first slot passed (a slow connect) still
    goes: handed back, its slot is free again. Only the schedule that booked it takes it back."""
    t = FakeTime()
    paced = embedded(t, 0.017)
    first = await slot(paced, qps=1, max_wait=0.0)
    t.now += 0.03  # the connect took 30 ms: past send_by
    assert t.now > first.send_by
    again = await slot(paced, qps=1, max_wait=0.0, forfeit=first)
    assert again.waited == 0.0
    assert again.send_by == pytest.approx(t.now + 0.017 / 3)
    refused = await paced.acquire("app", "api", qps=1, max_wait=0.0, share=ME)
    assert isinstance(refused, Refusal), "the slot is taken now: the next caller waits a second"
    other = again._replace(shared=True)  # a slot of the shared schedule means nothing to this one
    t.now += 0.03
    assert isinstance(await paced.acquire("app", "api", qps=1, max_wait=0.0, share=ME, forfeit=other), Refusal)


def test_defer_pushes_the_schedule() -> None:
    """After "too frequent" no slot is granted before now + pause, and never earlier than booked."""
    assert sched.defer(tat=3.0, now=5.0, pause=1.0) == 6.0
    assert sched.defer(tat=9.0, now=5.0, pause=1.0) == 9.0


async def test_acquire_paces_and_refuses_past_the_cap() -> None:
    """Callers wait their turn; one that would wait past the cap is refused at once, booking nothing."""
    t = FakeTime()
    paced = embedded(t, 0.0)
    waits = [(await slot(paced, qps=2, max_wait=10)).waited for _ in range(3)]
    interval = budget.interval_for(2, 0.0)
    assert waits == pytest.approx([0.0, interval, interval])
    t.now -= 2 * interval  # three callers at once: the next would wait 3 intervals
    began = t.now
    refused = await paced.acquire("app", "api", qps=2, max_wait=0.5, share=ME)
    assert isinstance(refused, Refusal)
    assert refused.retry_after > 0
    assert t.now == began, "refused at once: the store said no slot could come within the cap"
    assert (await slot(paced, qps=2, max_wait=10)).waited == pytest.approx(3 * interval), "it booked nothing"


async def test_a_slot_says_when_its_call_must_leave() -> None:
    """A slot's send window is a third of the jitter; a caller woken late keeps the slot's own
    deadline (the send-time check then refuses it, see test_a_call_that_cannot_leave_in_time...)."""
    t = FakeTime()
    paced = embedded(t, 0.015)
    first = await slot(paced, qps=100, max_wait=10)
    assert first.send_by == pytest.approx(1000.0 + 0.005)
    t.overshoot = 0.02
    late = await slot(paced, qps=100, max_wait=10)  # sleeps, wakes 20 ms late
    interval = budget.interval_for(100, 0.015)
    assert late.send_by == pytest.approx(1000.0 + interval + 0.005)
    assert t.now > late.send_by


async def test_a_sleep_that_ends_early_still_holds_the_slot_until_its_moment() -> None:
    """A sleep that ends before its time (uvloop rounds timers to the millisecond) is slept
    again: a caller never holds its slot, and so never sends, before the slot's moment."""
    t = FakeTime()

    async def early(seconds: float) -> None:  # uvloop's: whole milliseconds, a loop turn (0.1 ms) at least
        await t.sleep(max(round(seconds * 1000) / 1000 - 0.001, 0.0001))

    paced = EmbeddedBudget(store=MemoryBudgetStore(clock=t.clock), jitter=0.015, clock=t.clock, sleep=early)
    await slot(paced, qps=10, max_wait=10)
    second = await slot(paced, qps=10, max_wait=10)
    assert t.now >= 1000.0 + budget.interval_for(10, 0.015)
    assert second.waited >= budget.interval_for(10, 0.015)


def test_the_spacing_is_the_best_any_schedule_can_do() -> None:
    """(1 + J) / limit apart: the default 17 ms uses 98.3% of the limit, and a microsecond more
    than the exact spacing, so rounding to Redis's microseconds never shortens it."""
    jitter = Settings().budget_jitter
    used = 1 / (200 * budget.interval_for(200, jitter))
    assert used == pytest.approx(1 / (1 + jitter), abs=0.0005)
    assert used > 0.98
    assert round(budget.interval_for(200, jitter) * 1_000_000) * 200 >= 1_000_000 * (1 + jitter)


class Members:
    """Heartbeats that answer what the test says: how many other replicas fell silent."""

    def __init__(self) -> None:
        self.lapsed = 0
        self.kept_for = 3600.0  # how long Redis has kept the record of beats
        self.size = 1  # the fleet in the record, this replica included
        self.beats: list[str] = []
        self.left: list[str] = []

    async def beat(self, replica: str, lapse_after: float, forget_after: float) -> tuple[int, float, int]:
        self.beats.append(replica)
        return self.lapsed, self.kept_for, self.size

    async def leave(self, replica: str) -> None:
        self.left.append(replica)


def fleet_budget(
    t: FakeTime, members: Members | None, breaker: Breaker, grace: float = 0.0, degraded_share: int = 4
) -> tuple[FleetBudget, MemoryBudgetStore, MemoryBudgetStore]:
    local, shared = MemoryBudgetStore(clock=t.clock), MemoryBudgetStore(clock=t.clock)  # shared: as Redis
    answered = Answered(shared, breaker)  # (as create_app wires it)
    paced = FleetBudget(
        shared=Dispatcher(store=answered, horizon=HORIZON, borrow=0.02, clock=t.clock, sleep=t.sleep),
        shared_store=answered,
        local=Dispatcher(store=local, horizon=HORIZON, borrow=0.02, clock=t.clock, sleep=t.sleep, own_clock=True),
        local_store=local,
        breaker=breaker,
        fleet=Fleet(members=members, replica="r1", configured=degraded_share, clock=t.clock),
        grace=grace,
        horizon=HORIZON,
        store_timeout=0.5,
        jitter=0.015,
        clock=t.clock,
        sleep=t.sleep,
    )
    return paced, local, shared


@pytest.mark.parametrize(("configured", "seen", "share"), [(1, 4, 4), (4, 2, 4), (2, 5, 5), (1, 1, 1)])
async def test_cut_off_a_replica_paces_at_the_larger_of_the_configured_and_the_seen_fleet(
    configured: int, seen: int, share: int
) -> None:
    """GATEWAY_MAX_REPLICAS left at 1 (or set too small) in a fleet the heartbeats show larger:
    cut off from Redis, the replica paces at 200 / the fleet it saw, not at the whole budget."""
    t, members = FakeTime(), Members()
    breaker = Breaker(cool_off=60.0, clock=t.clock, threshold=1)
    paced, _, _ = fleet_budget(t, members, breaker, degraded_share=configured)
    members.size = seen
    await paced.heartbeat()
    assert paced.fleet.seen == seen
    breaker.failed("redis down")
    t.now += 10.0  # long past any hold for the others to notice
    await paced.acquire("1400", "api", qps=200, max_wait=5.0, share=ME)
    before = t.now
    for _ in range(10):
        await paced.acquire("1400", "api", qps=200, max_wait=5.0, share=ME)
    assert t.now - before == pytest.approx(10 * interval_for(200 // share, 0.015), rel=1e-6)


async def test_the_largest_fleet_seen_is_kept_for_the_forget_horizon() -> None:
    """A fleet that scaled down keeps its old share for FORGET_AFTER (a replica that vanished may
    still be pacing alone that long), then gives way to the size the heartbeats show now."""
    t, members = FakeTime(), Members()
    paced, _, _ = fleet_budget(t, members, Breaker(cool_off=60.0, clock=t.clock), degraded_share=1)
    members.size = 5
    await paced.heartbeat()
    members.size = 2
    t.now += FORGET_AFTER - 1
    await paced.heartbeat()
    assert paced.fleet.seen == 5
    t.now += 2
    await paced.heartbeat()
    assert paced.fleet.seen == 2


async def test_the_shared_schedule_leaves_room_for_replicas_that_fell_silent() -> None:
    """One of four replicas silent in Redis (it may be pacing on its own 50/s): the others book
    the shared schedule at 150/s between them."""
    t, members = FakeTime(), Members()
    paced, _, _ = fleet_budget(t, members, Breaker(cool_off=1.0, clock=t.clock))
    await paced.heartbeat()
    first = await slot(paced, qps=200, max_wait=10)
    second = await slot(paced, qps=200, max_wait=10)
    assert second.send_by - first.send_by == pytest.approx(budget.interval_for(200, 0.015))
    members.lapsed = 1
    await paced.heartbeat()
    third = await slot(paced, qps=200, max_wait=10)
    fourth = await slot(paced, qps=200, max_wait=10)
    assert fourth.send_by - third.send_by == pytest.approx(budget.interval_for(150, 0.015))
    assert paced.fleet.lapsed == 1
    assert members.beats == ["r1", "r1"]
    await paced.leave()  # on a clean shutdown
    assert members.left == ["r1"]


async def test_a_replica_cut_off_from_redis_waits_until_the_others_have_noticed() -> None:
    """Degraded, a replica's first local slot comes only once the others have counted it silent
    (last beat + lapse + their next beat + a slow Redis call) and the slots they booked at the
    full rate before that (the booking horizon) have passed; then it paces at its share."""
    t, members = FakeTime(), Members()
    breaker = Breaker(cool_off=60.0, clock=t.clock)
    paced, _, _ = fleet_budget(t, members, breaker)
    await paced.heartbeat()
    beat = t.now
    for _ in range(3):
        breaker.failed("redis down")
    assert breaker.degraded
    first = await slot(paced, qps=200, max_wait=10)
    noticed = beat + budget.LAPSE_AFTER + budget.BEAT_EVERY + 0.5
    assert first.send_by - budget.SEND_SHARE * 0.015 == pytest.approx(noticed + HORIZON)
    second = await slot(paced, qps=200, max_wait=10)
    assert second.send_by - first.send_by == pytest.approx(budget.interval_for(50, 0.015))


async def test_a_fleet_of_one_does_not_wait_for_others_to_notice() -> None:
    """With GATEWAY_MAX_REPLICAS=1 there is nobody to notice: degraded, the replica goes on at once."""
    t, members = FakeTime(), Members()
    breaker = Breaker(cool_off=60.0, clock=t.clock)
    paced, _, _ = fleet_budget(t, members, breaker, degraded_share=1)
    await paced.heartbeat()
    for _ in range(3):
        breaker.failed("redis down")
    assert paced.mode() is Mode.DEGRADED, "no hold: nobody else to notice"
    assert (await slot(paced, qps=200, max_wait=10)).waited == 0.0


async def test_back_from_a_cut_a_replica_pushes_the_shared_schedule_past_its_slots_then_beats() -> None:
    """While the others still count it silent, a replica that reaches Redis again first moves the
    shared schedules past the local slots it granted; only then does it beat (and stop being
    counted)."""
    t, members = FakeTime(), Members()
    breaker = Breaker(cool_off=3.0, clock=t.clock)
    paced, local, shared = fleet_budget(t, members, breaker)
    for _ in range(3):
        breaker.failed("redis down")
    for _ in range(3):  # local slots at its share of 4/s: 1.015 s apart, the last at 2.03 s
        await slot(paced, qps=4, max_wait=10)
    t.now += 0.98  # 3.01 s: past the cool-off; the last slot's interval runs until 3.045 s
    assert local.ahead("app", "api") == pytest.approx(0.035, abs=1e-5)
    await paced.heartbeat()
    assert not breaker.degraded
    assert members.beats == ["r1"]
    assert shared.ahead("app", "api") == pytest.approx(0.035, abs=1e-5)


async def test_back_from_a_cut_before_any_local_slot_the_shared_schedule_is_not_pushed() -> None:
    """The hold before a cut-off replica's first local slot is no slot: if Redis returns before
    that slot was granted, the shared schedule is left as it is (pushing it past the hold would
    stall the whole fleet for seconds)."""
    t, members = FakeTime(), Members()
    breaker = Breaker(cool_off=0.01, clock=t.clock)
    paced, local, shared = fleet_budget(t, members, breaker)
    await paced.heartbeat()  # it beat: the others count on it, so it holds when cut off
    for _ in range(3):
        breaker.failed("redis down")
    assert paced.mode() is Mode.HOLD
    assert isinstance(await paced.acquire("app", "api", qps=200, max_wait=1.0, share=ME), Refusal)
    assert local.ahead("app", "api") > 1.0  # the hold, in the local schedule
    t.now += 0.02
    await paced.heartbeat()
    assert not breaker.degraded
    assert shared.ahead("app", "api") == 0.0
    assert (await slot(paced, qps=200, max_wait=1.0)).waited == 0.0


async def test_callers_queued_for_local_slots_while_the_push_was_under_way_ask_redis_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trial pushes the shared schedule past the local slots (``_rejoin``); while that push is
    under way the breaker opens again (another call of the trial failed) and callers queue for
    local slots anew. When the push is answered (Redis is back), they too are sent to ask Redis,
    and the slot granted meanwhile is pushed past: left queued, they went on at the local pace
    beside the shared slots (after a Redis stall, two replicas did, 260 calls a second at Tencent)."""
    t = FakeTime()
    local_gate = t.gated()
    breaker = Breaker(cool_off=1.0, clock=t.clock)
    paced, _, shared = fleet_budget(t, None, breaker)  # degraded share 4: local slots 1.015 s apart
    for _ in range(3):
        breaker.failed("redis down")
    await slot(paced, qps=4, max_wait=10)  # a local slot now
    t.now += 1.0  # the cool-off: the next caller tries Redis, and first pushes past that slot
    push_gate, defer = asyncio.Event(), shared.defer

    async def gated_defer(*args: Any, **kwargs: Any) -> None:  # Redis answers when the test says
        await push_gate.wait()
        await defer(*args, **kwargs)

    monkeypatch.setattr(shared, "defer", gated_defer)

    def ask() -> asyncio.Task[Slot | Refusal | Paused]:
        return asyncio.create_task(paced.acquire("app", "api", qps=4, max_wait=10.0, share=ME))

    trial = ask()
    for _ in range(3):
        await asyncio.sleep(0)  # its push is under way
    breaker.failed("redis down")  # the trial's other call times out: degraded again
    assert paced.mode() is Mode.DEGRADED
    granted, queued = ask(), ask()  # the next local slot (15 ms on), and one queued behind it
    for _ in range(5):
        await asyncio.sleep(0)
    push_gate.set()  # Redis answers the push: it is back
    for _ in range(10):
        await asyncio.sleep(0)
    local_gate.set()
    got = await asyncio.gather(trial, granted, queued)
    assert all(isinstance(g, Slot) for g in got), got
    assert [g.shared for g in got if isinstance(g, Slot)] == [True, False, True], (
        "only the slot granted meanwhile is local"
    )
    assert not breaker.degraded
    assert shared.ahead("app", "api") >= paced._local.ahead("app", "api") - 1e-9, "pushed past the local slots"


async def test_back_from_a_cut_callers_still_waiting_for_a_local_slot_ask_redis() -> None:
    """Callers queued for a local slot when Redis returns are sent to the shared schedule: a
    local slot granted after the rejoin pushed the shared schedule would not be covered by it."""
    t = FakeTime()
    gate = t.gated()
    breaker = Breaker(cool_off=0.5, clock=t.clock)
    paced, local, shared = fleet_budget(t, None, breaker)  # never beat: no hold
    for _ in range(3):
        breaker.failed("redis down")
    first = await slot(paced, qps=4, max_wait=10)  # a local slot; the next is a second away
    assert not first.shared
    waiting = asyncio.create_task(paced.acquire("app", "api", qps=4, max_wait=10, share=ME))
    for _ in range(3):
        await asyncio.sleep(0)  # it queues; the local timer sleeps towards its slot
    assert not waiting.done()
    await paced.heartbeat()  # Redis is back (the cool-off passed on the timer's sleep)
    gate.set()
    got = await waiting
    assert isinstance(got, Slot)
    assert got.shared, "it booked the shared schedule"
    assert local.ahead("app", "api") <= shared.ahead("app", "api") + 1e-9, "the shared schedule is past the local slots"


async def test_only_an_answer_from_redis_closes_the_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Degraded, with its cool-off passed: a caller the shared dispatcher refuses from what it
    knows (one booking is out, and the next slot is past this caller's wait cap) made no Redis
    call, and the replica stays degraded; the booking Redis answers ends the degraded period.
    (Counted as a success, such a refusal closed the breaker while Redis was down, and replicas
    flapped between schedules.)"""
    t = FakeTime()
    breaker = Breaker(cool_off=1.0, clock=t.clock)
    paced, _, shared = fleet_budget(t, None, breaker)  # degraded: 1 a second at qps 4
    for _ in range(3):
        breaker.failed("redis down")
    t.now += 1.0  # the cool-off: the next call may try Redis
    gate, book = asyncio.Event(), shared.book

    async def slow(*args: Any, **kwargs: Any) -> Any:  # Redis answers when the test says
        await gate.wait()
        return await book(*args, **kwargs)

    monkeypatch.setattr(shared, "book", slow)
    first = asyncio.create_task(paced.acquire("app", "api", qps=4, max_wait=10.0, share=ME))
    for _ in range(3):
        await asyncio.sleep(0)  # its booking is out
    refused = await paced.acquire("app", "api", qps=4, max_wait=0.5, share=ME)
    assert isinstance(refused, Refusal)
    assert breaker.degraded, "a refusal from the queue is not an answer from Redis"
    gate.set()
    assert isinstance(await first, Slot)
    assert not breaker.degraded, "Redis answered the booking"


async def test_one_failed_booking_is_asked_again_of_redis_not_of_the_local_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One Redis call that times out (a late reply under a burst: the breaker stays closed) costs
    its callers that timeout, then a shared slot: on the local schedule they would wait for the
    others to notice a silence that never was (~1 s) and be refused (a quiet caller's 429)."""
    t, members = FakeTime(), Members()
    breaker = Breaker(cool_off=1.0, clock=t.clock)  # opens at the third failure within a second
    paced, _, shared = fleet_budget(t, members, breaker)
    await paced.heartbeat()  # it beat: cut off, it would hold until the others noticed
    book, failed = shared.book, []

    async def late_once(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(t.now)
            t.now += 0.5  # the store timeout
            raise StoreUnavailable("TimeoutError")
        return await book(*args, **kwargs)

    monkeypatch.setattr(shared, "book", late_once)
    began = t.now
    got = await slot(paced, qps=200, max_wait=1.0)
    assert failed, "the first booking failed"
    assert got.shared, "asked Redis again"
    assert not breaker.degraded
    assert t.now - began == pytest.approx(0.5, abs=0.01)


async def test_a_caller_sent_back_and_forth_while_redis_flaps_is_refused_at_its_wait_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis flapping (each trial after the cool-off times out) sends callers waiting for a local
    slot to ask Redis again (``Moved``), again and again, each time for a Redis timeout: past its
    wait cap a caller is refused, at most one Redis timeout late, however often it was moved (a
    fleet test saw a request take 3.95 s against a 1 s cap)."""
    t = FakeTime()
    breaker = Breaker(cool_off=0.0, clock=t.clock)  # (every call after a failure is a trial)
    paced, _, shared = fleet_budget(t, None, breaker)
    timeout = 0.5  # fleet_budget's store_timeout

    async def times_out(*_: object, **__: object) -> None:
        t.now += timeout
        raise StoreUnavailable("TimeoutError")

    monkeypatch.setattr(shared, "defer", times_out)
    monkeypatch.setattr(shared, "book", times_out)
    for _ in range(3):
        breaker.failed("redis down")
    assert not (await slot(paced, qps=200, max_wait=1.0)).shared  # a local slot: rejoining comes next
    moved = 0

    async def evicted(*_: object, **__: object) -> Moved:  # a trial's rejoin evicted its local wait
        nonlocal moved
        moved += 1
        return Moved()

    monkeypatch.setattr(paced._local, "acquire", evicted)
    began = t.now
    got = await paced.acquire("app", "api", qps=200, max_wait=1.0, share=ME)
    assert isinstance(got, Refusal), got
    assert t.now - began <= 1.0 + timeout + 1e-9, f"moved {moved} times, {t.now - began:.2f} s"


@pytest.mark.parametrize("kept", [True, False])
async def test_after_redis_returns_the_grace_lasts_until_a_beat_shows_the_fleet_was_kept(kept: bool) -> None:
    """Back from a degraded period, shared slots are booked at the degraded rate (the grace) until
    a beat shows the record of beats kept for longer than the protection lasts: every replica
    still cut off is then counted as lapsed, and the grace ends. If Redis lost the record (kept
    for 5 s), the grace runs its course."""
    t, members = FakeTime(), Members()
    breaker = Breaker(cool_off=1.0, clock=t.clock)
    paced, _, _ = fleet_budget(t, members, breaker, grace=10.0)
    await paced.heartbeat()
    for _ in range(3):
        breaker.failed("redis down")
    t.now += 5.0
    first = await slot(paced, qps=200, max_wait=10)  # recovers: in grace
    second = await slot(paced, qps=200, max_wait=10)
    assert second.send_by - first.send_by == pytest.approx(budget.interval_for(50, 0.015))
    members.kept_for, members.lapsed = (3600.0 if kept else 5.0), 1
    await paced.heartbeat()
    third = await slot(paced, qps=200, max_wait=10)
    fourth = await slot(paced, qps=200, max_wait=10)
    expected = budget.interval_for(150, 0.015) if kept else budget.interval_for(50, 0.015)
    assert fourth.send_by - third.send_by == pytest.approx(expected)


async def test_a_paused_tenant_gets_no_slot() -> None:
    """While a tenant is paused (70050) every acquire fails at once with the time left."""
    t = FakeTime()
    paced = embedded(t, 0.01)
    await paced.pause("app", 60.0, 70050, "locked out")
    paused = await paced.acquire("app", "any-api", qps=200, max_wait=10, share=ME)
    assert paused == Paused(left=60.0, code=70050, reason="locked out")
    t.now += 60.0
    resumed = await paced.acquire("app", "any-api", qps=200, max_wait=10, share=ME)
    assert isinstance(resumed, Slot)
    assert resumed.waited == 0.0


@pytest.mark.slow
async def test_gateway_never_exceeds_200_per_second_under_600_offered(tmp_path: Path) -> None:
    """600 writes/s for 3 s through one gateway: Tencent never sees more than 200 in a sliding
    second, never answers 60007, and the budget is used; the excess waits, then gets 429.
    (Tencent's stand-in is a process of its own: in the test's loop it stamps arrivals late.)"""
    with emulator_process(tmp_path) as upstream_url:
        async with start_gateway(upstream_url, budget_max_wait=1.0) as gateway:
            paths = ["/v1/tenants/acme/rooms/room-1"] * 1800
            statuses = await blast(
                gateway.url, paths, token=TOKENS["rw"], method="PATCH", json={"activity_status": 1}, spacing=1 / 600
            )
        stats = emulator_stats(upstream_url)
    busiest = stats["busiest_second"][f"{APP_ID}:update_room_info"]
    assert busiest <= 200, f"{busiest} in a second; Tencent's stand-in ran late: {stats['stalls']}"
    assert busiest >= 190, f"per second {stats['arrivals'][f'{APP_ID}:update_room_info']['per_second']}"
    assert stats["codes"].get("60007", 0) == 0
    assert set(statuses) <= {204, 429}
    assert statuses.count(204) == stats["calls"]["update_room_info"]
    assert statuses.count(429) > 0


@pytest.mark.slow
async def test_a_call_that_cannot_leave_in_time_sends_nothing_and_books_again() -> None:
    """The send window is checked right before the request is written: a caller whose slot
    passes while the event loop is stalled (here: by the first call's handler) sends nothing,
    books a new slot and still succeeds, each call reaching Tencent exactly once. (Callers book
    just in time, the horizon ahead, so a stall costs the slots within the horizon, not one per
    waiting caller as when every caller booked its slot on arrival.)"""
    sent: list[float] = []

    def upstream(call: Call) -> tuple[int, bytes]:
        sent.append(time.monotonic())
        if len(sent) == 1:  # 40 ms on, the next slot (51 ms on) is booked, its caller asleep until it:
            asyncio.get_running_loop().call_later(0.04, time.sleep, 0.2)  # stall the loop: the slot passes
        return 200, b'{"ActionStatus":"OK","ErrorCode":0,"RequestId":"r"}'

    tencent = ScriptedTencent(upstream)
    async with start_gateway("http://tencent.invalid", transport_factory=lambda: tencent, qps=20) as gateway:
        responses = await asyncio.gather(
            *(gateway.client.patch("/v1/tenants/acme/rooms/room-1", json={"activity_status": 1}) for _ in range(8))
        )
        metrics = (await gateway.client.get("/metrics")).text
    assert [r.status_code for r in responses] == [204] * 8
    assert len(sent) == 8
    missed = [line for line in metrics.splitlines() if line.startswith("gateway_budget_slots_missed_total{")]
    assert len(missed) == 1
    forfeited = float(missed[0].rsplit(" ", 1)[1])
    assert forfeited >= 1
    grants = [line for line in metrics.splitlines() if line.startswith("gateway_budget_grants_total{")]
    assert float(grants[0].rsplit(" ", 1)[1]) == 8 + forfeited


class SlowFirstConnect(PooledTransport):
    """Tencent's transport whose first request to an origin spends 30 ms connecting (a TLS
    handshake's worth) before it may write: longer than any slot's send window."""

    def __init__(self) -> None:
        super().__init__(connections=8)
        self.connected: set[str] = set()

    async def post(
        self, origin: str, target: str, body: bytes, on_time: OnTime | None = None, *, proxy: Proxy | None = None
    ) -> Reply:
        if origin not in self.connected:
            self.connected.add(origin)
            await asyncio.sleep(0.03)
        return await super().post(origin, target, body, on_time, proxy=proxy)


@pytest.mark.slow
async def test_a_slow_connect_on_a_slow_tenant_is_not_refused(upstream_url: str, emulator: Emulator) -> None:
    """1 call/s, no wait allowed: the first call's connect outlasts its slot's send window. It
    sends nothing then, takes its slot back and goes at once; Tencent sees it exactly once.
    (Before, the next slot was a second away, past the wait cap: a 429 with budget to spare.)"""
    async with start_gateway(upstream_url, transport_factory=SlowFirstConnect, qps=1, budget_max_wait=0.0) as gateway:
        response = await gateway.client.patch("/v1/tenants/acme/rooms/room-1", json={"activity_status": 1})
        metrics = (await gateway.client.get("/metrics")).text
    assert response.status_code == 204, response.text
    assert emulator.calls["update_room_info"] == 1
    missed = [line for line in metrics.splitlines() if line.startswith("gateway_budget_slots_missed_total{")]
    assert [float(line.rsplit(" ", 1)[1]) for line in missed] == [1.0]


class NeverOnTime(PooledTransport):
    """Tencent's transport where every request spends 30 ms before it may write: past every
    slot's send window, however often the call books again."""

    def __init__(self) -> None:
        super().__init__(connections=8)

    async def post(
        self, origin: str, target: str, body: bytes, on_time: OnTime | None = None, *, proxy: Proxy | None = None
    ) -> Reply:
        await asyncio.sleep(0.03)
        return await super().post(origin, target, body, on_time, proxy=proxy)

    def launch(self, origin: str, target: str, body: bytes, *, proxy: Proxy | None = None) -> None:
        """Never a socket ready to write at once (every write waits 30 ms first)."""
        return


@pytest.mark.slow
async def test_a_call_that_can_never_leave_in_time_ends_at_the_deadline(upstream_url: str, emulator: Emulator) -> None:
    """Each handed-back slot is free again at once, so nothing but the deadline ends the re-booking:
    the caller gets a 504 at the deadline (the last try's wait or the loop's own check), and
    Tencent never saw the call."""
    async with start_gateway(
        upstream_url, transport_factory=NeverOnTime, deadline=3.5, upstream_timeout=3.5
    ) as gateway:
        began = time.monotonic()
        response = await gateway.client.patch("/v1/tenants/acme/rooms/room-1", json={"activity_status": 1})
        took = time.monotonic() - began
    assert response.status_code == 504, response.text
    assert response.json()["code"] == "upstream_timeout"
    assert 3.5 <= took < 4.5
    assert emulator.calls.get("update_room_info", 0) == 0


def test_clock_sync_trusts_the_quickest_round_trip() -> None:
    """The offset comes from the round trip with the least slack, so a slow reply can't skew it."""
    sync = ClockSync(window=10.0)
    # Remote clock = ours + 500 s. A quick round trip (1 ms) and then a slow one whose
    # decision happened right at the start of a 40 ms round trip.
    sync.sample(sent=100.000, received=100.001, remote=600.0005)
    sync.sample(sent=101.000, received=101.040, remote=601.000)
    assert sync.local(600.0005) == pytest.approx(100.0005, abs=1e-6)
    # Past the window even a worse sample replaces a stale best (clocks may step).
    sync.sample(sent=112.000, received=112.004, remote=612.002)
    assert sync.local(612.002) == pytest.approx(112.002, abs=1e-6)


def test_clock_sync_falls_back_to_the_quickest_round_trip_still_in_its_window() -> None:
    """When the best round trip leaves the window, the next best within it takes over, not the
    next sample: after a stall, a 200 ms round trip would put every slot up to 100 ms off."""
    sync = ClockSync(window=10.0)  # remote clock = ours + 500 s
    sync.sample(sent=100.000, received=100.001, remote=600.0005)  # the best, 1 ms
    sync.sample(sent=105.000, received=105.003, remote=605.0015)  # 3 ms
    sync.sample(sent=108.000, received=108.005, remote=608.0025)  # 5 ms
    # 111 s: the 1 ms sample has left the window; a 200 ms round trip whose decision came at its
    # very end (Redis woke and answered) must not set the offset while the 3 ms one is there.
    sync.sample(sent=110.800, received=111.000, remote=611.000)
    assert sync.local(611.000) == pytest.approx(111.000, abs=0.0015)
    # Past the 3 ms and 5 ms samples too, only the slow one is left: it is all there is.
    sync.sample(sent=118.500, received=118.700, remote=618.700)
    assert sync.local(618.700) == pytest.approx(118.600, abs=1e-6)
