"""The per-(SDKAppID, API) request budget: GCRA with reservation, pacing callers.

Why these numbers. Tencent refuses (60007) once an API has seen ``limit`` calls in a second. A
slot booked here is not the moment Tencent sees the call: the caller wakes, signs and sends, and
that lands up to ``jitter`` seconds later. So calls whose *slots* fall in a window of
``1 s + jitter`` may all *arrive* in one sliding second. Slots are spaced with no burst at

    interval = (1 s + jitter) / (limit - 0.5)

so that such a window holds at most ``floor((1 + jitter) / interval) + 1 = limit`` slots: no
sliding second at Tencent ever holds more than ``limit`` calls, retries included (every retry
books its own slot). At the default 10 ms jitter that uses 98.8% of 200/s. A caller who wakes
later than half the jitter after its slot books a new one rather than crowd the next second.

The maths is a pure function of the stored theoretical arrival time (TAT) and ``now``; the
stores make it atomic (a lock-free dict in process, one Lua script in Redis using Redis's clock).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from gateway.errors import RateLimited


class Grant(msgspec.Struct, frozen=True):
    """A booked slot: wait this long, then call."""

    wait: float


class Refusal(msgspec.Struct, frozen=True):
    """No slot within the wait cap; nothing was booked. Retry after this many seconds."""

    retry_after: float


def interval_for(limit: int, jitter: float) -> float:
    """Seconds between slots so that no sliding second holds more than ``limit`` arrivals."""
    return (1.0 + jitter) / (limit - 0.5)


def reserve(tat: float, now: float, interval: float, max_wait: float) -> tuple[float, Grant | Refusal]:
    """GCRA with reservation and no burst: the new TAT and the decision for one call."""
    start = max(tat, now)
    wait = start - now
    if wait > max_wait:
        return tat, Refusal(retry_after=wait - max_wait)
    return start + interval, Grant(wait=wait)


def defer(tat: float, now: float, pause: float) -> float:
    """Push the schedule so that no slot is granted before ``now + pause``."""
    return max(tat, now + pause)


class BudgetStore(Protocol):
    """Atomic GCRA state per key; the in-process and Redis stores implement it."""

    async def reserve(self, key: str, interval: float, max_wait: float) -> Grant | Refusal: ...

    async def defer(self, key: str, pause: float) -> None: ...


class Budget:
    """Paces callers of one (SDKAppID, API) key to the budget, waiting at most the cap."""

    def __init__(
        self,
        *,
        store: BudgetStore,
        jitter: float,
        share: int,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._store = store
        self._jitter = jitter
        self._share = share
        self._clock = clock
        self._sleep = sleep

    def interval(self, qps: int) -> float:
        """Slot spacing for a tenant's per-API qps, split ``share`` ways (degraded mode)."""
        return interval_for(max(1, qps // self._share), self._jitter)

    async def acquire(self, key: str, qps: int, max_wait: float) -> float:
        """Wait for a slot; return the seconds waited, or raise RateLimited past ``max_wait``."""
        interval = self.interval(qps)
        began = self._clock()
        while True:
            asked = self._clock()
            decision = await self._store.reserve(key, interval, max(0.0, max_wait - (asked - began)))
            if isinstance(decision, Refusal):
                raise RateLimited(
                    f"the request budget for {key.partition(':')[2]} is exhausted; try again shortly",
                    retry_after=max(1.0, math.ceil(decision.retry_after)),
                )
            if decision.wait > 0:
                await self._sleep(decision.wait)
            # Woken too late: the slot is gone, book another rather than crowd the next one.
            if self._clock() - (asked + decision.wait) <= self._jitter / 2:
                return self._clock() - began

    async def defer(self, key: str, pause: float) -> None:
        """Tencent said "too frequent": nobody gets a slot for ``pause`` seconds."""
        await self._store.defer(key, pause)
