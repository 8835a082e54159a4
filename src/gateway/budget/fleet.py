"""The fleet as one replica sees it through Redis: heartbeats, lapsed replicas, the fleet's size.

Every replica beats in Redis every ``BEAT_EVERY`` seconds and learns how many others fell silent
without leaving (``LAPSE_AFTER``): each of those may be cut off from Redis, pacing on its own
share, so the shared schedule is booked at the limit less their shares. It also learns the
fleet's size, and remembers the largest it saw within ``FORGET_AFTER``: a replica cut off paces
at the limit over the larger of that and the configured size, so a fleet never told its size
still stays within the limit. A replica that leaves cleanly says so; one that vanished is
forgotten after ``FORGET_AFTER``, which bounds the protection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from gateway.health import StoreUnavailable

BEAT_EVERY = 0.1  # seconds between a replica's heartbeats in Redis (10 cheap round trips a second)
LAPSE_AFTER = 0.5  # a replica silent this long may be cut off from Redis, pacing on its own
FORGET_AFTER = 600.0  # ... and one silent this long is gone (a vanished pod stops costing budget)


class Members(Protocol):
    """The fleet's heartbeats (Redis)."""

    async def beat(self, replica: str, lapse_after: float, forget_after: float) -> tuple[int, float, int]:
        """Record this replica's beat: the number of others silent for over ``lapse_after``, for
        how many seconds the record of beats has been kept (it restarts if Redis loses it), and
        the fleet's size (every replica in the record, this one and the lapsed included)."""
        ...

    async def leave(self, replica: str) -> None: ...


class Fleet:
    """What this replica knows of the others, from its own heartbeats."""

    def __init__(self, *, members: Members | None, replica: str, configured: int, clock: Callable[[], float]) -> None:
        """``configured``: GATEWAY_MAX_REPLICAS, the fleet's size as the operator said it."""
        self._members = members
        self._replica = replica
        self._configured = configured
        self._clock = clock
        self.lapsed = 0  # other replicas silent in Redis: each may be pacing on its own share
        self.seen = 1  # the largest fleet the heartbeats showed within FORGET_AFTER ...
        self._seen_at = float("-inf")  # ... and when it was seen
        self.beats = 0  # heartbeats sent (Redis round trips that no call made)
        self.last_beat: float | None = None
        self.kept_for = 0.0  # how long Redis had kept the record of beats, at the last beat

    @property
    def share(self) -> int:
        """How many replicas may be pacing alone: the configured fleet size or the largest seen."""
        return max(self._configured, self.seen)

    async def beat(self) -> None:
        """One beat; StoreUnavailable if Redis did not answer."""
        if self._members is None:
            return
        self.beats += 1
        lapsed, self.kept_for, size = await self._members.beat(self._replica, LAPSE_AFTER, FORGET_AFTER)
        self._saw(size)
        self.lapsed, self.last_beat = lapsed, self._clock()

    def _saw(self, size: int) -> None:
        """Remember the largest fleet seen; a larger one seen over FORGET_AFTER ago gives way to
        today's (a fleet that scaled down stops costing its old share after that long)."""
        now = self._clock()
        if size >= self.seen or now - self._seen_at > FORGET_AFTER:
            self.seen, self._seen_at = max(1, size), now

    def unseen_for(self, store_timeout: float, horizon: float) -> float:
        """Seconds until every other replica has counted this one as silent (its last beat, the
        lapse, their next beat, a slow Redis call) and the slots they booked at the full rate
        before that (up to the booking ``horizon``) have passed. Zero if it never beat: nobody
        counts on it then; zero in a fleet of one (configured so, and no other replica seen)."""
        if self.last_beat is None or self.share == 1:
            return 0.0
        noticed = self.last_beat + LAPSE_AFTER + BEAT_EVERY + store_timeout
        return noticed + horizon - self._clock()

    async def leave(self) -> None:
        """On a clean shutdown: the others need not leave room for this replica any more."""
        if self._members is not None:
            with contextlib.suppress(StoreUnavailable):
                await self._members.leave(self._replica)
