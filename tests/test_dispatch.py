"""The fair dispatcher on its own: batching, overload, refusals, failures, cancellation.

The store is the in-process one behind a round trip of a few milliseconds (``Remote``), on the
real clock: what the dispatcher does while a booking is in flight is the point."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import pytest

from gateway.budget import dispatch
from gateway.budget.dispatch import DEPTH, Dispatcher, Granted, Moved
from gateway.budget.schedule import Booked, Booking, Paused, Refusal, Share, Terms, Want, interval_for
from gateway.budget.slots import Launch
from gateway.health import StoreUnavailable
from gateway.stores.memory import MemoryBudgetStore

A, B = Share("checkout"), Share("batch")


class Remote(MemoryBudgetStore):
    """The memory store a round trip away, counting its calls; it can be made to fail."""

    def __init__(self, rtt: float = 0.002) -> None:
        super().__init__(clock=time.monotonic)
        self.rtt = rtt
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.failing = False

    async def book(
        self,
        scope: str,
        api: str,
        wants: Sequence[Want],
        terms: Terms,
        unbook: Sequence[Booking] = (),
        *,
        then: Callable[[Booked | Paused], None] | None = None,
    ) -> Booked | Paused:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.rtt / 2)
            if self.failing:
                raise StoreUnavailable("down")
            booked = await super().book(scope, api, wants, terms, unbook)
            await asyncio.sleep(self.rtt / 2)
            return booked
        finally:
            self.in_flight -= 1


def dispatcher(store: Remote) -> Dispatcher:
    return Dispatcher(store=store, horizon=0.06, borrow=0.02, clock=time.monotonic)


async def test_callers_that_arrive_together_share_store_calls() -> None:
    """200 callers at once on a budget that does not bind: every one gets a slot, in a handful of
    store calls (never more than DEPTH in flight), not one call each."""
    store = Remote()
    paced = dispatcher(store)
    got = await asyncio.gather(
        *(paced.acquire("1400", "api", A, interval=interval_for(100_000, 0.017), max_wait=2.0) for _ in range(200))
    )
    assert all(isinstance(g, Granted) for g in got)
    assert store.calls <= 20
    assert store.most_in_flight <= DEPTH


async def test_a_caller_kept_waiting_does_not_book_again_on_each_arrival() -> None:
    """Overload: 100 calls in 0.5 s at a 20/s budget. The store is asked about once per slot
    interval, not once per arrival, and those past the cap are refused without a store call."""
    store = Remote()
    paced = dispatcher(store)
    interval = interval_for(20, 0.017)

    async def one(delay: float) -> Granted | Refusal | Paused | Moved:
        await asyncio.sleep(delay)
        return await paced.acquire("1400", "api", B, interval=interval, max_wait=0.3)

    got = await asyncio.gather(*(one(i * 0.005) for i in range(100)))
    granted = [g for g in got if isinstance(g, Granted)]
    assert 5 <= len(granted) <= 20
    assert sum(isinstance(g, Refusal) for g in got) == 100 - len(granted)
    assert store.calls <= len(granted) + 10, f"{store.calls} store calls for {len(granted)} slots"


async def test_a_newcomer_books_at_once_while_another_caller_waits_on_the_store() -> None:
    """While the batch caller's waiters wait for their next slots, checkout arriving is booked
    straight away: it waits at most the horizon, not behind the batch's queue."""
    store = Remote()
    paced = dispatcher(store)
    interval = interval_for(50, 0.017)
    batch = [asyncio.create_task(paced.acquire("1400", "api", B, interval=interval, max_wait=2.0)) for _ in range(40)]
    await asyncio.sleep(0.1)
    began = time.monotonic()
    mine = await paced.acquire("1400", "api", A, interval=interval, max_wait=2.0)
    assert isinstance(mine, Granted)
    assert mine.slot - began < 0.06 + 2 * interval
    for task in batch:
        task.cancel()
    await asyncio.gather(*batch, return_exceptions=True)


async def test_a_failed_store_call_reaches_every_waiter() -> None:
    """Redis failing: every waiter of that booking gets StoreUnavailable (and falls back)."""
    store = Remote()
    store.failing = True
    paced = dispatcher(store)
    results = await asyncio.gather(
        *(paced.acquire("1400", "api", A, interval=0.001, max_wait=1.0) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results)


async def test_a_paused_tenant_answers_every_waiter() -> None:
    """A paused scope answers each waiter Paused, with Tencent's code."""
    store = Remote()
    await store.pause("1400", 5.0, 70050, "locked out")
    paced = dispatcher(store)
    results = await asyncio.gather(*(paced.acquire("1400", "api", A, interval=0.001, max_wait=1.0) for _ in range(5)))
    assert all(isinstance(r, Paused) and r.code == 70050 for r in results)


async def test_evicted_waiters_are_moved_unbooked() -> None:
    """``evict`` sends every waiter of the key away with Moved, and books nothing for them."""
    store = Remote()
    paced = dispatcher(store)
    interval = interval_for(2, 0.017)
    first = await paced.acquire("1400", "api", A, interval=interval, max_wait=5.0)
    assert isinstance(first, Granted)
    waiting = asyncio.create_task(paced.acquire("1400", "api", A, interval=interval, max_wait=5.0))
    await asyncio.sleep(0.02)
    paced.evict("1400", "api")
    assert isinstance(await waiting, Moved)
    assert paced.ahead("1400", "api") <= interval


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    """A caller that goes away while waiting is dropped: the next caller is not refused for it."""
    store = Remote()
    paced = dispatcher(store)
    interval = interval_for(5, 0.017)
    await paced.acquire("1400", "api", A, interval=interval, max_wait=5.0)
    gone = asyncio.create_task(paced.acquire("1400", "api", A, interval=interval, max_wait=5.0))
    await asyncio.sleep(0.01)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    nxt = await paced.acquire("1400", "api", A, interval=interval, max_wait=0.5)
    assert isinstance(nxt, Granted)


async def test_callers_queued_behind_a_cancelled_booking_are_still_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """One booking in flight at a time (depth 1): the caller whose booking is in flight goes away
    meanwhile; those who queued behind it are booked all the same (nobody is left unasked with
    no booking to come)."""
    monkeypatch.setattr(dispatch, "DEPTH", 1)
    store = Remote(rtt=0.02)
    paced = dispatcher(store)
    interval = interval_for(1000, 0.017)
    first = asyncio.create_task(paced.acquire("1400", "api", A, interval=interval, max_wait=2.0))
    await asyncio.sleep(0.005)  # its booking is in flight
    others = [asyncio.create_task(paced.acquire("1400", "api", B, interval=interval, max_wait=2.0)) for _ in range(4)]
    await asyncio.sleep(0.001)  # queued: the one booking allowed is in flight
    first.cancel()
    async with asyncio.timeout(1.0):
        got = await asyncio.gather(*others)
    assert all(isinstance(g, Granted) for g in got)
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_spacing_follows_the_mode_now_though_the_queue_never_empties() -> None:
    """Waiters that came in a wider spacing (a replica's grace after an outage) do not keep the
    queue at it: once callers ask for the full rate, slots come at the full rate, even though
    the queue under overload never empties (it once stayed wide: half the budget for good)."""
    store = Remote()
    paced = dispatcher(store)
    wide, narrow = 0.05, 0.005
    first = [asyncio.create_task(paced.acquire("1400", "api", A, interval=wide, max_wait=3.0)) for _ in range(20)]
    await asyncio.sleep(0.2)
    later = [asyncio.create_task(paced.acquire("1400", "api", A, interval=narrow, max_wait=3.0)) for _ in range(40)]
    got = await asyncio.gather(*first, *later)
    slots = sorted(g.slot for g in got if isinstance(g, Granted))
    assert len(slots) == 60
    gaps = [b - a for a, b in zip(slots[-20:], slots[-19:], strict=False)]
    assert max(gaps) < 2 * narrow, gaps


@pytest.mark.parametrize("rtt", [0.0, 0.002])
async def test_weights_share_a_contended_budget_through_the_dispatcher(rtt: float) -> None:
    """Embedded mode's whole path (the dispatcher in front of the in-process schedule; ``rtt`` 0)
    and a store a round trip away: two callers weighted 3:1, each always waiting for a slot at a
    100/s budget, are granted about 3:1 (the Lua path has its fleet test; this one covers the rest)."""
    store = Remote(rtt=rtt)
    paced = dispatcher(store)
    interval = interval_for(100, 0.017)
    heavy, light = Share("heavy", 3), Share("light", 1)
    granted = {"heavy": 0, "light": 0}
    end = time.monotonic() + 1.0

    async def caller(share: Share) -> None:
        while time.monotonic() < end:
            got = await paced.acquire("1400", "api", share, interval=interval, max_wait=1.0)
            if isinstance(got, Granted):
                granted[share.name] += 1
                await asyncio.sleep(max(0.0, got.slot - time.monotonic()))

    await asyncio.gather(*(caller(s) for s in (heavy, light) for _ in range(8)))
    ratio = granted["heavy"] / max(1, granted["light"])
    assert 2.2 <= ratio <= 4.0, granted


async def test_bookings_lead_by_how_late_their_answers_come() -> None:
    """A store whose answers come 10 ms after its now (a busy replica's loop, a slow round trip):
    once the dispatcher has seen that, it books slots that far ahead, less half the send window,
    so waiters get slots that have just begun, not ones their send window has already passed."""
    store = Remote(rtt=0.02)
    window = 0.006
    paced = Dispatcher(store=store, horizon=0.06, borrow=0.02, clock=time.monotonic, window=window)
    interval = interval_for(100_000, 0.017)
    late: list[float] = []
    for _ in range(30):
        got = await paced.acquire("1400", "api", A, interval=interval, max_wait=1.0)
        assert isinstance(got, Granted)
        late.append(time.monotonic() - got.slot)
    assert late[0] > window  # the first answer: booked for the store's now, 10 ms before it came
    assert sum(1 for x in late[5:] if x > window) <= 2, late
    assert max(late[5:]) > -0.005, late  # and not booked needlessly far ahead either


class Sends:
    """A call's ``send`` (``budget.slots.Launch``): records when it was asked, and its send-by."""

    def __init__(self, *, ready: bool = True) -> None:
        self.ready = ready  # a socket to write on: else nothing is written (the caller sends it later)
        self.at: list[tuple[float, float]] = []
        self.done = asyncio.Event()
        self.then: Callable[[], object] = lambda: None  # what else happens as it is sent

    def __call__(self, send_by: float) -> bool:
        self.at.append((time.monotonic(), send_by))
        self.done.set()
        self.then()
        return self.ready


async def test_a_slot_whose_moment_has_come_is_sent_in_the_booking_s_own_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers booked together by one booking: each one's call is sent as the booking hands the
    slots out, before the loop resumes any of their tasks, and within the slot's send window."""
    monkeypatch.setattr(dispatch, "DEPTH", 1)
    store = Remote(rtt=0.004)  # (its answers come 2 ms after its now: within the send window)
    paced = Dispatcher(store=store, horizon=0.06, borrow=0.02, clock=time.monotonic, own_clock=True)  # (no lead)
    interval = interval_for(100_000, 0.017)
    sends = [Sends() for _ in range(5)]
    resumed: dict[int, int] = {}

    async def one(n: int) -> Granted | Refusal | Paused | Moved:
        launch = Launch(sends[n], window=0.006, clock=time.monotonic)
        got = await paced.acquire("1400", "api", A, interval=interval, max_wait=1.0, on_grant=launch)
        resumed[n] = sum(len(s.at) for s in sends[1:])  # the batch's calls sent by the time this task runs
        return got

    first = asyncio.create_task(one(0))
    await asyncio.sleep(0.001)  # its booking is in flight: the next four wait for the next booking
    got = await asyncio.gather(first, *(one(n) for n in range(1, 5)))
    assert store.calls == 2
    assert [resumed[n] for n in range(1, 5)] == [4] * 4
    for granted, send in zip(got, sends, strict=True):
        assert isinstance(granted, Granted)
        ((sent, send_by),) = send.at
        assert granted.slot <= sent <= send_by == pytest.approx(granted.slot + 0.006)


async def test_a_launch_sends_at_the_slot_never_before_it_and_never_past_its_window() -> None:
    """A slot still to come is sent by a timer at its moment (uvloop's may fire early: it is set
    again); one whose send window has passed is not sent (the caller's own try then finds it too
    late and books again); a cancelled launch sends nothing."""
    now = time.monotonic()
    later, past, cancelled = Sends(), Sends(), Sends()
    Launch(later, window=0.006, clock=time.monotonic).granted(Granted(now + 0.02, Booking(0, 1)))
    Launch(past, window=0.006, clock=time.monotonic).granted(Granted(now - 0.01, Booking(0, 1)))
    dropped = Launch(cancelled, window=0.006, clock=time.monotonic)
    dropped.granted(Granted(now + 0.02, Booking(0, 1)))
    dropped.cancel()
    assert later.at == []
    await asyncio.sleep(0.05)
    ((sent, _),) = later.at
    assert sent >= now + 0.02
    assert past.at == []
    assert cancelled.at == []


async def test_a_cancelled_waiter_whose_call_was_sent_does_not_hand_its_slot_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller that goes away after its call left (sent by another caller's booking, before its
    task ran again) has spent its slot: it is not handed back (undone, the next caller could take
    the same moment: two calls on one slot). One that goes away before is handed back."""
    monkeypatch.setattr(dispatch, "DEPTH", 1)
    store = Remote(rtt=0.004)
    paced = Dispatcher(store=store, horizon=0.06, borrow=0.02, clock=time.monotonic, own_clock=True)
    interval = interval_for(100_000, 0.017)

    async def goes_away(*, sent: bool) -> None:
        sends = Sends(ready=sent)
        launch = Launch(sends, window=0.006, clock=time.monotonic)
        first = asyncio.create_task(paced.acquire("1400", "api", A, interval=interval, max_wait=5.0))
        await asyncio.sleep(0.001)  # its booking is in flight: the next caller waits for the next one
        gone = asyncio.create_task(paced.acquire("1400", "api", B, interval=interval, max_wait=5.0, on_grant=launch))
        sends.then = gone.cancel  # it goes away as its slot is handed out, before its task runs again
        assert isinstance(await first, Granted)
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert launch.sent is sent

    await goes_away(sent=True)
    assert paced._queues["1400", "api"].unbook == []  # (what the next booking would undo)
    await goes_away(sent=False)
    assert len(paced._queues["1400", "api"].unbook) == 1


class Stepping:
    """A clock that moves on ``step`` seconds at every read: a replica stalled (preempted, or a
    busy loop) between any two of the dispatcher's looks at the time."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize("max_wait", [0.0, 0.001])
async def test_a_free_slot_is_granted_however_long_the_replica_stalls_before_booking(max_wait: float) -> None:
    """A cap shorter than a stall (each look at the clock 3 ms after the last, more than the
    dispatcher's SLACK) still gets a slot that is free when the store is asked: the cap bounds
    how long a caller waits for a slot, not how long the replica took to ask for one."""
    clock = Stepping(3 * dispatch.SLACK)
    store = MemoryBudgetStore(clock=clock)
    paced = Dispatcher(store=store, horizon=0.06, borrow=0.02, clock=clock, own_clock=True)
    interval = interval_for(200, 0.017)
    got = await paced.acquire("1400", "api", A, interval=interval, max_wait=max_wait)
    assert isinstance(got, Granted), got
    taken = await paced.acquire("1400", "api", B, interval=interval, max_wait=max_wait)
    assert isinstance(taken, Granted), taken  # 15 ms later on this clock: the next slot is free too
