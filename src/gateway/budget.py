"""The per-(SDKAppID, API) request budget: GCRA with reservation, pacing callers.

Why these numbers. Tencent refuses (60007) once an API has seen ``limit`` calls in a second. A
slot booked here is not the moment Tencent sees the call: the caller wakes, signs and sends, and
that lands up to ``jitter`` seconds later. So calls whose *slots* fall in a window of
``1 s + jitter`` may all *arrive* in one sliding second. Slots are spaced with no burst at

    interval = (1 s + jitter) / (limit - 0.5)

so that such a window holds at most ``floor((1 + jitter) / interval) + 1 = limit`` slots: no
sliding second at Tencent ever holds more than ``limit`` calls, retries included (every retry
books its own slot). A caller who wakes more than a quarter of the jitter after its slot books a
new one rather than crowd the next second; the rest of the jitter is for the send itself. At the
default 20 ms that uses 97.8% of 200/s (measured send lag on a loaded 2-core machine: median
0.9 ms, p99 2 ms, worst seen 13-20 ms; BENCHMARKS.md).

The maths is a pure function of the stored theoretical arrival time (TAT) and ``now``; the
stores make it atomic (a dict in process, one Lua script in Redis using Redis's clock). A tenant
can also be *paused* (Tencent locked it out, or rejected its credentials): then no slot at all.

With a shared (Redis) store the budget is the fleet's. While Redis is unreachable each replica
paces on its own at ``limit // degraded_share`` (the fleet's maximum size). Slots already granted
by the shared schedule still go out, so the local schedule starts after them: the queue ahead of
the shared schedule when this replica last booked (at most the wait cap), carried forward to the
moment Redis failed. Replicas do not recover at the same instant, so for ``grace`` seconds
after a degraded period a replica books shared slots at that same reduced rate (each booking
takes ``degraded_share`` slots' time): shared and still-degraded replicas together then stay
within the limit. It also pushes the shared schedule past its own local slots, so neither
side's booked slots crowd the other's.

Grant times are on the store's clock (Redis's); ``ClockSync`` maps them onto ours from the
quickest round trips, so a slot's moment is known to within half a round trip and a slow reply
is not mistaken for a late caller.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from gateway.errors import RateLimited, UpstreamLockedOut, UpstreamMisconfigured
from gateway.health import Breaker, StoreUnavailable

LOCKOUT_CODE = 70050
ON_TIME = 0.25  # the share of the jitter a caller may wake late and still use its slot


class Grant(msgspec.Struct, frozen=True):
    """A booked slot: wait this long, then call. ``at`` is the store's clock when it decided
    (Redis's for the shared store), so the slot's moment is ``at + wait`` on that clock."""

    wait: float
    at: float | None = None


class Refusal(msgspec.Struct, frozen=True):
    """No slot within the wait cap; nothing was booked. Retry after this many seconds."""

    retry_after: float


class Paused(msgspec.Struct, frozen=True):
    """The tenant is paused for ``left`` seconds because Tencent answered ``code``."""

    left: float
    code: int
    reason: str


Decision = Grant | Refusal | Paused


def interval_for(limit: int, jitter: float) -> float:
    """Seconds between slots so that no sliding second holds more than ``limit`` arrivals."""
    return (1.0 + jitter) / (limit - 0.5)


def reserve(
    tat: float, now: float, interval: float, max_wait: float, *, at: float | None = None
) -> tuple[float, Grant | Refusal]:
    """GCRA with reservation and no burst: the new TAT and the decision for one call."""
    start = max(tat, now)
    wait = start - now
    if wait > max_wait:
        return tat, Refusal(retry_after=wait - max_wait)
    return start + interval, Grant(wait=wait, at=at)


def defer(tat: float, now: float, pause: float) -> float:
    """Push the schedule so that no slot is granted before ``now + pause``."""
    return max(tat, now + pause)


class BudgetStore(Protocol):
    """Atomic GCRA state per (scope, api) and pauses per scope (scope = the SDKAppID)."""

    async def reserve(self, scope: str, api: str, interval: float, max_wait: float) -> Decision: ...

    async def defer(self, scope: str, api: str, pause: float) -> None: ...

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None: ...


class ClockSync:
    """Maps another clock (Redis's) onto ours, NTP-style, from the quickest round trips.

    A grant says when the store decided, on the store's clock. The store decided somewhere
    inside our round trip, so the offset is taken from the round trips with the least slack
    (the best of the last ``window`` seconds): its error is at most half of that round trip.
    """

    def __init__(self, window: float = 10.0) -> None:
        self._window = window
        self._offset = 0.0
        self._best = float("inf")
        self._best_at = float("-inf")

    def sample(self, sent: float, received: float, remote: float) -> None:
        rtt = received - sent
        if rtt <= self._best or received - self._best_at > self._window:
            self._offset = remote - (sent + received) / 2
            self._best, self._best_at = rtt, received

    def local(self, remote: float) -> float:
        return remote - self._offset


class LocalBudgetStore(BudgetStore, Protocol):
    def ahead(self, scope: str, api: str) -> float:
        """Seconds from now to the schedule's TAT (0 when idle)."""
        ...


class Budget:
    """Paces callers of one (SDKAppID, API) to the budget, waiting at most the cap."""

    def __init__(
        self,
        *,
        local: LocalBudgetStore,
        shared: BudgetStore | None = None,
        breaker: Breaker | None = None,
        degraded_share: int = 1,
        grace: float = 0.0,
        jitter: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._local = local
        self._shared = shared
        self._breaker = breaker
        self._share = degraded_share if shared is not None else 1
        self._grace = grace
        self._jitter = jitter
        self._clock = clock
        self._sleep = sleep
        self._queue: dict[tuple[str, str], float] = {}  # how far ahead the shared schedule was booked
        self._local_only: set[tuple[str, str]] = set()  # keys booked locally while degraded
        self._sync = ClockSync()

    async def acquire(self, scope: str, api: str, qps: int, max_wait: float) -> float:
        """Wait for a slot; return the seconds waited. RateLimited past ``max_wait``;
        UpstreamLockedOut / UpstreamMisconfigured while the tenant is paused."""
        began = self._clock()
        while True:
            asked = self._clock()
            decision, slot = await self._reserve(scope, api, qps, max(0.0, max_wait - (asked - began)))
            if isinstance(decision, Refusal):
                raise RateLimited(
                    f"the request budget for {api} is exhausted; try again shortly",
                    retry_after=max(1.0, math.ceil(decision.retry_after)),
                )
            if isinstance(decision, Paused):
                cls = UpstreamLockedOut if decision.code == LOCKOUT_CODE else UpstreamMisconfigured
                raise cls(f"calls to Tencent for this tenant are paused: {decision.reason}", retry_after=decision.left)
            wake = slot - self._clock()
            if wake > 0:
                await self._sleep(wake)
            # Woken too late: the slot is gone, book another rather than crowd the next one.
            if self._clock() - slot <= self._jitter * ON_TIME:
                return self._clock() - began

    async def _reserve(self, scope: str, api: str, qps: int, max_wait: float) -> tuple[Decision, float]:
        """The decision and, for a grant, its slot on our clock."""
        key = (scope, api)
        if self._shared is not None and self._breaker is not None and self._breaker.allows():
            recovered = self._breaker.recovered_at
            in_grace = recovered is not None and self._clock() - recovered < self._grace
            interval = self._degraded_interval(qps) if in_grace else interval_for(qps, self._jitter)
            try:
                if key in self._local_only:  # first shared booking after a degraded period
                    await self._shared.defer(scope, api, self._local.ahead(scope, api))
                    self._local_only.discard(key)
                sent = self._clock()
                decision = await self._shared.reserve(scope, api, interval, max_wait)
                received = self._clock()
            except StoreUnavailable as exc:
                self._breaker.failed(exc)
            else:
                self._breaker.succeeded()
                if not isinstance(decision, Grant):
                    return decision, received
                if decision.at is None:  # a store that does not say when it decided
                    return decision, sent + decision.wait  # (the conservative reading)
                self._sync.sample(sent, received, decision.at)
                slot = self._sync.local(decision.at + decision.wait)
                self._queue[key] = slot + interval - received
                return decision, slot
        if self._shared is not None and key not in self._local_only:
            # The first local booking of a degraded period: start after the shared slots still out.
            self._local_only.add(key)
            await self._local.defer(scope, api, max(0.0, self._queue.get(key, 0.0)))
        now = self._clock()
        decision = await self._local.reserve(scope, api, self._degraded_interval(qps), max_wait)
        return decision, now + decision.wait if isinstance(decision, Grant) else now

    def _degraded_interval(self, qps: int) -> float:
        """A replica's slot spacing when it may only count on its share of the limit."""
        return interval_for(max(1, qps // self._share), self._jitter)

    async def defer(self, scope: str, api: str, pause: float) -> None:
        """Tencent said "too frequent": nobody gets a slot for ``pause`` seconds."""
        await self._both(lambda store: store.defer(scope, api, pause))

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None:
        """No call for the tenant for ``seconds`` (Tencent locked it out or rejected it)."""
        await self._both(lambda store: store.pause(scope, seconds, code, reason))

    async def _both(self, action: Callable[[BudgetStore], Awaitable[None]]) -> None:
        await action(self._local)
        if self._shared is not None and self._breaker is not None and self._breaker.allows():
            try:
                await action(self._shared)
            except StoreUnavailable as exc:
                self._breaker.failed(exc)
