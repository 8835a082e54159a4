"""The per-(SDKAppID, API) request budget: Tencent's limit, shared fairly between callers.

Glossary (the modules, bottom up):

- *limit*: Tencent's calls per second for one (SDKAppID, API); *jitter* (J): how late after its
  slot a call may reach Tencent. Slots are spaced ``(1 + J) / limit`` apart, so no sliding
  second at Tencent holds more than the limit (``schedule``).
- *slot*: the moment a call may leave; its *send window* ends a third of J later (``send_by``),
  checked right before the first byte is written. A call that misses it *forfeits* the slot,
  hands it back (undone while nobody booked after it) and books again. A *launch* sends the call
  from the code that hands the slot out (or a timer at the slot), not the caller's task (``slots``).
- *TAT*: a schedule's theoretical arrival time, its next free slot (GCRA with no burst).
- *caller*, *weight*, *share*: a configured service asking; its share of a contended budget is
  its weight over the weights of the callers *active* (asked within the last second), fleet-wide.
- *fair TAT*, *by right*, *borrowing*: each caller's own schedule at its share; a caller whose
  fair TAT has come books by right up to the *horizon* ahead; free slots within the *borrow*
  window go to anyone (``schedule.book``).
- *dispatcher*, *booking*: the replica's waiting callers per (SDKAppID, API); a booking is one
  store call (one Redis round trip) for all of them not yet asked for, made by the caller that
  arrives, or by a timer when the store said more can come later (``dispatch``).
- *store*: where schedules live: a dict in process, or Redis via one Lua script (``book.lua``).
- *fleet*, *heartbeat*, *lapsed*, *fleet seen*: the replicas as each sees them in Redis
  (``fleet``); *clock sync*: Redis's clock mapped onto ours (``clock``).
- *mode*: shared, hold, degraded or grace, for a replica in a fleet (``modes``).
- *pause*: no slot at all for a tenant Tencent locked out or refused; *defer*: no slot for a
  while after Tencent said "too frequent".

Embedded (one process, in-process schedules) or fleet (Redis, with degraded modes) is chosen at
construction (``EmbeddedBudget`` or ``modes.FleetBudget``); the service turns a ``Refusal`` or
``Paused`` into its errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.budget.dispatch import BudgetStore, Dispatcher, Moved
from gateway.budget.fleet import BEAT_EVERY, FORGET_AFTER, LAPSE_AFTER, Fleet, Members
from gateway.budget.schedule import Booking, Grant, Paused, Refusal, Share, interval_for
from gateway.budget.slots import SEND_SHARE, Launch, SendNow, Slot, handed_back, slot_for

HORIZON = 0.06  # seconds: how far ahead a caller within its share books (callers wait in the replica)
BORROW = 0.008  # seconds: how far ahead a free slot may be taken by a caller over its share

__all__ = [
    "BEAT_EVERY",
    "BORROW",
    "FORGET_AFTER",
    "HORIZON",
    "LAPSE_AFTER",
    "SEND_SHARE",
    "Booking",
    "Budget",
    "BudgetStore",
    "Dispatcher",
    "EmbeddedBudget",
    "Fleet",
    "Grant",
    "Launch",
    "Members",
    "Paused",
    "Refusal",
    "SendNow",
    "Share",
    "Slot",
    "interval_for",
]


class Budget(Protocol):
    """What the service needs of a budget, embedded or fleet."""

    async def acquire(
        self,
        scope: str,
        api: str,
        *,
        qps: int,
        max_wait: float,
        share: Share,
        forfeit: Slot | None = None,
        send: SendNow | None = None,
    ) -> Slot | Refusal | Paused:
        """Wait for a slot (at most ``max_wait``); ``forfeit``: this caller's previous slot,
        which its call could not use; ``send``: writes the call, nothing awaited, the moment the
        slot comes (``slots.Launch``; the slot then says ``sent``)."""
        ...

    async def defer(self, scope: str, api: str, pause: float) -> None: ...

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None: ...


class EmbeddedBudget:
    """One process, its schedules in process: the fair dispatcher over the memory store."""

    def __init__(
        self,
        *,
        store: BudgetStore,
        jitter: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        horizon: float = HORIZON,
        borrow: float = BORROW,
    ) -> None:
        self._store = store
        self.dispatcher = Dispatcher(
            store=store, horizon=horizon, borrow=borrow, clock=clock, sleep=sleep, own_clock=True
        )
        self._jitter = jitter
        self._clock = clock
        self._sleep = sleep

    async def acquire(
        self,
        scope: str,
        api: str,
        *,
        qps: int,
        max_wait: float,
        share: Share,
        forfeit: Slot | None = None,
        send: SendNow | None = None,
    ) -> Slot | Refusal | Paused:
        began = self._clock()
        unbook = handed_back(forfeit, shared=False)
        interval = interval_for(qps, self._jitter)
        launch = None if send is None else Launch(send, window=self._jitter * SEND_SHARE, clock=self._clock)
        got = await self.dispatcher.acquire(
            scope, api, share, interval=interval, max_wait=max_wait, unbook=unbook, on_grant=launch
        )
        if isinstance(got, Moved):  # (an embedded schedule is never given up)
            return Refusal(retry_after=1.0)
        return await slot_for(
            got, began, shared=False, jitter=self._jitter, clock=self._clock, sleep=self._sleep, launch=launch
        )

    async def defer(self, scope: str, api: str, pause: float) -> None:
        await self._store.defer(scope, api, pause)

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None:
        await self._store.pause(scope, seconds, code, reason)
