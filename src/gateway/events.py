"""Room events for services: the accepted callbacks of each tenant, kept and served as SSE.

Glossary:

- **entry**: one kept event: an id, its command, and its JSON (``encode``). Ids are numbered as
  Redis Streams number them, ``<milliseconds>-<sequence>``, and ordered by ``order``.
- **log**: where a tenant's entries are kept, bounded in count and age: a Redis stream per tenant
  when Redis is configured (every replica serves every subscriber), else in process. A log
  answers three questions (``EventLog``): its newest id (``tail``), the entries after a position
  (a ``Page``, which also says whether the log trimmed entries past that position), and "wait a
  little for entries after this position".
- **feed**: one task per tenant with subscribers on this replica: it waits on the log and offers
  each new entry to every subscriber. One reader per replica per tenant, however many
  subscribers (``Hub``).
- **subscriber**: one SSE stream: a bounded queue, and a position (the id of the last entry it
  was given; a resuming client sends it as ``Last-Event-ID``).
- **lagging**: a subscriber whose queue overflowed (a slow or stalled client). Its queue is
  dropped and it reads the log itself from its position, a page at a time, at its own pace.
  So memory stays bounded and it loses nothing the log still keeps.
- **lost**: the log no longer keeps some entries past a subscriber's position (it fell behind
  what is kept, or the store lost its data). The subscriber is told so with an ``event: lost``
  frame (``lost_frame``), then goes on from the oldest entry still kept.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import msgspec

from gateway.health import StoreUnavailable
from gateway.metrics import Metrics
from gateway.models import EventsLost, RoomEvent

log = logging.getLogger("gateway.events")

PAGE = 100  # entries read from the log at a time when catching up
_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")  # (ASCII digits: "\d" takes any Unicode digit)


class Entry(msgspec.Struct, frozen=True, array_like=True):
    id: str
    command: str
    data: bytes  # the event's JSON: {"command", "room_id", "event_time", "payload"}


class Page(msgspec.Struct, frozen=True):
    """Entries after a position, oldest first. ``lost``: the log trimmed entries past that
    position; ``through`` is then the newest id it trimmed (None if it cannot tell, e.g. an
    emptied Redis)."""

    entries: list[Entry]
    lost: bool = False
    through: str | None = None


class EventLog(Protocol):
    """A tenant's kept events (``scope``: the SDKAppID), in Redis or in process."""

    async def publish(self, scope: str, command: str, data: bytes) -> str | None:
        """Append an entry; its id (None: held, to be published when the store answers)."""
        ...

    async def tail(self, scope: str) -> str:
        """A position every future entry comes after (the newest id, or a floor)."""
        ...

    async def page(self, scope: str, after: str, count: int) -> Page:
        """Up to ``count`` entries after ``after``, and whether entries past it were trimmed."""
        ...

    async def wait(self, scope: str, after: str) -> Page:
        """As ``page``, waiting a little (a store-defined block) when there are no entries yet."""
        ...


_encode_event = msgspec.json.Encoder().encode


def encode(command: str, room_id: str | None, event_time: int | None, payload: bytes) -> bytes:
    """An event's JSON, on one line (SSE data lines cannot hold a newline): ``payload`` is the
    callback's JSON body, compacted."""
    return _encode_event(RoomEvent(command, room_id, event_time, msgspec.Raw(msgspec.json.format(payload, indent=0))))


def order(entry_id: str) -> tuple[int, int]:
    """An id's place in the order (``123`` is ``123-0``); ValueError if it is not an id."""
    match = _ID.fullmatch(entry_id)
    if match is None:
        raise ValueError(f"not an event id: {entry_id[:40]!r}")
    return int(match.group(1)), int(match.group(2) or 0)


def event_frame(entry: Entry) -> bytes:
    return b"id: " + entry.id.encode() + b"\ndata: " + entry.data + b"\n\n"


def lost_frame(after: str, through: str | None) -> bytes:
    """The documented notice that entries after ``after`` (up to ``through``) are gone."""
    lost = EventsLost(
        code="events_lost",
        after=after,
        through=through,
        detail="events after 'after' (through 'through', when known) are no longer kept; "
        "the stream goes on from the oldest event still kept",
    )
    head = b"event: lost\n" + (b"id: " + through.encode() + b"\n" if through else b"")
    return head + b"data: " + _encode_event(lost) + b"\n\n"


HELLO = b"retry: 2000\n: connected\n\n"  # (retry: how long an EventSource waits to reconnect, ms)
KEEPALIVE = b": keep-alive\n\n"


class Subscriber:
    """One stream's queue, bounded: overflowing it makes the subscriber lag (see the glossary)."""

    __slots__ = ("closed", "label", "lagging", "limit", "queue", "scope", "wake")

    def __init__(self, scope: str, label: str, limit: int) -> None:
        self.scope = scope
        self.label = label  # the tenant's configured name, for metrics
        self.limit = limit
        self.queue: deque[Entry] = deque()
        self.lagging = False
        self.closed = False
        self.wake = asyncio.Event()

    def offer(self, entry: Entry) -> bool:
        """Queue an entry; False if the queue overflowed just now (the subscriber lags)."""
        if self.lagging:
            return True
        if len(self.queue) >= self.limit:
            self.queue.clear()
            self.lagging = True
            self.wake.set()
            return False
        self.queue.append(entry)
        self.wake.set()
        return True


class _Feed:
    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.ready = asyncio.Event()
        self.cursor = ""
        self.task: asyncio.Task[None] | None = None


class TooManySubscribers(Exception):
    pass


class Hub:
    """This replica's subscribers and one feed per tenant that has any (see the glossary)."""

    def __init__(
        self,
        log: EventLog,
        *,
        queue_limit: int,
        max_subscribers: int,
        heartbeat: float,
        metrics: Metrics,
        retry: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.log = log
        self.queue_limit = queue_limit
        self.max_subscribers = max_subscribers
        self.heartbeat = heartbeat
        self.metrics = metrics
        self.retry = retry
        self.sleep = sleep
        self._feeds: dict[str, _Feed] = {}
        self.subscribers = 0
        self.closed = False

    def full(self) -> bool:
        return self.subscribers >= self.max_subscribers

    def subscribe(self, scope: str, label: str) -> Subscriber:
        if self.closed:
            raise TooManySubscribers("the replica is shutting down")
        if self.full():
            raise TooManySubscribers(f"this replica serves {self.max_subscribers} event streams already")
        sub = Subscriber(scope, label, self.queue_limit)
        feed = self._feeds.get(scope)
        if feed is None:
            feed = self._feeds[scope] = _Feed()
            feed.task = asyncio.create_task(self._run(scope, feed), name=f"events feed {scope}")
        feed.subscribers.add(sub)
        self.subscribers += 1
        m = self.metrics
        m.child(m.events_subscribers, label).inc()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        feed = self._feeds.get(sub.scope)
        if feed is None or sub not in feed.subscribers:
            return
        feed.subscribers.discard(sub)
        self.subscribers -= 1
        m = self.metrics
        m.child(m.events_subscribers, sub.label).dec()
        if not feed.subscribers:
            del self._feeds[sub.scope]
            if feed.task is not None:
                feed.task.cancel()

    async def start(self, sub: Subscriber) -> str:
        """Once the tenant's feed follows the log: its cursor (every entry after it reaches the
        subscriber's queue; every entry up to it is in the log). Raises TimeoutError after the
        heartbeat interval, so the caller can send one and wait again."""
        feed = self._feeds[sub.scope]
        async with asyncio.timeout(self.heartbeat):
            await feed.ready.wait()
        return feed.cursor

    def close(self) -> None:
        """End every stream (the replica drains: clients reconnect elsewhere with Last-Event-ID)."""
        self.closed = True
        for feed in self._feeds.values():
            for sub in feed.subscribers:
                sub.closed = True
                sub.wake.set()

    def _lag(self, feed: _Feed) -> None:
        for sub in feed.subscribers:
            sub.lagging = True
            sub.queue.clear()
            sub.wake.set()

    async def _run(self, scope: str, feed: _Feed) -> None:
        """Follow the log: offer every new entry to each subscriber, in order."""
        m = self.metrics
        while not feed.ready.is_set():
            try:
                feed.cursor = await self.log.tail(scope)
                feed.ready.set()
            except Exception as exc:  # (a feed that stopped would leave its streams silent for good)
                log.warning("event feed cannot read the log, retrying: %s", exc, exc_info=_unexpected(exc))
                await self.sleep(self.retry)
        while True:
            try:
                page = await self.log.wait(scope, feed.cursor)
            except Exception as exc:
                # Entries may be trimmed while we cannot read: each subscriber reads the log
                # itself once it answers again, and is told what was lost.
                log.warning("event feed cannot read the log, retrying: %s", exc, exc_info=_unexpected(exc))
                self._lag(feed)
                await self.sleep(self.retry)
                continue
            if page.lost:  # the feed itself fell behind what is kept: as above
                self._lag(feed)
            for entry in page.entries:
                feed.cursor = entry.id
                for sub in feed.subscribers:
                    if not sub.offer(entry):
                        m.child(m.events_lagged, sub.label).inc()


def _unexpected(exc: Exception) -> bool:
    """Whether a failure is worth a traceback in the log (Redis being away is not)."""
    return not isinstance(exc, StoreUnavailable)


async def follow(
    hub: Hub, scope: str, label: str, *, position: str | None, commands: frozenset[str]
) -> AsyncIterator[bytes]:
    """One subscriber's SSE stream: from ``position`` (a Last-Event-ID) or from now, only the
    ``commands`` given (all when empty), with a heartbeat comment when idle. The heartbeat
    carries an ``id:`` when filtered-out events moved the position, so a client that resumes
    does not re-read them (nor get told they were lost).

    It subscribes when the response starts streaming and unsubscribes however it ends (the
    client gone, the replica draining), so a response never sent holds no subscription."""
    try:
        sub = hub.subscribe(scope, label)
    except TooManySubscribers as exc:  # (the handler checked; another stream took the last place)
        yield f": closed: {exc}\n\n".encode()
        return
    try:
        while True:
            try:
                cursor = await hub.start(sub)
                break
            except TimeoutError:
                yield KEEPALIVE
        yield HELLO  # from here on, every event published reaches this stream
        reader = _Reader(hub, sub, commands, cursor if position is None else position)
        catch_up = position is not None
        while not sub.closed:
            if catch_up or sub.lagging:
                frames, catch_up = await reader.catch_up()
            elif sub.queue:
                frames = reader.drain()
            else:
                frames = [await reader.idle()]
            for frame in frames:
                if frame:
                    yield frame
    finally:
        hub.unsubscribe(sub)


class _Reader:
    """A subscriber's position and the frames it is owed, from the log or from its queue."""

    def __init__(self, hub: Hub, sub: Subscriber, commands: frozenset[str], position: str) -> None:
        self._hub = hub
        self._sub = sub
        self._commands = commands
        self.position = position
        self._sent = position  # the newest id the client has seen (an event's, or a heartbeat's)
        m = hub.metrics
        self._delivered = m.child(m.events_delivered, sub.label)
        self._lost = m.child(m.events_lost, sub.label)

    def _frame(self, entry: Entry) -> bytes:
        self.position = entry.id
        if self._commands and entry.command not in self._commands:
            return b""
        self._sent = entry.id
        self._delivered.inc()
        return event_frame(entry)

    async def catch_up(self) -> tuple[list[bytes], bool]:
        """A page from the log after the position (the queue's entries are all in it); whether
        there may be more."""
        sub = self._sub
        sub.lagging = False
        sub.queue.clear()
        try:
            page = await self._hub.log.page(sub.scope, self.position, PAGE)
        except StoreUnavailable:
            await self._hub.sleep(self._hub.retry)
            return [KEEPALIVE], True
        frames = []
        if page.lost:
            self._lost.inc()
            frames.append(lost_frame(self.position, page.through))
            if page.through is not None and order(page.through) > order(self.position):
                self.position = self._sent = page.through
        frames += [self._frame(entry) for entry in page.entries]
        return frames, len(page.entries) >= PAGE

    def drain(self) -> list[bytes]:
        """The queued entries past the position (older ones were read from the log)."""
        sub = self._sub
        mark = order(self.position)
        frames = []
        while sub.queue and not sub.lagging:
            entry = sub.queue.popleft()
            place = order(entry.id)
            if place > mark:
                mark = place
                frames.append(self._frame(entry))
        return frames

    async def idle(self) -> bytes:
        """Wait for the queue; a heartbeat if nothing comes within the interval."""
        sub = self._sub
        sub.wake.clear()
        try:
            async with asyncio.timeout(self._hub.heartbeat):
                await sub.wake.wait()
        except TimeoutError:
            if self._sent != self.position:
                self._sent = self.position
                return b"id: " + self.position.encode() + b"\n" + KEEPALIVE
            return KEEPALIVE
        return b""
