"""The fair dispatcher: this replica's waiting callers, booked in batches against one store.

Callers wait here, per (scope, API) and per caller in arrival order, not in the schedule. A
*booking* is one store call (one Redis round trip) that asks for the slots of every waiter not
already in another booking (``schedule.book`` decides who gets which) and hands them out.

- A caller that arrives books at once, for itself and for everyone not yet asked for (so the
  calls that arrive together share a round trip), unless ``DEPTH`` bookings of this key are
  already in flight (then the next booking to start takes it along) or its caller is already
  waiting on the store (the store said when it can have more: see the next point).
- What a booking could not grant waits for a *timer*: the moment the store said more could be
  granted, or the earliest wait cap (past it a waiter is refused here, nothing booked).

So a caller over its share waits here, and is refused here, without holding any of the
schedule; a caller within its share is booked as it arrives. A waiter whose slot cannot be
used (its cap passed), or a call that could not leave in time, hands the slot back: the next
booking undoes it while nobody booked after it.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from gateway.budget.clock import ClockSync
from gateway.budget.schedule import Booked, Booking, Paused, Refusal, Share, Terms, Want
from gateway.health import StoreUnavailable

DEPTH = 8  # bookings of one (scope, API) in flight at once from one replica (BENCHMARKS.md: 2 to 16 tried)
SLACK = 0.002  # a waiter's cap is kept to this closely: the store's clock is ours within half a round trip
IDLE_GAP = 0.001  # after a booking that granted nothing, the next waits at least this long
LATE_DECAY = 0.95  # per booking: how fast the lead forgets a late answer (Dispatcher's docstring)


class BudgetStore(Protocol):
    """Atomic schedules per (scope, API) and pauses per scope (scope = the SDKAppID)."""

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
        """Book slots for these callers (``schedule.book``), unless the scope is paused.
        ``then``: a store may tell it the answer as soon as it has it, before returning that
        same answer (the Redis store, from the callback that reads the reply)."""
        ...

    async def defer(self, scope: str, api: str, pause: float) -> None: ...

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None: ...


class Granted(NamedTuple):
    """A slot handed to a waiter: its moment on our clock, and its booking on the store's."""

    slot: float
    booking: Booking


class Moved(NamedTuple):
    """The waiter was sent away unbooked (``Dispatcher.evict``): ask again, elsewhere."""


class OnGrant(Protocol):
    """What a waiter's slot sets off the moment it is handed out (``slots.Launch``): its call
    is sent from the booking's own step, not after the loop gets round to the waiter's task."""

    sent: bool  # the call has left: its slot is spent, never handed back

    def granted(self, got: Granted) -> None: ...

    def cancel(self) -> None: ...


class _Waiter:
    __slots__ = ("asked", "caller", "deadline", "future", "on_grant", "weight")

    def __init__(self, caller: str, weight: int, deadline: float, on_grant: OnGrant | None = None) -> None:
        self.caller, self.weight, self.deadline, self.on_grant = caller, weight, deadline, on_grant
        self.asked = False  # in a booking now in flight
        self.future: asyncio.Future[Granted | Refusal | Paused | Moved] = asyncio.get_running_loop().create_future()

    def __lt__(self, other: _Waiter) -> bool:  # (the deadline heap's tie-break)
        return id(self) < id(other)


class _Queue:
    """One (scope, API)'s waiters on this replica, per caller in arrival order, and a heap of
    their deadlines (a retry's cap can be shorter than those of callers who came before it)."""

    def __init__(self) -> None:
        self.callers: dict[str, deque[_Waiter]] = {}
        self.deadlines: list[tuple[float, _Waiter]] = []
        self.interval = 0.0  # the spacing the last waiter asked for: the mode's now (a queue may never empty)
        self.unit = 0.0  # the spacing at the full limit, what a slot costs its caller's fair TAT
        self.unbook: list[Booking] = []
        self.in_flight = 0
        self.unasked = 0  # waiters in no booking now in flight
        self.short: set[str] = set()  # callers the store could not give all they asked for
        self.timer: asyncio.Task[None] | None = None
        self.timer_at = math.inf
        self.last_end = -math.inf  # the end of the last slot granted here, on our clock

    def add(self, waiter: _Waiter, interval: float, unit: float) -> None:
        self.interval, self.unit = interval, unit
        self.callers.setdefault(waiter.caller, deque()).append(waiter)
        heapq.heappush(self.deadlines, (waiter.deadline, waiter))
        self.unasked += 1

    def drop(self, waiter: _Waiter) -> None:
        """Out of the queue (answered, refused or cancelled)."""
        mine = self.callers.get(waiter.caller)
        if mine is None or waiter not in mine:
            return
        if waiter is mine[0]:
            mine.popleft()
        else:
            mine.remove(waiter)
        if not waiter.asked:
            self.unasked -= 1
        if not mine:
            del self.callers[waiter.caller]
            self.short.discard(waiter.caller)

    def earliest(self) -> float:
        """The earliest deadline of a waiter still waiting (inf when none)."""
        while self.deadlines and self.deadlines[0][1].future.done():
            heapq.heappop(self.deadlines)
        return self.deadlines[0][0] if self.deadlines else math.inf

    def expire(self, now: float) -> None:
        """Refuse the waiters whose cap has passed (nothing was booked for them)."""
        while self.earliest() + SLACK <= now:
            _, waiter = heapq.heappop(self.deadlines)
            ahead = len(self.callers.get(waiter.caller, ()))
            self.drop(waiter)
            _answer(waiter, Refusal(retry_after=ahead * self.interval))

    def ask(self, now: float, horizon: float, lead: float) -> tuple[list[Want], dict[str, list[_Waiter]]]:
        """Every caller's waiters not yet asked for, now marked asked: the demand of one booking.
        Their caps stretch by the booking's ``lead``: a slot that starts then reaches them as
        soon as a slot booked for "now" would have."""
        wants, asked = [], {}
        for caller, mine in self.callers.items():
            fresh = [w for w in mine if not w.asked]
            if not fresh:
                continue
            for waiter in fresh:
                waiter.asked = True
            within = max(w.deadline for w in fresh) - now
            wants.append(Want(caller, fresh[0].weight, len(fresh), max(0.0, min(horizon, within + lead))))
            asked[caller] = fresh
        self.unasked = 0
        return wants, asked

    def give(self, asked: list[_Waiter], granted: Granted, lead: float) -> bool:
        """The slot to the first waiter of the booking that can still use it (``ask``: ``lead``,
        plus how long after the booking was decided the store looked at its clock)."""
        for waiter in asked:
            if not waiter.future.done() and granted.slot <= waiter.deadline + SLACK + lead:
                self.drop(waiter)
                _answer(waiter, granted)
                return True
        return False

    def refuse_before(self, reach: float, callers: set[str]) -> None:
        """Refuse now, rather than at their cap, the waiters of ``callers`` whose cap passes
        before ``reach``, the first moment the store could grant them a slot."""
        for caller in callers:
            mine = self.callers.get(caller)
            while mine and not mine[0].asked and mine[0].deadline + SLACK < reach:
                waiter = mine[0]
                self.drop(waiter)
                _answer(waiter, Refusal(retry_after=reach - waiter.deadline))

    def release(self, asked: dict[str, list[_Waiter]]) -> None:
        """The booking's waiters it did not serve wait for the next one."""
        for waiters in asked.values():
            for waiter in waiters:
                if waiter.asked and not waiter.future.done():
                    waiter.asked = False
                    self.unasked += 1

    def answer_all(self, answer: Paused | Moved | StoreUnavailable) -> None:
        for mine in self.callers.values():
            for waiter in mine:
                if isinstance(answer, StoreUnavailable):
                    if not waiter.future.done():
                        waiter.future.set_exception(answer)
                else:
                    _answer(waiter, answer)
        self.callers.clear()
        self.short.clear()
        self.unasked = 0


def _answer(waiter: _Waiter, answer: Granted | Refusal | Paused | Moved) -> None:
    if not waiter.future.done():
        waiter.future.set_result(answer)
        if waiter.on_grant is not None and isinstance(answer, Granted):
            waiter.on_grant.granted(answer)


class Dispatcher:
    """Fair, batched booking against one store (see the module docstring)."""

    def __init__(
        self,
        *,
        store: BudgetStore,
        horizon: float,
        borrow: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        active: float = 1.0,
        own_clock: bool = False,
        window: float = 0.0,
    ) -> None:
        """``horizon``: how far ahead a caller within its share books; ``borrow``: how far ahead
        a free slot may be taken by a caller over its share; ``active``: how long after its last
        demand a caller still counts as competing (at least three slot intervals); ``own_clock``:
        the store runs on ``clock`` (in process), so its times need no mapping; ``window``: a
        slot's send window (``slots.SEND_SHARE`` of the jitter), which sets the bookings' lead.

        The *lead*: a booking's answer reaches its waiters some time after the store's now (the
        round trip, and this replica's event loop getting to the reply: milliseconds when it is
        busy), and a slot booked for "now" has passed by then; past its send window, its call
        could not leave (a missed slot, a booking more). Bookings therefore ask for no slot
        before the store's now plus how late answers have come lately, less half the window: a
        waiter gets its slot when it has just begun. An in-process store (``own_clock``) answers
        at once: its bookings have no lead."""
        self._store = store
        self._in_process = own_clock  # its answers come at once: no lead
        self._window = window
        self._late = 0.0  # how late bookings' answers came lately (a decaying maximum)
        self._horizon = horizon
        self._borrow = borrow
        self._active = active
        self._clock = clock
        self._sleep = sleep
        self._queues: dict[tuple[str, str], _Queue] = {}
        self.sync = ClockSync(exact=own_clock)
        self.bookings = 0  # store calls made (each a Redis round trip for the shared store)

    async def acquire(
        self,
        scope: str,
        api: str,
        share: Share,
        *,
        interval: float,
        max_wait: float,
        unbook: Booking | None = None,
        unit: float = 0.0,
        on_grant: OnGrant | None = None,
    ) -> Granted | Refusal | Paused | Moved:
        """A slot for ``share`` within ``max_wait``, a Refusal (nothing booked), Paused, or
        Moved (``evict``). StoreUnavailable if the store failed while this caller waited.
        ``unit``: the slot spacing at the full limit, when ``interval`` is wider (``Terms``).
        ``on_grant``: told of the slot as it is handed out (``OnGrant``)."""
        queue = self._queues.setdefault((scope, api), _Queue())
        if unbook is not None:
            queue.unbook.append(unbook)
        ahead = len(queue.callers.get(share.name, ()))
        if ahead and ahead * interval > max_wait:  # even the whole budget could not serve it in time
            return Refusal(retry_after=ahead * interval - max_wait)
        now = self._clock()  # (one look: the cap is not spent before the waiter is even queued)
        waiter = _Waiter(share.name, share.weight, now + max_wait, on_grant)
        queue.add(waiter, interval, unit)
        try:
            if queue.in_flight < DEPTH and share.name not in queue.short:
                await self._book(scope, api, queue, now)
            return await waiter.future
        except asyncio.CancelledError:
            queue.drop(waiter)
            if on_grant is not None:
                on_grant.cancel()
            if waiter.future.done() and not waiter.future.cancelled():
                got = waiter.future.result()
                if isinstance(got, Granted) and not (on_grant is not None and on_grant.sent):
                    queue.unbook.append(got.booking)
            raise

    def evict(self, scope: str, api: str) -> None:
        """Send every waiter of this key away unbooked (Moved): the schedule is given up."""
        queue = self._queues.get((scope, api))
        if queue is not None:
            queue.answer_all(Moved())

    def ahead(self, scope: str, api: str) -> float:
        """Seconds from now to the end of the last slot granted here for this key (0 if past)."""
        queue = self._queues.get((scope, api))
        return 0.0 if queue is None else max(0.0, queue.last_end - self._clock())

    async def _book(self, scope: str, api: str, queue: _Queue, now: float | None = None) -> None:
        """One store call for every waiter not in another; then whatever is left is timed.
        ``now``: when the booking was decided (a waiter's arrival), else the clock's now."""
        now = self._clock() if now is None else now
        queue.expire(now)
        lead = 0.0 if self._in_process else min(max(0.0, self._late - self._window / 2), self._horizon / 2)
        wants, asked = queue.ask(now, self._horizon, lead)
        if not wants:
            return
        active = max(self._active, 3 * queue.interval)
        terms = Terms(queue.interval, self._horizon, self._borrow, active, min(queue.unit, queue.interval), lead)
        unbook, queue.unbook = queue.unbook, []
        self.bookings += 1
        queue.in_flight += 1
        answered = False

        def answer(booked: Booked | Paused) -> None:
            """The store's answer, handed out the moment it comes: from the callback that read it
            (the Redis store), or once ``book`` returns. Not from this task's next step: under load
            the loop resumes it milliseconds later, most of a slot's send window (``slots.Launch``)."""
            nonlocal answered
            answered = True
            queue.in_flight -= 1
            self._answered(scope, api, queue, booked, wants=wants, asked=asked, now=now, lead=lead)

        try:
            booked = await self._store.book(scope, api, wants, terms, unbook, then=answer)
        except StoreUnavailable as exc:
            if not answered:
                queue.in_flight -= 1
                queue.answer_all(exc)  # every waiter falls back (the breaker counts the failure once)
            return
        except asyncio.CancelledError:  # the caller booking for everyone went away meanwhile
            if not answered:
                queue.in_flight -= 1
                queue.release(asked)  # (what the store granted this call is lost: unused, never over)
                self._at(scope, api, queue, self._clock())
            raise
        except BaseException:
            if not answered:
                queue.in_flight -= 1
            raise
        if not answered:
            answer(booked)

    def _answered(
        self,
        scope: str,
        api: str,
        queue: _Queue,
        booked: Booked | Paused,
        *,
        wants: list[Want],
        asked: dict[str, list[_Waiter]],
        now: float,
        lead: float,
    ) -> None:
        """A booking's answer (asked at ``now``, with ``lead``): its slots to its waiters, and
        the next booking timed."""
        if isinstance(booked, Paused):
            queue.answer_all(booked)
            return
        self.sync.sample(now, self._clock(), booked.at)
        at = self.sync.local(booked.at)  # the store's now, on our clock
        self._late = max(self._clock() - at, self._late * LATE_DECAY)
        # The store grants within each waiter's cap counted from its own now (``Want.within``):
        # a replica that stalled between deciding to book and the store looking at its clock
        # (preempted, a busy loop, the round trip) must not refuse the slot that was free then.
        self._hand_out(queue, booked, asked, lead + max(0.0, at - now))
        short = {w.caller for w in wants if len(booked.slots.get(w.caller, ())) < w.wanted}
        queue.short = ((queue.short - {w.caller for w in wants}) | short) & queue.callers.keys()
        if booked.next_at is not None:  # none of these can have a slot before then
            queue.refuse_before(self.sync.local(booked.next_at), short)
        self._next(scope, api, queue, booked)

    def _hand_out(self, queue: _Queue, booked: Booked, asked: dict[str, list[_Waiter]], lead: float) -> None:
        for caller, starts in booked.slots.items():
            for start in starts:
                slot = self.sync.local(start)
                queue.last_end = max(queue.last_end, slot + booked.interval)
                booking = Booking(start, start + booked.interval)
                if not queue.give(asked.get(caller, []), Granted(slot, booking), lead):
                    queue.unbook.append(booking)
        queue.release(asked)

    def _next(self, scope: str, api: str, queue: _Queue, booked: Booked) -> None:
        """After a booking: book again now for callers who came meanwhile, or time the next."""
        if not queue.callers:
            return
        came = queue.unasked and any(caller not in queue.short for caller in queue.callers)
        if came and queue.in_flight < DEPTH:
            self._at(scope, api, queue, self._clock())  # they came while the store was asked
            return
        wake = math.inf if booked.next_at is None else self.sync.local(booked.next_at)
        wake = min(wake, queue.earliest() + SLACK)
        if not any(booked.slots.values()):
            wake = max(wake, self._clock() + IDLE_GAP)  # nothing granted: never spin on the store
        self._at(scope, api, queue, wake)

    def _at(self, scope: str, api: str, queue: _Queue, when: float) -> None:
        """A booking at ``when`` (the sooner one wins if one is timed already)."""
        if queue.timer is not None and not queue.timer.done():
            if queue.timer_at <= when:
                return
            queue.timer.cancel()
        queue.timer_at = when
        queue.timer = asyncio.create_task(self._timed(scope, api, queue, when - self._clock()))

    async def _timed(self, scope: str, api: str, queue: _Queue, delay: float) -> None:
        if delay > 0:
            await self._sleep(delay)
        queue.timer, queue.timer_at = None, math.inf
        if queue.in_flight < DEPTH:
            await self._book(scope, api, queue)
        elif queue.callers:
            self._at(scope, api, queue, self._clock() + IDLE_GAP)
