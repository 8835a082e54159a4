"""The budget's own connection to Redis (``stores.line``) against a real Redis: pipelined on one
socket, in order whatever its callers do, and every failure a StoreUnavailable it recovers from."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway.budget.schedule import Booked, Terms, Want
from gateway.health import StoreUnavailable
from gateway.stores.line import NAME, Line
from gateway.stores.redis import Batch, Redis, RedisBudgetStore, connect
from tests.redis_servers import RedisServer, free_port

TERMS = Terms(interval=0.001, horizon=0.06, borrow=0.02, active=1.0)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[tuple[Redis, RedisBudgetStore]]:
    shared = Redis(connect(redis_url, timeout=1.0), prefix=f"l{uuid.uuid4().hex[:8]}:", timeout=1.0)
    try:
        yield shared, RedisBudgetStore(shared)
    finally:
        await shared.aclose()


@pytest.fixture
async def on_cluster(redis_cluster: list[RedisServer]) -> AsyncIterator[Redis]:
    """The fleet's Redis on the session's 3-primary cluster, its slot map loaded."""
    shared = Redis(
        connect(f"redis+cluster://127.0.0.1:{redis_cluster[0].port}", timeout=1.0),
        prefix=f"c{uuid.uuid4().hex[:8]}:",
        timeout=1.0,
    )
    try:
        await shared.start()
        yield shared
    finally:
        await shared.aclose()


def _ours(redis_url: str) -> list[dict[str, str]]:
    return [c for c in redis.Redis.from_url(redis_url).client_list() if c["name"] == NAME]


async def test_concurrent_bookings_share_one_connection_in_order(
    store: tuple[Redis, RedisBudgetStore], redis_url: str
) -> None:
    """Fifty bookings at once go out on the one connection, each answered with its own slots."""
    shared, budget = store
    assert shared.line is not None
    others = len(_ours(redis_url))  # (lines of other stores on this server, if any are open)
    booked = await asyncio.gather(
        *(budget.book("1400", f"api{n % 5}", [Want(f"c{n}", 1, 1, 0.06)], TERMS) for n in range(50))
    )
    assert all(isinstance(b, Booked) and list(b.slots) == [f"c{n}"] for n, b in enumerate(booked))
    assert len(_ours(redis_url)) == others + 1


async def test_a_booking_s_answer_is_told_as_the_line_reads_it(
    store: tuple[Redis, RedisBudgetStore], redis_url: str
) -> None:
    """``then`` hears the booking from the callback that reads Redis's reply, outside any task
    (before the booking's own task is resumed, which under load comes milliseconds later), and
    hears what ``book`` returns; after SCRIPT FLUSH too, never of the NOSCRIPT error between."""
    _, budget = store
    told: list[tuple[object, object]] = []

    def then(booked: object) -> None:
        told.append((booked, asyncio.current_task()))

    first = await budget.book("1400", "api", [Want("a", 1, 1, 0.06)], TERMS, then=then)
    redis.Redis.from_url(redis_url).script_flush()
    second = await budget.book("1400", "api", [Want("b", 1, 1, 0.06)], TERMS, then=then)
    assert isinstance(first, Booked)
    assert isinstance(second, Booked)
    assert told == [(first, None), (second, None)]


async def test_a_flushed_script_is_sent_again(store: tuple[Redis, RedisBudgetStore], redis_url: str) -> None:
    """After SCRIPT FLUSH (or a Redis restart) the booking still runs: by its text, which loads it."""
    _, budget = store
    assert isinstance(await budget.book("1400", "api", [Want("a", 1, 1, 0.06)], TERMS), Booked)
    redis.Redis.from_url(redis_url).script_flush()
    assert isinstance(await budget.book("1400", "api", [Want("a", 1, 1, 0.06)], TERMS), Booked)


async def test_a_caller_that_goes_away_leaves_the_replies_in_order(store: tuple[Redis, RedisBudgetStore]) -> None:
    """A cancelled call's reply still comes, and goes to nobody: the next call gets its own."""
    shared, _ = store
    assert shared.line is not None
    blocked = asyncio.ensure_future(shared.line.call(["BLPOP", f"nothing-{uuid.uuid4().hex}", "0.3"]))
    await asyncio.sleep(0.05)
    blocked.cancel()
    assert await shared.line.call(["ECHO", "mine"]) == b"mine"


async def test_a_slow_answer_fails_every_call_in_flight_and_the_next_connects_again(redis_url: str) -> None:
    """Past the timeout the call is StoreUnavailable, so are the calls pipelined behind it (their
    replies could not be matched any more), and the next call works on a new connection."""
    line = Line.of(connect(redis_url, timeout=0.2), timeout=0.2)
    assert line is not None
    try:
        slow = asyncio.ensure_future(line.call(["BLPOP", f"nothing-{uuid.uuid4().hex}", "1"]))
        await asyncio.sleep(0.01)
        behind = asyncio.ensure_future(line.call(["ECHO", "behind"]))
        for call in (slow, behind):
            with pytest.raises(StoreUnavailable, match=r"no answer within 0\.2 s"):
                await call
        assert await line.call(["ECHO", "again"]) == b"again"
    finally:
        await line.aclose()


async def test_a_killed_connection_fails_its_calls_and_the_next_connects_again(redis_url: str) -> None:
    """CLIENT KILL (a Redis restart, a failover) fails the call in flight as StoreUnavailable,
    and the next call connects again."""
    line = Line.of(connect(redis_url, timeout=2.0), timeout=2.0)
    assert line is not None
    try:
        assert await line.call(["ECHO", "first"]) == b"first"
        waiting = asyncio.ensure_future(line.call(["BLPOP", f"nothing-{uuid.uuid4().hex}", "1"]))
        await asyncio.sleep(0.05)
        for client in _ours(redis_url):
            redis.Redis.from_url(redis_url).client_kill_filter(_id=client["id"])
        with pytest.raises(StoreUnavailable, match="connection was lost"):
            await waiting
        assert await line.call(["ECHO", "again"]) == b"again"
    finally:
        await line.aclose()


async def test_credentials_and_database_are_the_url_s_and_a_refusal_never_shows_them() -> None:
    """An ACL user, its password and a database in the URL are the line's too; a wrong password
    is StoreUnavailable naming the refusal, never the password."""
    server = RedisServer(extra=["--requirepass", "default-pw", "--user", "gateway", "on", ">gw-pw", "~*", "+@all"])
    server.start(
        ready=lambda: redis.Redis(host="127.0.0.1", port=server.port, password="default-pw", socket_timeout=0.5)
    )
    try:
        line = Line.of(connect(f"redis://gateway:gw-pw@127.0.0.1:{server.port}/3", timeout=1.0), timeout=1.0)
        assert line is not None
        await line.call(["SET", "where", "here"])
        await line.aclose()
        assert redis.Redis(port=server.port, password="default-pw", db=3).get("where") == b"here"
        wrong = Line.of(connect(f"redis://gateway:secret-wrong@127.0.0.1:{server.port}", timeout=1.0), timeout=1.0)
        assert wrong is not None
        with pytest.raises(StoreUnavailable) as refused:
            await wrong.call(["PING"])
        assert "secret-wrong" not in str(refused.value)
        assert "refused" in str(refused.value)
        await wrong.aclose()
    finally:
        server.close()


async def test_no_redis_is_store_unavailable() -> None:
    """Nobody listening: StoreUnavailable, as for any Redis call (the breaker takes it from there)."""
    line = Line.of(connect(f"redis://127.0.0.1:{free_port()}", timeout=1.0), timeout=1.0)
    assert line is not None
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        await line.call(["PING"])


def test_a_cluster_gets_no_single_line() -> None:
    """A cluster client gets no one line (``Nodes`` has one a primary instead)."""
    assert Line.of(connect("redis+cluster://127.0.0.1:7000", timeout=1.0), timeout=1.0) is None


async def test_a_cluster_books_on_the_line_of_each_key_s_node(
    on_cluster: Redis, redis_cluster: list[RedisServer]
) -> None:
    """On a 3-primary cluster, bookings for many tenants (so, slots) go on a line to each primary,
    one a node, each answered with its own slots; closing closes them."""
    assert on_cluster.line is None
    assert on_cluster.nodes is not None
    others = [len(_ours(node.url)) for node in redis_cluster]  # (lines of other stores, if any are open)
    budget = RedisBudgetStore(on_cluster)
    booked = await asyncio.gather(
        *(budget.book(f"14{n:02d}", "api", [Want(f"c{n}", 1, 1, 0.06)], TERMS) for n in range(30))
    )
    assert all(isinstance(b, Booked) and list(b.slots) == [f"c{n}"] for n, b in enumerate(booked))
    assert [len(_ours(node.url)) for node in redis_cluster] == [n + 1 for n in others]
    await on_cluster.nodes.aclose()
    for _ in range(50):  # (Redis sees the close a moment later)
        if [len(_ours(node.url)) for node in redis_cluster] == others:
            break
        await asyncio.sleep(0.01)
    assert [len(_ours(node.url)) for node in redis_cluster] == others


async def test_a_moved_slot_sends_the_booking_through_redis_py(
    on_cluster: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line to a node that no longer holds the keys' slot (here: the wrong node, as after a
    resharding) gets MOVED; the booking goes through redis-py instead, which follows it, and is
    answered as any other."""
    client = on_cluster.client
    assert isinstance(client, RedisCluster)
    right = client.get_node_from_key
    primaries = client.get_primaries()

    def elsewhere(key: str, replica: bool = False) -> ClusterNode:
        owner = right(key)
        assert owner is not None
        return next(node for node in primaries if node.name != owner.name)

    monkeypatch.setattr(client, "get_node_from_key", elsewhere)
    before = on_cluster.round_trips
    booked = await RedisBudgetStore(on_cluster).book("1400", "api", [Want("c", 1, 1, 0.06)], TERMS)
    assert on_cluster.round_trips == before + 2  # (on the wrong node's line: MOVED; then redis-py)
    assert isinstance(booked, Booked)
    assert list(booked.slots) == ["c"]


async def test_a_batch_on_the_line_keeps_the_order_of_calls_nobody_waits_for(
    store: tuple[Redis, RedisBudgetStore], redis_url: str
) -> None:
    """On a standalone Redis the shared ``Batch`` writes on the line: a call nobody waits for
    (``later``) is held for the next call to carry and runs before it, and one that finds its
    script flushed is sent again by its text."""
    shared, _ = store
    batch = Batch(shared)
    keys = [f"{shared.prefix}room:{{1:r}}", f"{shared.prefix}gen:{{1:r}}"]
    assert await batch.call("room_get", keys, []) == [0]
    trips = shared.round_trips
    batch.later("room_invalidate", keys, [60_000])
    assert await batch.call("room_get", keys, []) == [1]  # the invalidation ran first
    assert shared.round_trips == trips + 1  # and rode with the call, as in a pipeline
    redis.Redis.from_url(redis_url).script_flush()
    batch.later("room_invalidate", keys, [60_000])
    await batch.flush()
    for _ in range(50):  # (sent again by its text: a reply later)
        if await batch.call("room_get", keys, []) == [2]:
            break
        await asyncio.sleep(0.01)
    assert await batch.call("room_get", keys, []) == [2]


async def test_a_node_that_cannot_be_reached_sends_the_booking_through_redis_py(on_cluster: Redis) -> None:
    """A cluster node's line that cannot connect (as after a failover, its address gone) sends
    the booking through redis-py, which reaches the slot's primary: it is answered as any other."""
    budget = RedisBudgetStore(on_cluster)
    assert isinstance(await budget.book("1400", "api", [Want("a", 1, 1, 0.06)], TERMS), Booked)
    assert on_cluster.nodes is not None
    key = f"{on_cluster.prefix}budget:{{1400}}:api"
    owner = on_cluster.client.get_node_from_key(key)  # type: ignore[union-attr]
    gone = Line(host="127.0.0.1", port=free_port(), timeout=1.0)
    was = on_cluster.nodes._lines[owner.name]
    assert was is not None
    await was.aclose()
    on_cluster.nodes._lines[owner.name] = gone  # (the line to a primary that has gone)
    assert on_cluster.line_for([key]) is gone
    booked = await budget.book("1400", "api", [Want("b", 1, 1, 0.06)], TERMS)
    assert isinstance(booked, Booked)
    assert list(booked.slots) == ["b"]
