"""A replica's budget in a fleet: the shared schedule in Redis, and what it does without it.

The mode is explicit (``Mode``), and follows from the breaker, the fleet and the clock:

    SHARED    Redis answers: slots come from the fleet's schedule, booked at the limit less the
              shares of replicas that fell silent (each may be pacing on its own).
    HOLD      Redis is lost: no local slot until the others have noticed this replica fell
              silent and the slots they booked before that have passed (``Fleet.unseen_for``).
    DEGRADED  Redis is lost: slots come from this replica's own schedule at its share, the limit
              over the larger of GATEWAY_MAX_REPLICAS and the largest fleet seen.
    GRACE     Redis is back (or being tried again): shared slots, but at the share's rate, for
              ``grace`` seconds, since other replicas may still be pacing alone. Waived once a
              heartbeat shows the record of beats older than the protection lasts (every
              replica still cut off is then counted as lapsed).

Back from HOLD or DEGRADED, a replica first pushes the shared schedule past the local slots it
granted (only those: the hold before them is no slot), then beats, and the others stop leaving
room for it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Sequence

from gateway.budget.dispatch import BudgetStore, Dispatcher, Granted, Moved
from gateway.budget.fleet import FORGET_AFTER, Fleet
from gateway.budget.schedule import Booked, Booking, Paused, Refusal, Share, Terms, Want, interval_for
from gateway.budget.slots import SEND_SHARE, Launch, SendNow, Slot, handed_back, slot_for
from gateway.health import Breaker, StoreUnavailable

log = logging.getLogger("gateway.budget")


class Answered:
    """The shared budget store as the breaker sees it: every answer from Redis is a success.

    Only an answer shows Redis reachable. The shared dispatcher also answers callers from what
    it already knows (a refusal when its queue cannot serve them in time, a grant from a booking
    made for others); counted as successes, those closed the breaker while Redis was down or
    stuck, and the replica went back and forth between its own schedule and the fleet's (seen in
    the fleet tests: "redis reachable again" a second after Redis was killed)."""

    def __init__(self, store: BudgetStore, breaker: Breaker) -> None:
        self._store = store
        self._breaker = breaker

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
        booked = await self._store.book(scope, api, wants, terms, unbook, then=then)
        self._breaker.succeeded(by="a budget booking")
        return booked

    async def defer(self, scope: str, api: str, pause: float) -> None:
        await self._store.defer(scope, api, pause)
        self._breaker.succeeded(by="a schedule's push")

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None:
        await self._store.pause(scope, seconds, code, reason)
        self._breaker.succeeded(by="a tenant's pause")


class Mode(enum.Enum):
    SHARED = "shared"
    HOLD = "hold"
    DEGRADED = "degraded"
    GRACE = "grace"


class FleetBudget:
    """One replica's budget when Redis holds the fleet's schedules (see the module docstring)."""

    def __init__(
        self,
        *,
        shared: Dispatcher,
        shared_store: BudgetStore,
        local: Dispatcher,
        local_store: BudgetStore,
        breaker: Breaker,
        fleet: Fleet,
        grace: float,
        horizon: float,
        store_timeout: float,
        jitter: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        """``horizon``: the furthest ahead any replica books; ``store_timeout``: the longest a
        Redis call may take (a heartbeat's included)."""
        self._shared, self._shared_store = shared, shared_store
        self._local, self._local_store = local, local_store
        self._breaker = breaker
        self.fleet = fleet
        self._grace = grace
        self._horizon = horizon
        self._store_timeout = store_timeout
        self._jitter = jitter
        self._clock = clock
        self._sleep = sleep
        # Keys booked locally while cut off: on rejoining, the shared schedule must start after
        # the last local slot granted (the local dispatcher knows when that ends).
        self._local_only: set[tuple[str, str]] = set()
        self._grace_waived_for: float | None = None  # the recovery whose grace the heartbeats made needless
        self._last_mode = Mode.SHARED

    def mode(self) -> Mode:
        """The mode now (a change is logged: outages are rare, and their transitions are what
        explains a replica's pace around one)."""
        mode = self._mode()
        if mode is not self._last_mode:
            log.warning("budget mode %s -> %s", self._last_mode.value, mode.value)
            self._last_mode = mode
        return mode

    def _mode(self) -> Mode:
        if self._breaker.degraded:
            if self._breaker.allows():
                return Mode.GRACE  # trying Redis again: at the share's rate
            return Mode.HOLD if self.fleet.unseen_for(self._store_timeout, self._horizon) > 0 else Mode.DEGRADED
        recovered = self._breaker.recovered_at
        if recovered is not None and self._clock() - recovered < self._grace and self._grace_waived_for != recovered:
            return Mode.GRACE
        return Mode.SHARED

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
        """Wait for a slot, at most ``max_wait`` (plus one Redis timeout if Redis fails meanwhile).
        ``send``: the call, sent the moment its slot comes (``slots.Launch``).

        A caller moved from the local schedule to ask Redis (``_rejoin``) may be moved again
        while Redis flaps, each time after a Redis timeout, and a caller whose booking failed
        while the breaker stays closed asks Redis again: past ``max_wait`` it is refused."""
        began = self._clock()
        until = began + max_wait
        launch = None if send is None else Launch(send, window=self._jitter * SEND_SHARE, clock=self._clock)
        while True:
            got = await self._acquire(scope, api, qps=qps, until=until, share=share, forfeit=forfeit, launch=launch)
            if not isinstance(got, Moved):
                return got if isinstance(got, Refusal | Paused) else got._replace(waited=self._clock() - began)
            if self._clock() >= until:
                return Refusal(retry_after=self._unit(qps))
            forfeit = None  # (evicted from the local schedule, unbooked: Redis is back, ask it)

    async def _acquire(
        self, scope: str, api: str, *, qps: int, until: float, share: Share, forfeit: Slot | None, launch: Launch | None
    ) -> Slot | Refusal | Paused | Moved:
        began = self._clock()
        key = (scope, api)
        max_wait = max(0.0, until - began)
        mode = self.mode()
        if mode in (Mode.SHARED, Mode.GRACE):
            interval = self._shared_interval(qps) if mode is Mode.SHARED else self._degraded_interval(qps)
            try:
                if key in self._local_only:  # the first shared booking after a degraded period
                    await self._rejoin(key)
                unbook = handed_back(forfeit, shared=True)
                got = await self._shared.acquire(
                    scope,
                    api,
                    share,
                    interval=interval,
                    max_wait=max_wait,
                    unbook=unbook,
                    unit=self._unit(qps),
                    on_grant=launch,
                )
            except StoreUnavailable as exc:
                self._breaker.failed(exc)
                if not self._breaker.degraded:
                    # One late answer (a burst, a pause), not an outage: ask Redis again for
                    # what is left of the wait. On the local schedule, it would have waited for
                    # the others to notice a silence that never was (``Fleet.unseen_for``, ~1 s),
                    # and been refused: a quiet caller's 429 beside a noisy one.
                    return Moved()
            else:  # (a success only if Redis answered: ``Answered``)
                return await self._hold(got, began, shared=True, launch=launch)
        if key not in self._local_only:
            # The first local booking of a degraded period: start after the shared slots still
            # out, and after the others have noticed this replica fell silent.
            self._local_only.add(key)
            hold = self.fleet.unseen_for(self._store_timeout, self._horizon)
            await self._local_store.defer(scope, api, max(0.0, self._shared.ahead(scope, api), hold))
        got = await self._local.acquire(
            scope,
            api,
            share,
            interval=self._degraded_interval(qps),
            max_wait=max(0.0, until - self._clock()),
            unbook=handed_back(forfeit, shared=False),
            unit=self._unit(qps),
            on_grant=launch,
        )
        return await self._hold(got, began, shared=False, launch=launch)

    async def _hold(
        self, got: Granted | Refusal | Paused | Moved, began: float, *, shared: bool, launch: Launch | None
    ) -> Slot | Refusal | Paused | Moved:
        """Hold a granted slot until its moment (``slots.slot_for``); a Moved caller asks again."""
        if isinstance(got, Moved):
            return got
        return await slot_for(
            got, began, shared=shared, jitter=self._jitter, clock=self._clock, sleep=self._sleep, launch=launch
        )

    def _unit(self, qps: int) -> float:
        """The slot spacing at the full limit: what a slot costs its caller's fair TAT, whatever
        the mode (a replica in grace books wider slots; its callers are not charged for that)."""
        return interval_for(qps, self._jitter)

    def _shared_interval(self, qps: int) -> float:
        """The shared schedule's spacing: the limit less the shares of replicas that fell silent."""
        share = max(1, qps // self.fleet.share)
        return interval_for(max(share, qps - self.fleet.lapsed * share), self._jitter)

    def _degraded_interval(self, qps: int) -> float:
        """A replica's slot spacing when it may only count on its share of the limit."""
        return interval_for(max(1, qps // self.fleet.share), self._jitter)

    async def heartbeat(self) -> None:
        """One beat in Redis (``fleet.BEAT_EVERY``). Back from a degraded period, this replica
        first pushes the shared schedules past its own local slots: once it beats, the others
        stop leaving room for it."""
        if not self._breaker.allows():
            return
        try:
            for key in list(self._local_only):
                await self._rejoin(key)
            await self.fleet.beat()
        except StoreUnavailable as exc:
            self._breaker.failed(exc)
            return
        self._breaker.succeeded(by="a heartbeat")
        recovered = self._breaker.recovered_at
        if self.fleet.kept_for >= FORGET_AFTER and recovered is not None:
            # Every replica still pacing alone is in the record, counted as lapsed: the grace
            # after the last recovery is not needed.
            self._grace_waived_for = recovered

    async def _rejoin(self, key: tuple[str, str]) -> None:
        """Back on the shared schedule: callers still waiting for a local slot are sent to ask
        Redis (a local slot granted from now on would not be covered), and the shared schedule is
        pushed past the local slots this replica granted for ``key`` (only those: pushing the
        fleet's schedule past the hold would stall it).

        Until it is done, the key stays local: while the push was under way the breaker may have
        opened again (a trial's other call failing) and callers queued for local slots anew. So
        after each push the queue is emptied again and, if slots were granted meanwhile, the
        schedule pushed past them too; the key leaves ``_local_only`` in the same step as the
        last eviction. (Left queued, they went on at the local pace beside the shared slots: a
        fleet test saw 260 calls a second after a Redis stall.)"""
        pushed = 0.0  # the end of the local slots the shared schedule was pushed past, our clock
        while True:
            self._local.evict(*key)
            ahead = self._local.ahead(*key)
            end = self._clock() + ahead
            if ahead <= 0 or end <= pushed:
                break
            await self._shared_store.defer(*key, ahead)
            pushed = end
        self._local_only.discard(key)  # (a concurrent caller may have rejoined it meanwhile)

    async def leave(self) -> None:
        if self._breaker.allows():
            await self.fleet.leave()

    async def defer(self, scope: str, api: str, pause: float) -> None:
        """Tencent said "too frequent": nobody gets a slot for ``pause`` seconds."""
        await self._both(lambda store: store.defer(scope, api, pause))

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None:
        """No call for the tenant for ``seconds`` (Tencent locked it out or rejected it)."""
        await self._both(lambda store: store.pause(scope, seconds, code, reason))

    async def _both(self, action: Callable[[BudgetStore], Awaitable[None]]) -> None:
        await action(self._local_store)
        if self._breaker.allows():
            try:
                await action(self._shared_store)
            except StoreUnavailable as exc:
                self._breaker.failed(exc)
