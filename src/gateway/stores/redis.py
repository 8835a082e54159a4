"""Redis-backed stores: the fleet's budget, pauses, UserSigs and room cache.

Every call is bounded by a short timeout with no client-side retries, and every failure becomes
``StoreUnavailable``: a slow or unreachable Redis costs a request at most ``timeout`` once, then
the breaker sends the replica to its in-process stores (``failover.py``).

Keys start with the configured prefix and carry a hash tag, so every script touches one slot of
a Redis Cluster: a tenant's schedules and pause share ``{sdkappid}``, a room's body, generation
and fill lock share ``{sdkappid:room_id}``, a signature and its issue lock share
``{sdkappid:identifier}``, and the fleet's heartbeats (a sorted set and its birth time) share
``{fleet}``. Scripts live in ``gateway/lua`` and run by EVALSHA.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from gateway.budget.schedule import Booked, Booking, Paused, Terms, Want
from gateway.cache import Lookup
from gateway.events import Entry, Page, order
from gateway.health import StoreUnavailable
from gateway.idempotency import MAX_ANSWER, Claim
from gateway.signing import Signature
from gateway.stores.line import Late, Line, Nodes, Then, unawaited

T = TypeVar("T")
Client = aioredis.Redis | RedisCluster
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_US = 1_000_000


def connect(url: str, *, timeout: float, connections: int = 64) -> Client:
    """A client for ``redis://``, ``rediss://`` (TLS) or ``redis+cluster://`` / ``rediss+cluster://``.

    Standalone clients share a *blocking* pool of ``connections``: a burst of concurrent calls
    waits for a connection (within the call's timeout) instead of failing with "too many
    connections", which would wrongly send a healthy replica into degraded mode.
    """
    scheme = urlsplit(url).scheme
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if scheme in CLUSTER_SCHEMES:
        plain = CLUSTER_SCHEMES[scheme] + url[len(scheme) :]
        return RedisCluster.from_url(plain, retry=Retry(NoBackoff(), 2), max_connections=connections * 8, **options)
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"GATEWAY_REDIS_URL: unsupported scheme {scheme!r}")
    pool = BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=timeout, retry=Retry(NoBackoff(), 0), **options
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it


def _lua(name: str) -> str:
    return resources.files("gateway").joinpath("lua", name).read_text()


class Redis:
    """One client, its registered scripts and the timeout that bounds every call."""

    def __init__(self, client: Client, *, prefix: str, timeout: float) -> None:
        self.client = client
        self.prefix = prefix
        self._timeout = timeout
        texts = {
            name: _lua(f"{name}.lua")
            for name in (
                "book",
                "defer",
                "beat",
                "room_get",
                "room_put",
                "room_invalidate",
                "sig_drop",
                "unlock",
                "events_add",
                "events_read",
                "idempotency_claim",
                "idempotency_keep",
            )
        }
        self.scripts = {name: client.register_script(text) for name, text in texts.items()}
        # the budget's own connection (None: a cluster), which loads every script as it connects;
        # on a cluster, one a primary
        loaded = tuple(texts.values())
        self.line = Line.of(client, timeout=timeout, scripts=loaded)
        self.nodes = Nodes(client, timeout=timeout, scripts=loaded) if isinstance(client, RedisCluster) else None
        self.round_trips = 0

    @property
    def timeout(self) -> float:
        return self._timeout

    async def run(self, call: Awaitable[T], *, block: float = 0.0) -> T:
        """Await one Redis call; any failure or a missed timeout is StoreUnavailable. ``block``:
        how long a blocking command may wait in Redis, on top of the timeout."""
        self.round_trips += 1
        try:
            async with asyncio.timeout(self._timeout + block):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, RedisConnectionError | OSError):
                await self._reset()
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}"[:200]) from exc
        except Exception as exc:  # the boundary with redis-py: see below
            # A connection torn down under a command (a Redis restart mid-call) can surface from
            # redis-py's internals as e.g. AttributeError; for the caller it is Redis failing,
            # never a 500. (CancelledError is a BaseException and still propagates.)
            raise StoreUnavailable(f"{type(exc).__name__} in the Redis client") from exc

    async def _reset(self) -> None:
        """Drop the idle pooled connections: after a Redis restart they are all dead, and finding
        that out one failed call at a time would flap the breaker. Connections in use are left to
        their own commands, which fail and discard them."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(RedisError, OSError):
                await pool.disconnect(inuse_connections=False)

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self.run(self.scripts[name](keys=keys, args=args))

    def line_for(self, keys: list[str]) -> Line | None:
        """The connection of ours for a call on ``keys`` (one slot), or None (through redis-py)."""
        return self.line if self.nodes is None else self.nodes.line(keys[0])

    async def on_line(self, name: str, keys: list[str], args: list[Any], then: Then | None = None) -> Any:
        """A script written now on the budget's own connection (``line``, or on a cluster the line
        to the node of ``keys``: pipelined behind the calls before it), else as any other call
        (and on a cluster, after a MOVED or ASK, or a node that cannot be reached, through redis-py,
        which follows the redirection or finds the new primary, and refreshes its slot map).
        ``then``: told of the reply as the line reads it (``Line.call``); not through redis-py."""
        line = self.line_for(keys)
        if line is None:
            return await self.script(name, keys, args)
        self.round_trips += 1
        try:
            return await line.evalsha(self.scripts[name], keys, args, then)
        except StoreUnavailable as exc:
            if self.nodes is None or isinstance(exc, Late):  # (a slow node again through redis-py: twice the wait)
                raise
            return await self.script(name, keys, args)

    async def start(self) -> None:
        """Before serving: a cluster client loads its slot map and node connections now. Left lazy,
        a burst of first calls races that start inside redis-py and fails (seen in the tests);
        if Redis is down now, the client stays lazy and the breaker handles it."""
        if isinstance(self.client, RedisCluster):
            with contextlib.suppress(StoreUnavailable):
                await self.run(self.client.initialize())

    async def lock(self, key: str, ttl: float) -> str | None:
        """Take ``key`` as a lock for ``ttl`` seconds; the holder's token, or None if it is held."""
        token = secrets.token_hex(8)
        took = await self.run(self.client.set(key, token, nx=True, px=max(1, round(ttl * 1000))))
        return token if took else None

    async def unlock(self, key: str, token: str) -> None:
        """Release ``key`` if ``token`` still holds it (a lock that expired and was retaken is left alone)."""
        await self.script("unlock", [key], [token])

    async def ping(self) -> bool:
        return bool(await self.run(self.client.ping()))

    async def aclose(self) -> None:
        if self.line is not None:
            await self.line.aclose()
        if self.nodes is not None:
            await self.nodes.aclose()
        await self.client.aclose()


class RedisBudgetStore:
    """The fleet's schedules (``book.lua``: the TAT, and the callers competing beside it), the
    tenants' pauses, and the fleet's heartbeats."""

    def __init__(self, redis: Redis) -> None:
        self._r = redis

    def _keys(self, scope: str, api: str) -> list[str]:
        """The TAT, the pause and the callers: one ``{scope}`` slot. (The TAT keeps its key from
        before fair sharing, so a fleet half upgraded still books one schedule.)"""
        p = self._r.prefix
        return [f"{p}budget:{{{scope}}}:{api}", f"{p}pause:{{{scope}}}", f"{p}fair:{{{scope}}}:{api}"]

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
        args: list[Any] = [round(t * _US) for t in terms]
        args.append(len(unbook))
        for handed in unbook:  # microseconds again, exactly: the script compares them with the TAT
            args += [round(handed.start * _US), round(handed.end * _US)]
        for want in wants:
            args += [want.caller, want.weight, want.wanted, round(want.within * _US)]
        read: list[Booked | Paused] = []

        def answered(reply: Any) -> None:  # (on the line: as its reply is read)
            read.append(self._booked(reply, wants, terms))
            if then is not None:
                then(read[0])

        reply = await self._r.on_line("book", self._keys(scope, api), args, answered)
        return read[0] if read else self._booked(reply, wants, terms)

    @staticmethod
    def _booked(reply: Any, wants: Sequence[Want], terms: Terms) -> Booked | Paused:
        """``book.lua``'s reply: the slots per caller (microseconds on Redis's clock), or a pause."""
        if int(reply[0]) == 2:
            code, _, reason = (reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])).partition(" ")
            return Paused(left=int(reply[1]) / 1000, code=int(code), reason=reason)
        now, next_at = int(reply[1]), int(reply[2])
        slots: dict[str, list[float]] = {}
        at = 3
        for want in wants:
            count = int(reply[at])
            slots[want.caller] = [int(start) / _US for start in reply[at + 1 : at + 1 + count]]
            at += 1 + count
        return Booked(
            slots=slots,
            at=now / _US,
            interval=round(terms.interval * _US) / _US,
            next_at=None if next_at < 0 else next_at / _US,
        )

    async def defer(self, scope: str, api: str, pause: float) -> None:
        await self._r.script("defer", self._keys(scope, api)[:1], [round(pause * _US)])

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None:
        key = self._keys(scope, "")[1]
        await self._r.run(self._r.client.set(key, f"{code} {reason}", px=max(1, round(seconds * 1000))))

    async def beat(self, replica: str, lapse_after: float, forget_after: float) -> tuple[int, float, int]:
        args = [replica, round(lapse_after * _US), round(forget_after * _US)]
        lapsed, age, size = await self._r.script("beat", self._fleet, args)
        return int(lapsed), int(age) / _US, int(size)

    async def leave(self, replica: str) -> None:
        await self._r.run(self._r.client.zrem(self._fleet[0], replica))

    @property
    def _fleet(self) -> list[str]:
        """The fleet's set and its birth time, in one cluster slot."""
        return [f"{self._r.prefix}fleet:{{fleet}}", f"{self._r.prefix}fleet:{{fleet}}:born"]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisKeyStore:
    """Idempotency keys fleet-wide (``idempotency.KeyStore``): a hash per key, claimed and kept
    by one script each (``idempotency_claim.lua``, ``idempotency_keep.lua``) on Redis's clock.
    Claims made in one event-loop turn go to Redis as one pipeline; an answer is kept in the
    background, riding with the next claims (``Batch``)."""

    def __init__(self, redis: Redis, *, batch: Batch | None = None) -> None:
        self._r = redis
        self._batch = batch or Batch(redis)

    def _key(self, key: str) -> list[str]:
        return [f"{self._r.prefix}idem:{key}"]

    async def claim(
        self, key: str, fingerprint: str, owner: str, *, lease: float, ttl: float, repeatable: bool
    ) -> Claim:
        args = [fingerprint, owner, _ms(lease), _ms(ttl), 1 if repeatable else 0]
        reply = await self._batch.call("idempotency_claim", self._key(key), args)
        state = _text(reply[0])
        if state == "kept":
            return Claim("kept", _text(reply[1]), bytes(reply[2]))
        return Claim(state, _text(reply[1]) if len(reply) > 1 else "")  # type: ignore[arg-type]

    async def keep(self, key: str, owner: str, answer: bytes | None, ttl: float) -> None:
        """Sent in the background: a failure leaves the claim to lapse (idempotency's glossary)."""
        self._batch.later("idempotency_keep", self._key(key), [owner, _ms(ttl), answer or b"", MAX_ANSWER])

    async def aclose(self) -> None:
        await self._batch.flush()


Call = tuple[str, list[str], list[Any], "asyncio.Future[Any] | None"]


class Batch:
    """Script calls whose order matters (a keyed write's answer before a repeat's claim; a
    room's invalidations). On a standalone Redis they go on the budget's own connection
    (``Redis.line``): a call is written at once, behind every call written before it, and a call
    whose reply nobody waits for (``later``) is held until the next call carries it (written just
    ahead of it, in its round trip) or ``linger`` seconds pass. On a Redis Cluster (its
    pipelines group commands by node; lines to each node were measured and gained nothing
    confirmed here: BENCHMARKS.md, "The budget's own connections on a Redis Cluster"), or while
    the line is not connected, the calls of one event-loop turn are sent one by one, in order,
    ``later`` ones first and within ``linger``. A ``later`` call that fails is dropped (its
    caller chose not to wait for it)."""

    def __init__(self, redis: Redis, *, linger: float = 0.002) -> None:
        self._r = redis
        self._linger = linger
        self._queued: list[Call] = []
        self._soon = False  # a send at the end of this turn is scheduled
        self._timer: asyncio.TimerHandle | None = None  # a send within linger is
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: list[tuple[str, list[str], list[Any]]] = []  # on the line: ``later`` calls not yet written
        self._held_timer: asyncio.TimerHandle | None = None
        self._lines: set[asyncio.Future[Any]] = set()  # replies nobody waits for, on the line

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if self._r.line is not None:  # written now, behind what came before on the line
            self._release(riding=True)
            return await self._r.on_line(name, keys, args)
        waiter = asyncio.get_running_loop().create_future()
        self._queued.append((name, keys, args, waiter))
        self._schedule(now=True)
        return await waiter

    def later(self, name: str, keys: list[str], args: list[Any]) -> None:
        if self._r.line is not None:  # held for the next call to carry, or written within linger
            self._held.append((name, keys, args))
            if self._held_timer is None:
                self._held_timer = asyncio.get_running_loop().call_later(self._linger, self._release)
            return
        self._queued.insert(0, (name, keys, args, None))  # first: a repeat's claim behind it then finds it kept
        self._schedule(now=False)

    def _release(self, *, riding: bool = False) -> None:
        """Write the held calls on the line now: ahead of the call about to be written (``riding``:
        its round trip carries them, as a pipeline's would), or on their own."""
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        held, self._held = self._held, []
        if held and not riding:
            self._r.round_trips += 1
        for name, keys, args in held:
            line = self._r.line
            sent = None if line is None else line.later(self._r.scripts[name], keys, args)
            if sent is None:  # not connected now: one by one instead
                self._queued.insert(0, (name, keys, args, None))
                self._schedule(now=False)
                continue
            self._lines.add(sent)
            sent.add_done_callback(self._lines.discard)
            sent.add_done_callback(unawaited)

    def _schedule(self, now: bool) -> None:
        """Send at the end of this turn (a caller waits), or within ``linger`` (nobody does)."""
        loop = asyncio.get_running_loop()
        if now and not self._soon:
            self._soon = True
            loop.call_soon(self._send)
        elif not self._soon and self._timer is None:
            self._timer = loop.call_later(self._linger, self._send)

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        batch, self._queued, self._soon, self._timer = self._queued, [], False, None
        if batch:
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[Call]) -> None:
        for name, keys, args, waiter in batch:
            try:  # (redis-py's script call loads the script again if Redis lost it)
                outcome = await self._r.script(name, keys, args)
            except StoreUnavailable as exc:
                if waiter is not None and not waiter.done():
                    waiter.set_exception(exc)
                continue
            if waiter is not None and not waiter.done():  # nobody waits for it, or its caller went away
                waiter.set_result(outcome)

    async def flush(self) -> None:
        """Send what is queued and wait for every batch under way (before the client closes)."""
        self._release()
        self._send()
        if self._tasks or self._lines:
            await asyncio.wait(self._tasks | self._lines)


class RedisSeenStore:
    """Keys remembered fleet-wide until they expire (SET NX PX)."""

    def __init__(self, redis: Redis) -> None:
        self._r = redis

    async def first(self, key: str, ttl: float) -> bool:
        took = await self._r.run(
            self._r.client.set(f"{self._r.prefix}{key}", b"1", nx=True, px=max(1, round(ttl * 1000)))
        )
        return bool(took)


class RedisEventLog:
    """Each tenant's events in a Redis stream (``events:{sdkappid}``), shared by the fleet.

    Kept: the newest ``keep`` entries (trimmed exactly), none older than ``keep_seconds``
    (trimmed as entries are added). ``events_add.lua`` records the newest id it trims, so a
    position older than that reads as lost, exactly. Waiting is ``XREAD BLOCK`` for at most half
    the Redis timeout, the socket timeout of the pooled connection it runs on."""

    def __init__(self, redis: Redis, *, keep: int, keep_seconds: float, wall_clock: Callable[[], float]) -> None:
        self._r = redis
        self._keep = keep
        self._keep_seconds = keep_seconds
        self._wall_clock = wall_clock
        self._block = redis.timeout / 2

    def _keys(self, scope: str) -> list[str]:
        stream = f"{self._r.prefix}events:{{{scope}}}"
        return [stream, stream + ":trimmed"]

    async def publish(self, scope: str, command: str, data: bytes) -> str:
        oldest = max(0, int((self._wall_clock() - self._keep_seconds) * 1000))
        added = await self._r.script("events_add", self._keys(scope), [self._keep, oldest, command, data])
        return _text(added)

    async def _read(self, scope: str, after: str, count: int) -> tuple[Page, str]:
        exists, raw, trimmed, last = await self._r.script("events_read", self._keys(scope), [after, count])
        if not exists:  # never written, or Redis lost it: a position past the start cannot be vouched for
            return Page([], lost=order(after) > (0, 0)), "0-0"
        entries = [_entry(item) for item in raw]
        if trimmed and order(after) < order(_text(trimmed)):
            return Page(entries, lost=True, through=_text(trimmed)), _text(last)
        return Page(entries), _text(last)

    async def tail(self, scope: str) -> str:
        return (await self._read(scope, "0-0", 0))[1]

    async def page(self, scope: str, after: str, count: int) -> Page:
        return (await self._read(scope, after, count))[0]

    async def wait(self, scope: str, after: str) -> Page:
        block, stream = self._block, self._keys(scope)[0]
        got: Any = await self._r.run(
            self._r.client.xread({stream: after}, count=1000, block=max(1, int(block * 1000))), block=block
        )
        if not got:
            return Page([])
        return Page([Entry(_text(entry_id), _text(fields[b"c"]), fields[b"d"]) for entry_id, fields in got[0][1]])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(item: list[Any]) -> Entry:
    entry_id, flat = item
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return Entry(_text(entry_id), _text(fields[b"c"]), fields[b"d"])


class RedisSignatureStore:
    """The fleet's admin UserSig per (SDKAppID, identifier), expiring before the sig does."""

    def __init__(self, redis: Redis) -> None:
        self._r = redis
        self._decode = msgspec.json.Decoder(Signature).decode

    def _key(self, key: str, kind: str = "sig") -> str:
        return f"{self._r.prefix}{kind}:{{{key}}}"

    async def get(self, key: str) -> Signature | None:
        raw = await self._r.run(self._r.client.get(self._key(key)))
        return None if raw is None else self._decode(raw)

    async def put(self, key: str, sig: Signature, ttl: float) -> None:
        await self._r.run(self._r.client.set(self._key(key), msgspec.json.encode(sig), px=max(1, round(ttl * 1000))))

    async def drop(self, key: str, value: str) -> None:
        await self._r.script("sig_drop", [self._key(key)], [value])

    async def lock(self, key: str, ttl: float) -> str | None:
        return await self._r.lock(self._key(key, "siglock"), ttl)

    async def unlock(self, key: str, token: str) -> None:
        await self._r.unlock(self._key(key, "siglock"), token)


class Reads:
    """Read-only script calls made in one event-loop turn, sent to Redis as one pipeline, each
    distinct call once (the room cache's hits: one round trip and one reply for a hot room's
    readers, where each used to take a pooled connection and a round trip of its own).

    Sharing one call's reply is safe for read-your-writes only because the call is *sent* after
    every read that shares it arrived: a write acknowledged before any of them arrived was
    invalidated in Redis before this pipeline reaches it. Joining a call already sent would not
    be safe, and nothing here does. A Redis Cluster client calls one by one (its pipelines group
    commands by node; not worth the risk for a cache read).
    """

    def __init__(self, redis: Redis, name: str) -> None:
        self._r = redis
        self._name = name
        self._batched = isinstance(redis.client, aioredis.Redis)
        self._pending: dict[tuple[str, ...], list[asyncio.Future[Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0  # calls sent; the rest shared a sent call's reply

    async def __call__(self, keys: list[str]) -> Any:
        if not self._batched:
            self.sent += 1
            return await self._r.script(self._name, keys, [])
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()  # each reader its own: one cancelled leaves the others be
        waiters = self._pending.get(key := tuple(keys))
        if waiters is not None:
            waiters.append(waiter)
        else:
            if not self._pending:
                loop.call_soon(self._send)  # after this turn's other callbacks
            self._pending[key] = [waiter]
        return await waiter

    def _send(self) -> None:
        batch, self._pending = self._pending, {}
        task = asyncio.get_running_loop().create_task(self._execute(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: dict[tuple[str, ...], list[asyncio.Future[Any]]]) -> None:
        self.sent += len(batch)
        script = self._r.scripts[self._name]
        pipe = self._r.client.pipeline(transaction=False)
        for keys in batch:
            pipe.evalsha(script.sha, len(keys), *keys)
        try:
            replies = await self._r.run(pipe.execute(raise_on_error=False))
        except StoreUnavailable as exc:
            replies = [exc] * len(batch)
        for (keys, waiters), reply in zip(batch.items(), replies, strict=True):
            outcome = await self._reload(keys) if isinstance(reply, NoScriptError) else reply
            if isinstance(outcome, Exception) and not isinstance(outcome, StoreUnavailable):
                outcome = StoreUnavailable(f"{type(outcome).__name__}: {outcome}"[:200])
            for waiter in waiters:
                if waiter.done():  # its reader was cancelled
                    continue
                if isinstance(outcome, Exception):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)

    async def _reload(self, keys: tuple[str, ...]) -> Any:
        """Redis lost the script (a restart, SCRIPT FLUSH): the one-by-one call loads it again."""
        try:
            return await self._r.script(self._name, list(keys), [])
        except StoreUnavailable as exc:
            return exc


class RedisRoomStore:
    """Rooms as hashes (store time, body) with a generation per room and a fill lock. Reads of
    one event-loop turn share a pipeline (``Reads``); invalidations go through the shared ``Batch``
    (on a standalone Redis, written at once on the budget's connection, in order)."""

    def __init__(self, redis: Redis, *, keep: float, fence: float = 120.0, batch: Batch | None = None) -> None:
        self._r = redis
        self._keep_ms = max(1, round(keep * 1000))
        self._fence_ms = round(fence * 1000)
        self._get = Reads(redis, "room_get")
        self._batch = batch or Batch(redis)

    def _keys(self, key: str) -> list[str]:
        p = self._r.prefix
        return [f"{p}room:{{{key}}}", f"{p}gen:{{{key}}}"]

    async def get(self, key: str) -> Lookup:
        reply = await self._get(self._keys(key))
        if len(reply) == 1:
            return Lookup(body=None, age=0.0, generation=int(reply[0]))
        return Lookup(
            body=bytes(reply[2]), age=int(reply[1]) / _US, generation=int(reply[0]), stored_at=int(reply[3]) / _US
        )

    async def put(self, key: str, body: bytes, generation: int) -> bool:
        return bool(await self._r.script("room_put", self._keys(key), [body, generation, self._keep_ms]))

    async def invalidate(self, key: str) -> None:
        await self._batch.call("room_invalidate", self._keys(key), [self._fence_ms])

    async def lock(self, key: str, ttl: float) -> str | None:
        return await self._r.lock(f"{self._r.prefix}fill:{{{key}}}", ttl)

    async def unlock(self, key: str, token: str) -> None:
        await self._r.unlock(f"{self._r.prefix}fill:{{{key}}}", token)
