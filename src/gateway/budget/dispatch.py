"""The fair dispatcher: this replica's waiting callers, booked in batches against one store.

Callers wait here, per (scope, API) and per caller in arrival order, not in the schedule. One
*pump* per (scope, API) books for all of them at once: one store call (one Redis round trip)
asks for every waiting caller's slots (``schedule.book`` decides who gets which), hands them out,
then sleeps until the store says more could be granted, or until a caller with nobody waiting
before it arrives (it may be within its share: it is booked at once, not after the others).
So bookings that arrive together share one round trip, and a caller over its share waits here
(and is refused here past its wait cap) without holding any of the schedule.

A waiter whose slot cannot be used (its wait cap passed) or a call that could not leave in time
hands the slot back: the next booking undoes it while nobody booked after it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from gateway.budget.clock import ClockSync
from gateway.budget.schedule import Booked, Booking, Paused, Refusal, Share, Terms, Want
from gateway.health import StoreUnavailable

SLACK = 0.002  # a waiter's cap is kept to this closely: the store's clock is ours within half a round trip
IDLE_GAP = 0.001  # after a booking that granted nothing, the pump waits at least this long before the next


class BudgetStore(Protocol):
    """Atomic schedules per (scope, API) and pauses per scope (scope = the SDKAppID)."""

    async def book(
        self, scope: str, api: str, wants: Sequence[Want], terms: Terms, unbook: Sequence[Booking] = ()
    ) -> Booked | Paused:
        """Book slots for these callers (``schedule.book``), unless the scope is paused."""
        ...

    async def defer(self, scope: str, api: str, pause: float) -> None: ...

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None: ...


class Granted(NamedTuple):
    """A slot handed to a waiter: its moment on our clock, and its booking on the store's."""

    slot: float
    booking: Booking


class _Waiter:
    __slots__ = ("caller", "deadline", "future", "interval", "weight")

    def __init__(self, caller: str, weight: int, interval: float, deadline: float) -> None:
        self.caller, self.weight, self.interval, self.deadline = caller, weight, interval, deadline
        self.future: asyncio.Future[Granted | Refusal | Paused] = asyncio.get_running_loop().create_future()


class _Queue:
    """One (scope, API)'s waiters on this replica, per caller in arrival order."""

    def __init__(self) -> None:
        self.callers: dict[str, deque[_Waiter]] = {}
        self.unbook: list[Booking] = []
        self.wake = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None
        self.last_end = -math.inf  # the end of the last slot granted here, on our clock
        self.short: set[str] = set()  # callers the last booking could not give all they asked for

    def add(self, waiter: _Waiter) -> None:
        if waiter.caller not in self.short:
            self.wake.set()  # its caller is not waiting for the store: book now, it may be within its share
        self.callers.setdefault(waiter.caller, deque()).append(waiter)

    def remove(self, waiter: _Waiter) -> None:
        mine = self.callers.get(waiter.caller)
        if mine is not None and waiter in mine:
            mine.remove(waiter)
            if not mine:
                del self.callers[waiter.caller]

    def waiters(self) -> list[_Waiter]:
        return [w for mine in self.callers.values() for w in mine]

    def wants(self, now: float, horizon: float) -> list[Want]:
        return [
            Want(caller, mine[0].weight, len(mine), max(0.0, min(horizon, max(w.deadline for w in mine) - now)))
            for caller, mine in self.callers.items()
        ]

    def expire(self, now: float, interval: float) -> None:
        """Refuse the waiters whose cap has passed (nothing was booked for them)."""
        for caller, mine in list(self.callers.items()):
            kept = deque(w for w in mine if w.deadline + SLACK > now)
            for position, waiter in enumerate(w for w in mine if w.deadline + SLACK <= now):
                _answer(waiter, Refusal(retry_after=(len(kept) + position + 1) * interval))
            if kept:
                self.callers[caller] = kept
            else:
                del self.callers[caller]
                self.short.discard(caller)

    def give(self, caller: str, granted: Granted) -> None:
        """The slot to this caller's first waiter that can still use it; else back to the store."""
        mine = self.callers.get(caller, deque())
        for waiter in mine:
            if granted.slot <= waiter.deadline + SLACK:
                mine.remove(waiter)
                if not mine:
                    del self.callers[caller]
                _answer(waiter, granted)
                return
        self.unbook.append(granted.booking)

    def answer_all(self, answer: Paused | StoreUnavailable) -> None:
        for waiter in self.waiters():
            if isinstance(answer, StoreUnavailable):
                if not waiter.future.done():
                    waiter.future.set_exception(answer)
            else:
                _answer(waiter, answer)
        self.callers.clear()


def _answer(waiter: _Waiter, answer: Granted | Refusal | Paused) -> None:
    if not waiter.future.done():
        waiter.future.set_result(answer)


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
    ) -> None:
        """``horizon``: how far ahead a caller within its share books; ``borrow``: how far ahead
        a free slot may be taken by a caller over its share; ``active``: how long after its last
        demand a caller still counts as competing (at least three slot intervals)."""
        self._store = store
        self._horizon = horizon
        self._borrow = borrow
        self._active = active
        self._clock = clock
        self._sleep = sleep
        self._queues: dict[tuple[str, str], _Queue] = {}
        self.sync = ClockSync()
        self.bookings = 0  # store calls made (each a Redis round trip for the shared store)

    async def acquire(
        self, scope: str, api: str, share: Share, *, interval: float, max_wait: float, unbook: Booking | None = None
    ) -> Granted | Refusal | Paused:
        """A slot for ``caller`` within ``max_wait``, a Refusal (nothing booked), or Paused.
        StoreUnavailable if the store failed while this caller waited."""
        queue = self._queues.setdefault((scope, api), _Queue())
        if unbook is not None:
            queue.unbook.append(unbook)
        ahead = len(queue.callers.get(share.name, ()))
        if ahead and ahead * interval > max_wait:  # even the whole budget could not serve it in time
            return Refusal(retry_after=ahead * interval - max_wait)
        waiter = _Waiter(share.name, share.weight, interval, self._clock() + max_wait)
        queue.add(waiter)
        if queue.pump is None:
            queue.pump = asyncio.create_task(self._pump(scope, api, queue))
        try:
            return await waiter.future
        except asyncio.CancelledError:
            queue.remove(waiter)
            if waiter.future.done() and not waiter.future.cancelled():
                got = waiter.future.result()
                if isinstance(got, Granted):
                    queue.unbook.append(got.booking)
            raise

    def ahead(self, scope: str, api: str) -> float:
        """Seconds from now to the end of the last slot granted here for this key (0 if past)."""
        queue = self._queues.get((scope, api))
        return 0.0 if queue is None else max(0.0, queue.last_end - self._clock())

    async def _pump(self, scope: str, api: str, queue: _Queue) -> None:
        try:
            while queue.callers:
                interval = max(w.interval for w in queue.waiters())
                queue.expire(self._clock(), interval)
                if not queue.callers:
                    break
                queue.wake.clear()
                booked = await self._book(scope, api, queue, interval)
                if booked is None:
                    return
                if queue.callers:
                    await self._sleep_until(queue, booked)
        finally:
            queue.pump = None  # (the queue stays: it remembers how far ahead this replica booked)

    async def _book(self, scope: str, api: str, queue: _Queue, interval: float) -> Booked | None:
        """One store call for every waiter; None if the store failed (every waiter is told)."""
        now = self._clock()
        terms = Terms(interval, self._horizon, self._borrow, max(self._active, 3 * interval))
        unbook, queue.unbook = queue.unbook, []
        self.bookings += 1
        wants = queue.wants(now, self._horizon)
        try:
            booked = await self._store.book(scope, api, wants, terms, unbook)
        except StoreUnavailable as exc:
            queue.answer_all(exc)
            return None
        received = self._clock()
        if isinstance(booked, Paused):
            queue.answer_all(booked)
            return None
        self.sync.sample(now, received, booked.at)
        for caller, starts in booked.slots.items():
            for start in starts:
                slot = self.sync.local(start)
                queue.last_end = max(queue.last_end, slot + booked.interval)
                queue.give(caller, Granted(slot, Booking(start, start + booked.interval)))
        queue.short = {w.caller for w in wants if len(booked.slots.get(w.caller, ())) < w.wanted}
        if any(caller not in queue.short for caller in queue.callers):
            queue.wake.set()  # they came while the store was asked: ask again now
        return booked

    async def _sleep_until(self, queue: _Queue, booked: Booked) -> None:
        """Until more could be granted, a waiter's cap passes, or a new caller arrives."""
        wake = math.inf if booked.next_at is None else self.sync.local(booked.next_at)
        wake = min(wake, *(w.deadline + SLACK for w in queue.waiters()))
        if not any(booked.slots.values()):
            wake = max(wake, self._clock() + IDLE_GAP)  # nothing granted: never spin on the store
        delay = wake - self._clock()
        if delay <= 0 or queue.wake.is_set():
            return
        timer, woken = asyncio.ensure_future(self._sleep(delay)), asyncio.ensure_future(queue.wake.wait())
        try:
            await asyncio.wait((timer, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            woken.cancel()
