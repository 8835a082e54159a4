"""``create_app``: the one composition root. Everything else receives its collaborators."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from gateway import __version__, tracing
from gateway.api import MAX_BODY, ROUTES, EdgeMiddleware, Gateway, handle_error, openapi_router
from gateway.budget import (
    BEAT_EVERY,
    BORROW,
    HORIZON,
    SEND_SHARE,
    Budget,
    BudgetStore,
    Dispatcher,
    EmbeddedBudget,
    Fleet,
    Members,
)
from gateway.budget.modes import Answered, FleetBudget
from gateway.cache import RoomCache, RoomStore
from gateway.callbacks import Receiver, Seen
from gateway.catalogue.operations import DOCUMENTED
from gateway.errors import ConfigError
from gateway.events import EventLog, Hub
from gateway.health import Breaker
from gateway.idempotency import Keys, KeyStore
from gateway.metrics import Metrics, StateCollector
from gateway.overload import Overload
from gateway.reload import ConfigWatcher
from gateway.service import Policy, RoomService
from gateway.settings import Settings, settings_from_env
from gateway.signing import SignatureStore, Signer
from gateway.stores.failover import (
    FailoverEventLog,
    FailoverKeyStore,
    FailoverRoomStore,
    FailoverSeenStore,
    FailoverSignatureStore,
)
from gateway.stores.memory import (
    MemoryBudgetStore,
    MemoryEventLog,
    MemoryKeyStore,
    MemoryRoomStore,
    MemorySeenStore,
    MemorySignatureStore,
)
from gateway.stores.redis import (
    Batch,
    Redis,
    RedisBudgetStore,
    RedisEventLog,
    RedisKeyStore,
    RedisRoomStore,
    RedisSeenStore,
    RedisSignatureStore,
    connect,
)
from gateway.tenants import Directory, load_directory
from gateway.transport import PooledTransport, Sender, tls_context
from gateway.upstream import Upstream

log = logging.getLogger("gateway.app")


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Live Room Gateway",
        version=__version__,
        description="Tencent Live Engine rooms behind one budgeted, cached, signed internal API.",
        components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
        path="/schema",
        openapi_router=openapi_router(),
    )


class Stores(msgspec.Struct, frozen=True):
    """The signature, room, seen-callback, event and idempotency-key stores, and the shared budget
    store when Redis is configured."""

    signatures: SignatureStore
    rooms: RoomStore
    seen: Seen  # callbacks already acted on (duplicates are dropped)
    events: EventLog  # each tenant's room events
    keys: KeyStore  # Idempotency-Key claims and answers
    budget: BudgetStore | None = None
    members: Members | None = None
    redis: Redis | None = None


def build_stores(
    settings: Settings, breaker: Breaker, clock: Callable[[], float], wall_clock: Callable[[], float] = time.time
) -> Stores:
    """In-process stores (embedded mode), or Redis in front of them (several replicas)."""
    signatures = MemorySignatureStore(clock=clock)
    keep = settings.cache_ttl + settings.stale_ttl
    rooms = MemoryRoomStore(clock=clock, max_age=keep, max_rooms=settings.cache_max_rooms)
    keys = MemoryKeyStore(clock=clock, max_keys=settings.idempotency_max_keys)
    if not settings.redis_url:
        events = MemoryEventLog(
            wall_clock=wall_clock, keep=settings.events_keep, keep_seconds=settings.events_keep_seconds
        )
        return Stores(signatures=signatures, rooms=rooms, seen=MemorySeenStore(clock=clock), events=events, keys=keys)
    try:
        client = connect(settings.redis_url, timeout=settings.redis_timeout)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    redis = Redis(client, prefix=settings.redis_prefix, timeout=settings.redis_timeout)
    budget = RedisBudgetStore(redis)
    writes = Batch(redis)  # keyed writes' claims and answers and rooms' invalidations, in order
    return Stores(
        signatures=FailoverSignatureStore(shared=RedisSignatureStore(redis), local=signatures, breaker=breaker),
        seen=FailoverSeenStore(shared=RedisSeenStore(redis), local=MemorySeenStore(clock=clock), breaker=breaker),
        rooms=FailoverRoomStore(shared=RedisRoomStore(redis, keep=keep, batch=writes), local=rooms, breaker=breaker),
        events=FailoverEventLog(
            shared=RedisEventLog(
                redis, keep=settings.events_keep, keep_seconds=settings.events_keep_seconds, wall_clock=wall_clock
            ),
            breaker=breaker,
            hold=settings.events_hold,
        ),
        keys=FailoverKeyStore(shared=RedisKeyStore(redis, batch=writes), local=keys, breaker=breaker),
        budget=budget,
        members=budget,
        redis=redis,
    )


def build_budget(
    settings: Settings, stores: Stores, breaker: Breaker, clock: Callable[[], float]
) -> tuple[Budget, FleetBudget | None, list[Dispatcher]]:
    """The embedded budget, or a replica's share of the fleet's (Redis configured): decided here,
    once. Also the fleet budget (heartbeats) and the dispatchers (their store calls are counted)."""
    local_store = MemoryBudgetStore(clock=clock)
    if stores.budget is None:
        embedded = EmbeddedBudget(store=local_store, jitter=settings.budget_jitter, clock=clock, sleep=asyncio.sleep)
        return embedded, None, [embedded.dispatcher]
    window = settings.budget_jitter * SEND_SHARE  # a slot's send window: the shared bookings' lead keeps within it
    shared_store = Answered(stores.budget, breaker)  # (Redis's answers close the breaker, nothing else)
    shared = Dispatcher(
        store=shared_store, horizon=HORIZON, borrow=BORROW, clock=clock, sleep=asyncio.sleep, window=window
    )
    local = Dispatcher(
        store=local_store, horizon=HORIZON, borrow=BORROW, clock=clock, sleep=asyncio.sleep, own_clock=True
    )
    fleet = FleetBudget(
        shared=shared,
        shared_store=shared_store,
        local=local,
        local_store=local_store,
        breaker=breaker,
        fleet=Fleet(
            members=stores.members,
            replica=f"{socket.gethostname()}:{os.getpid()}",  # a pod restarted in place is the same replica
            configured=settings.max_replicas,
            clock=clock,
        ),
        grace=settings.budget_max_wait + 2 * settings.redis_cool_off,
        horizon=HORIZON,
        store_timeout=settings.redis_timeout,
        jitter=settings.budget_jitter,
        clock=clock,
        sleep=asyncio.sleep,
    )
    return fleet, fleet, [shared, local]


def _pooled(settings: Settings) -> Callable[[], Sender]:
    """The production transport's factory, its TLS settings checked now (a bad CA file stops start-up)."""
    try:
        tls = tls_context(settings.upstream_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"invalid setting GATEWAY_UPSTREAM_CA_FILE: cannot load {settings.upstream_ca_file!r} ({exc})"
        ) from exc
    log.info(
        "upstream TLS",
        extra={"fields": {"ca_file": settings.upstream_ca_file or "system default", "minimum_version": "TLSv1.2"}},
    )
    return lambda: PooledTransport(connections=settings.upstream_connections, tls=tls)


async def _repeat(every: float, action: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``action`` every ``every`` seconds until cancelled, logging (not stopping at) failures."""
    while True:
        try:
            await action()
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(every)


def _upstream(tracer: Tracer | None, **options: Any) -> Upstream:
    return Upstream(**options) if tracer is None else tracing.TracedUpstream(tracer=tracer, **options)


def _room_cache(tracer: Tracer | None, what: str, **options: Any) -> RoomCache:
    return RoomCache(**options) if tracer is None else tracing.TracedRoomCache(tracer=tracer, what=what, **options)


def _receiver(tracer: Tracer | None, *, events: EventLog, **options: Any) -> Receiver:
    """The callback receiver; traced, its publications are too (the hub's reads are not)."""
    if tracer is None:
        return Receiver(events=events, **options)
    return tracing.TracedReceiver(tracer=tracer, events=tracing.TracedEventLog(events, tracer=tracer), **options)


def create_app(
    settings: Settings | None = None,
    *,
    env: Mapping[str, str] | None = None,
    directory: Directory | None = None,
    transport_factory: Callable[[], Sender] | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> Litestar:
    """Build the app. ``directory`` (tenants and callers) is loaded from ``settings.config`` at
    start-up when not given; ``transport_factory`` replaces the pooled upstream transport."""
    env = os.environ if env is None else env
    settings = settings or settings_from_env(env)
    rng = random.Random()
    breaker = Breaker(cool_off=settings.redis_cool_off, clock=clock)
    stores = build_stores(settings, breaker, clock, wall_clock)
    metrics = Metrics(CollectorRegistry())
    provider = tracing.provider_from_env(env)  # None: tracing off, and nothing below is traced
    tracer = None if provider is None else provider.get_tracer("gateway", __version__)
    upstream = _upstream(
        tracer,
        transport_factory=transport_factory or _pooled(settings),
        random32=lambda: rng.getrandbits(32),
        metrics=metrics,
        clock=clock,
    )
    signer = Signer(
        store=stores.signatures, ttl=settings.usersig_ttl, margin=settings.usersig_refresh_margin, wall_clock=wall_clock
    )
    cache = _room_cache(
        tracer,
        "room",
        store=stores.rooms,
        ttl=settings.cache_ttl,
        stale_ttl=settings.stale_ttl,
        lock_ttl=settings.fill_lock_ttl,
    )
    lists = _room_cache(  # (in the room store, which keeps entries cache_ttl + stale_ttl at most)
        tracer,
        "room list",
        store=stores.rooms,
        ttl=settings.room_list_ttl,
        stale_ttl=settings.stale_ttl,
        lock_ttl=settings.fill_lock_ttl,
    )
    budget, fleet_budget, dispatchers = build_budget(settings, stores, breaker, clock)
    if tracer is not None:
        budget = tracing.TracedBudget(budget, tracer=tracer, clock=clock)
    keys = Keys(
        store=stores.keys,
        ttl=settings.idempotency_ttl,
        lease=settings.deadline,  # a call ends by its deadline; a claim lapses after its calls' (and one more)
        wait=settings.budget_max_wait,
        metrics=metrics,
        clock=clock,
        sleep=asyncio.sleep,
    )
    service = RoomService(
        upstream=upstream,
        signer=signer,
        budget=budget,
        cache=cache,
        lists=lists,
        keys=keys,
        policy=Policy(
            deadline=settings.deadline,
            upstream_timeout=settings.upstream_timeout,
            max_wait=settings.budget_max_wait,
            attempts=settings.retry_attempts,
            backoff=settings.retry_backoff,
            backoff_max=settings.retry_backoff_max,
            lockout=settings.lockout_seconds,
            misconfig_cooldown=settings.misconfig_cooldown,
            rate_limit_pause=settings.rate_limit_pause,
        ),
        metrics=metrics,
        clock=clock,
        sleep=asyncio.sleep,
        uniform=rng.uniform,
    )
    callbacks = _receiver(
        tracer, cache=cache, seen=stores.seen, events=stores.events, metrics=metrics, wall_clock=wall_clock
    )
    hub = Hub(
        stores.events,
        queue_limit=settings.events_queue,
        max_subscribers=settings.events_max_subscribers,
        heartbeat=settings.events_heartbeat,
        metrics=metrics,
    )
    overload = Overload(
        shed_at=settings.overload_lag,
        unready_after=settings.overload_unready_after,
        max_in_flight=settings.max_in_flight,
        accept_queue=settings.overload_accept_queue,
    )
    gateway = Gateway(
        directory=directory,
        overload=overload,
        service=service,
        callbacks=callbacks,
        hub=hub,
        breaker=breaker,
        metrics=metrics,
        redis=stores.redis,
    )
    held = stores.events if isinstance(stores.events, FailoverEventLog) else None
    metrics.registry.register(
        StateCollector(
            lambda: {
                "gateway_usersig_issued": signer.issued,
                "gateway_room_cache_fill_waits": cache.fill_waits,
                "gateway_redis_errors": breaker.failures,
                "gateway_redis_round_trips": stores.redis.round_trips if stores.redis is not None else 0,
                "gateway_fleet_heartbeats": fleet_budget.fleet.beats if fleet_budget else 0,
                "gateway_budget_bookings": sum(d.bookings for d in dispatchers),
                "gateway_redis_degraded": 1 if breaker.degraded else 0,
                "gateway_fleet_lapsed_replicas": fleet_budget.fleet.lapsed if fleet_budget else 0,
                "gateway_fleet_replicas_seen": fleet_budget.fleet.seen if fleet_budget else 1,
                "gateway_budget_mode": fleet_budget.mode().value if fleet_budget else "embedded",
                "gateway_events_held": len(held.held) if held else 0,
                "gateway_events_dropped": held.dropped if held else 0,
                "gateway_event_loop_lag_seconds": overload.lag,
                "gateway_overloaded": 1 if overload.overloaded else 0,
                "gateway_overload_shed_lag": overload.shed["lag"],
                "gateway_overload_shed_in_flight": overload.shed["in_flight"],
                "gateway_overload_shed_accept_queue": overload.shed["accept_queue"],
                "gateway_requests_in_flight": overload.in_flight,
                "gateway_accept_queue": overload.pending,
                "gateway_requests_abandoned": overload.abandoned,
            }
        )
    )

    def apply(new: Directory) -> None:
        gateway.directory = new
        metrics.set_limits(
            (t.name, api, t.limit(api, qps)) for t in new.tenants.values() for api, qps in DOCUMENTED.items()
        )

    tasks: list[asyncio.Task[None]] = []

    async def start_background() -> None:
        tasks.append(asyncio.create_task(overload.run()))
        if stores.redis is not None and fleet_budget is not None:
            await stores.redis.start()
            # a replica that stops beating costs the fleet its share: a failed beat does not stop them
            tasks.append(asyncio.create_task(_repeat(BEAT_EVERY, fleet_budget.heartbeat, "heartbeat")))
        if held is not None:
            tasks.append(asyncio.create_task(_repeat(1.0, held.flush, "publishing held events")))

    async def load_config() -> None:
        current = gateway.directory or load_directory(settings.config, env)
        apply(current)
        if settings.config_reload_interval > 0 and current.sources:  # read from files: watch them
            watcher = ConfigWatcher(
                path=current.sources[0],
                env=env,
                current=current,
                apply=apply,
                interval=settings.config_reload_interval,
            )
            tasks.append(asyncio.create_task(watcher.run()))

    async def stop_background() -> None:
        hub.close()
        for task in tasks:
            task.cancel()
        if isinstance(stores.keys, FailoverKeyStore):
            await stores.keys.aclose()
        if fleet_budget is not None:
            await fleet_budget.leave()
        if provider is not None:
            await tracing.shutdown(provider)  # (the spans still queued are exported first)

    return Litestar(
        route_handlers=ROUTES,
        # ServerSpans outside the edge: the access line, written by the edge, has the trace's ids.
        middleware=[
            *([] if tracer is None else [tracing.ServerSpans(tracer)]),
            EdgeMiddleware(metrics=metrics, clock=clock),
        ],
        state=State({"gateway": gateway, "settings": settings}),
        exception_handlers={Exception: handle_error},
        request_max_body_size=MAX_BODY,
        on_startup=[load_config, start_background],
        on_shutdown=[stop_background, upstream.aclose, gateway.aclose],
        openapi_config=openapi_config(),
        logging_config=None,  # logging is the process's (gateway.logs), not each app's
        debug=False,
    )
