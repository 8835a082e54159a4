"""The per-(SDKAppID, API) request budget: GCRA with reservation, pacing callers.

Why these numbers. Tencent refuses (60007) once an API has seen ``limit`` calls in a second. A
slot booked here is not the moment Tencent sees the call: the caller wakes and sends, and the
request crosses the network. If every call arrives between 0 and ``jitter`` seconds after its
slot, the calls that arrive in one sliding second had their slots in a window of
``1 s + jitter``. Slots are spaced with no burst at

    interval = (1 s + jitter) / limit   (plus a microsecond, so rounding never shortens it)

so that such a window holds at most ``limit`` slots: no sliding second at Tencent ever holds
more than ``limit`` calls, retries included (every retry books its own slot). That is also the
best any schedule can do without knowing which calls will be late: ``1 / (1 + jitter)`` of the
limit, 98.3% at the default 17 ms.

The bound holds only if calls really arrive within ``jitter``, so the gateway enforces its own
part of it: a call may leave at most a third of the jitter (``SEND_SHARE``) after its slot.
``Slot.send_by`` is that moment, and the upstream transport checks it right before it writes
the request's first byte (after any connect); a call that would leave later writes nothing,
forfeits its slot and books another (``service``). The other two thirds are for what the gateway
cannot check: the network to Tencent and the error of mapping Redis's clock onto ours (half the
best Redis round trip). Measured on a loaded 2-core machine (4 replicas, emulator, Redis and load
generator): slot to write p99 1.5-1.9 ms; write to arrival p99 0.7-2 ms, worst 10.3 ms; slot to
arrival worst 14.5 ms in eight 20 s runs (BENCHMARKS.md, "Budget").

The maths is a pure function of the stored theoretical arrival time (TAT) and ``now``; the
stores make it atomic (a dict in process, one Lua script in Redis using Redis's clock). A tenant
can also be *paused* (Tencent locked it out, or rejected its credentials): then no slot at all.

With a shared (Redis) store the budget is the fleet's. While Redis is unreachable each replica
paces on its own at ``limit // share``, the share being the larger of ``degraded_share`` (the
configured maximum fleet size, GATEWAY_MAX_REPLICAS) and the largest fleet its heartbeats saw in
the last ``FORGET_AFTER`` seconds (every replica in the record, lapsed ones included): a fleet
never told its size, or told too small a one, still stays within the limit. Slots already granted
by the shared schedule still go out, so the local schedule starts after them: the queue ahead of
the shared schedule when this replica last booked (at most the wait cap), carried forward to the
moment Redis failed. Replicas do not recover at the same instant, so for ``grace`` seconds
after a degraded period a replica books shared slots at that same reduced rate (each booking
takes ``degraded_share`` slots' time): shared and still-degraded replicas together then stay
within the limit. It also pushes the shared schedule past its own local slots, so neither
side's booked slots crowd the other's.

Redis may also fail for one replica only (a network partition, a broken node) while the others
still reach it. Every replica therefore beats in Redis every ``BEAT_EVERY`` seconds
(``heartbeat``), and learns how many others fell silent without leaving (``LAPSE_AFTER``): each
of those may be pacing on its own share, so the shared schedule is booked at the limit less
their shares. A replica cut off waits, before its first local slot, until the others have
noticed and the slots they booked at the full rate before that have passed (``_unseen_for``).
When it reaches Redis again it first pushes the shared schedules past its own local slots, then
beats. A replica that leaves cleanly says so; one that vanished is forgotten after
``FORGET_AFTER`` seconds, which bounds the protection: a replica cut off for longer than that
(an outage someone is paging about) is no longer counted by the others. The recovery's
``grace`` is waived once the record of beats has been kept for longer than ``FORGET_AFTER``:
every replica still cut off is then in it, counted as lapsed, unless it has been cut off for
longer than the protection lasts anyway. (For that long after Redis lost the record, the grace
stays: a replica cut off since before then is in no record.)

Grant times are on the store's clock (Redis's); ``ClockSync`` maps them onto ours from the
quickest round trips, so a slot's moment is known to within half a round trip and a slow reply
is not mistaken for a late caller.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

import msgspec

from gateway.errors import RateLimited, UpstreamLockedOut, UpstreamMisconfigured
from gateway.health import Breaker, StoreUnavailable

LOCKOUT_CODE = 70050
BEAT_EVERY = 0.5  # seconds between a replica's heartbeats in Redis
LAPSE_AFTER = 1.5  # a replica silent this long may be cut off from Redis, pacing on its own
FORGET_AFTER = 600.0  # ... and one silent this long is gone (a vanished pod stops costing budget)
SEND_SHARE = 1 / 3  # the share of the jitter a call may leave late; the rest is the network's


class Booking(NamedTuple):
    """What a grant did to its schedule, on the store's clock: it took the slot at ``start``
    and moved the schedule's TAT to ``end``. Handing it back (``unbook``) undoes that while
    nobody has booked after it."""

    start: float
    end: float


class Grant(msgspec.Struct, frozen=True):
    """A booked slot: wait this long, then call. ``at`` is the store's clock when it decided
    (Redis's for the shared store), so the slot's moment is ``at + wait`` on that clock."""

    wait: float
    at: float | None = None
    booking: Booking | None = None


class Refusal(msgspec.Struct, frozen=True):
    """No slot within the wait cap; nothing was booked. Retry after this many seconds."""

    retry_after: float


class Paused(msgspec.Struct, frozen=True):
    """The tenant is paused for ``left`` seconds because Tencent answered ``code``."""

    left: float
    code: int
    reason: str


Decision = Grant | Refusal | Paused


class Slot(NamedTuple):
    """A slot the caller now holds: it waited ``waited`` seconds, and its request must leave
    (its first byte be written) by ``send_by`` on the budget's clock, or not at all. A call that
    could not leave in time hands the slot back when it books the next (``Budget.acquire``)."""

    waited: float
    send_by: float
    booking: Booking | None = None
    shared: bool = False  # booked on the shared schedule (else on this replica's own)


def interval_for(limit: int, jitter: float) -> float:
    """Seconds between slots so that no sliding second holds more than ``limit`` arrivals, when
    each arrives up to ``jitter`` after its slot."""
    return (1.0 + jitter) / limit + 1e-6


def reserve(
    tat: float,
    now: float,
    interval: float,
    max_wait: float,
    *,
    at: float | None = None,
    unbook: Booking | None = None,
) -> tuple[float, Grant | Refusal]:
    """GCRA with reservation and no burst: the new TAT and the decision for one call.

    ``unbook``: a slot of this schedule that went unused (its call could not leave in time). If
    nobody booked after it (the TAT is still where it left it), the schedule goes back to that
    slot before booking: the slot was never spent, so the call may take the next free moment
    rather than a whole interval after the slot it gave back."""
    if unbook is not None and tat == unbook.end:
        tat = unbook.start
    start = max(tat, now)
    wait = start - now
    if wait > max_wait:
        return tat, Refusal(retry_after=wait - max_wait)
    end = start + interval
    return end, Grant(wait=wait, at=at, booking=Booking(start, end))


def defer(tat: float, now: float, pause: float) -> float:
    """Push the schedule so that no slot is granted before ``now + pause``."""
    return max(tat, now + pause)


class BudgetStore(Protocol):
    """Atomic GCRA state per (scope, api) and pauses per scope (scope = the SDKAppID)."""

    async def reserve(
        self, scope: str, api: str, interval: float, max_wait: float, unbook: Booking | None = None
    ) -> Decision:
        """Book a slot (see ``reserve``); ``unbook``: an unused slot of this schedule handed back."""
        ...

    async def defer(self, scope: str, api: str, pause: float) -> None: ...

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None: ...


class Members(Protocol):
    """The fleet's heartbeats (Redis)."""

    async def beat(self, replica: str, lapse_after: float, forget_after: float) -> tuple[int, float, int]:
        """Record this replica's beat: the number of others silent for over ``lapse_after``, for
        how many seconds the record of beats has been kept (it restarts if Redis loses it), and
        the fleet's size (every replica in the record, this one and the lapsed included)."""
        ...

    async def leave(self, replica: str) -> None: ...


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


class Budget:
    """Paces callers of one (SDKAppID, API) to the budget, waiting at most the cap."""

    def __init__(
        self,
        *,
        local: BudgetStore,
        shared: BudgetStore | None = None,
        breaker: Breaker | None = None,
        degraded_share: int = 1,
        grace: float = 0.0,
        members: Members | None = None,
        replica: str = "",
        booking_horizon: float = 0.0,
        store_timeout: float = 0.0,
        jitter: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        """``booking_horizon``: the furthest ahead any replica books (the wait cap);
        ``store_timeout``: the longest a Redis call may take (a heartbeat's included)."""
        self._local = local
        self._shared = shared
        self._breaker = breaker
        self._configured_share = degraded_share if shared is not None else 1
        self._grace = grace
        self._members = members
        self._replica = replica
        self._horizon = booking_horizon
        self._store_timeout = store_timeout
        self._jitter = jitter
        self._clock = clock
        self._sleep = sleep
        self._queue: dict[tuple[str, str], float] = {}  # how far ahead the shared schedule was booked
        # Keys booked locally while degraded, with the end of their last local booking (our
        # clock; -inf before the first): the shared schedule must start after it on rejoining.
        self._local_only: dict[tuple[str, str], float] = {}
        self._sync = ClockSync()
        self.lapsed = 0  # other replicas silent in Redis: each may be pacing on its own share
        self.fleet_seen = 1  # the largest fleet the heartbeats showed within FORGET_AFTER ...
        self._fleet_seen_at = float("-inf")  # ... and when it was seen
        self.beats = 0  # heartbeats sent (Redis round trips that no call made)
        self._last_beat: float | None = None
        self._grace_waived_for: float | None = None  # the recovery whose grace the heartbeats made needless

    async def acquire(self, scope: str, api: str, qps: int, max_wait: float, forfeit: Slot | None = None) -> Slot:
        """Wait for a slot. RateLimited past ``max_wait``; UpstreamLockedOut /
        UpstreamMisconfigured while the tenant is paused. A caller that wakes past the slot's
        ``send_by`` still gets it: the send-time check is the one that counts (``service``).

        ``forfeit``: this caller's previous slot, which its call could not use (it would have
        left after ``send_by``: a connect, a stalled loop). Handed back, it is undone if nobody
        booked after it, so a late call on a quiet schedule goes now instead of an interval
        later (at 1 call/s, a second later, past any short wait cap)."""
        began = self._clock()
        decision, slot, shared = await self._reserve(scope, api, qps, max_wait, forfeit)
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
        return Slot(self._clock() - began, slot + self._jitter * SEND_SHARE, decision.booking, shared)

    async def _reserve(
        self, scope: str, api: str, qps: int, max_wait: float, forfeit: Slot | None
    ) -> tuple[Decision, float, bool]:
        """The decision, for a grant its slot on our clock, and whether the shared store made it."""
        key = (scope, api)
        if self._shared is not None and self._breaker is not None and self._breaker.allows():
            recovered = self._breaker.recovered_at
            in_grace = self._breaker.degraded or (  # degraded: this call may end it, and starts the grace
                recovered is not None
                and self._clock() - recovered < self._grace
                and self._grace_waived_for != recovered
            )
            interval = self._degraded_interval(qps) if in_grace else self._shared_interval(qps)
            try:
                if key in self._local_only:  # first shared booking after a degraded period
                    await self._rejoin(self._shared, key)
                sent = self._clock()
                decision = await self._shared.reserve(
                    scope, api, interval, max_wait, _handed_back(forfeit, shared=True)
                )
                received = self._clock()
            except StoreUnavailable as exc:
                self._breaker.failed(exc)
            else:
                self._breaker.succeeded()
                if not isinstance(decision, Grant):
                    return decision, received, True
                if decision.at is None:  # a store that does not say when it decided
                    return decision, sent + decision.wait, True  # (the conservative reading)
                self._sync.sample(sent, received, decision.at)
                slot = self._sync.local(decision.at + decision.wait)
                self._queue[key] = slot + interval - received
                return decision, slot, True
        if self._shared is not None and key not in self._local_only:
            # The first local booking of a degraded period: start after the shared slots still
            # out, and after the others have noticed this replica fell silent (_unseen_for).
            self._local_only[key] = float("-inf")
            await self._local.defer(scope, api, max(0.0, self._queue.get(key, 0.0), self._unseen_for()))
        now = self._clock()
        unbook = _handed_back(forfeit, shared=False)
        decision = await self._local.reserve(scope, api, self._degraded_interval(qps), max_wait, unbook)
        if not isinstance(decision, Grant):
            return decision, now, False
        if self._shared is not None and decision.booking is not None:
            self._local_only[key] = decision.booking.end  # the local store's clock is ours
        return decision, now + decision.wait, False

    @property
    def _share(self) -> int:
        """How many replicas may be pacing alone: the configured fleet size or the largest seen."""
        return max(self._configured_share, self.fleet_seen) if self._shared is not None else 1

    def _saw_fleet(self, size: int) -> None:
        """Remember the largest fleet seen; a larger one seen over FORGET_AFTER ago gives way to
        today's (a fleet that scaled down stops costing its old share after that long)."""
        now = self._clock()
        if size >= self.fleet_seen or now - self._fleet_seen_at > FORGET_AFTER:
            self.fleet_seen, self._fleet_seen_at = max(1, size), now

    def _shared_interval(self, qps: int) -> float:
        """The shared schedule's spacing: the limit less the shares of replicas that fell silent."""
        share = max(1, qps // self._share)
        return interval_for(max(share, qps - self.lapsed * share), self._jitter)

    def _unseen_for(self) -> float:
        """Seconds until every other replica has counted this one as silent (its last beat, the
        lapse, their next beat, a slow Redis call) and the slots they booked at the full rate
        before that (up to the booking horizon) have passed. Zero if it never beat: nobody
        counts on it then (a replica that has never reached Redis can't be protected); zero in a
        fleet of one (a share of 1: configured so, and no other replica ever seen)."""
        if self._last_beat is None or self._share == 1:
            return 0.0
        noticed = self._last_beat + LAPSE_AFTER + BEAT_EVERY + self._store_timeout
        return noticed + self._horizon - self._clock()

    async def heartbeat(self) -> None:
        """One beat in Redis (``BEAT_EVERY``). Back from a degraded period, this replica first
        pushes the shared schedules past its own local slots: once it beats, the others stop
        leaving room for it."""
        if self._members is None or self._shared is None or self._breaker is None or not self._breaker.allows():
            return
        try:
            for key in list(self._local_only):
                await self._rejoin(self._shared, key)
            self.beats += 1
            lapsed, kept_for, size = await self._members.beat(self._replica, LAPSE_AFTER, FORGET_AFTER)
        except StoreUnavailable as exc:
            self._breaker.failed(exc)
            return
        self._breaker.succeeded()
        recovered = self._breaker.recovered_at
        if kept_for >= FORGET_AFTER and recovered is not None:
            # Every replica still pacing alone is in the record, counted as lapsed: the grace
            # after the last recovery is not needed.
            self._grace_waived_for = recovered
        self._saw_fleet(size)
        self.lapsed, self._last_beat = lapsed, self._clock()

    async def _rejoin(self, shared: BudgetStore, key: tuple[str, str]) -> None:
        """Back on the shared schedule: push it past the local slots this replica granted for
        ``key`` (only those: the hold before the first of them is no slot, and pushing the
        fleet's schedule past it would stall every replica for seconds)."""
        ahead = self._local_only[key] - self._clock()
        if ahead > 0:
            await shared.defer(*key, ahead)
        self._local_only.pop(key, None)  # (a concurrent caller may have rejoined it meanwhile)

    async def leave(self) -> None:
        """On a clean shutdown: the others need not leave room for this replica any more."""
        if self._members is not None and self._breaker is not None and self._breaker.allows():
            with contextlib.suppress(StoreUnavailable):
                await self._members.leave(self._replica)

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


def _handed_back(forfeit: Slot | None, *, shared: bool) -> Booking | None:
    """The unused booking to undo on the schedule about to be booked: only that schedule's own
    (a slot of the shared schedule means nothing to this replica's, nor the reverse)."""
    return forfeit.booking if forfeit is not None and forfeit.shared == shared else None
