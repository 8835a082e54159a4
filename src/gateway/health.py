"""Redis health as the request path sees it: one circuit breaker and one "store unavailable" error.

Every Redis store raises ``StoreUnavailable`` (never a redis-py error) when Redis is down, slow
or refusing; the breaker then sends the process to its in-process stores for ``cool_off``
seconds before one call tries Redis again. The state is in one place so ``/readyz``, logs and
metrics can tell the degraded mode.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger("gateway.health")


class StoreUnavailable(Exception):
    """The shared store could not answer in time; the caller falls back to in-process state.

    One instance per failed Redis call: callers that shared a pipelined call get the same one,
    and the breaker counts it once (``counted``)."""

    counted = False


class Breaker:
    """Closed: use Redis. Open: don't, until ``cool_off`` has passed; then let calls try again.

    It opens after ``threshold`` failures within ``window`` seconds: an outage produces them at
    once, while one late reply under a burst (an event loop too busy to read it in time) should
    cost that one call, not send the whole replica into degraded mode.
    """

    def __init__(self, *, cool_off: float, clock: Callable[[], float], threshold: int = 3, window: float = 1.0) -> None:
        self._cool_off = cool_off
        self._clock = clock
        self._threshold = threshold
        self._window = window
        self._recent: deque[float] = deque()
        self._open_until: float | None = None
        self.failures = 0
        self.recovered_at: float | None = None

    @property
    def degraded(self) -> bool:
        return self._open_until is not None

    def allows(self) -> bool:
        """Whether to try Redis now (always when closed; after the cool-off when open)."""
        return self._open_until is None or self._clock() >= self._open_until

    def failed(self, why: StoreUnavailable | str) -> None:
        """Count a failed Redis call, once however many callers it reached."""
        if isinstance(why, StoreUnavailable):
            if why.counted:
                return
            why.counted = True
        reason = str(why)
        self.failures += 1
        now = self._clock()
        if self._open_until is not None:  # already degraded: a failed retry extends it
            if now >= self._open_until:  # (a trial after the cool-off, not a call already under way)
                log.warning("redis still unavailable, a trial after the cool-off failed: %s", reason)
            self._open_until = now + self._cool_off
            return
        self._recent.append(now)
        while self._recent and self._recent[0] < now - self._window:
            self._recent.popleft()
        if len(self._recent) >= self._threshold:
            self._recent.clear()
            self._open_until = now + self._cool_off
            log.warning("redis unavailable, using in-process stores (degraded mode): %s", reason)

    def succeeded(self, *, by: str = "a call") -> bool:
        """Record a good call (``by``: what answered, for the log); True when this call ended a
        degraded period."""
        if self._open_until is None:
            return False
        self._open_until = None
        self.recovered_at = self._clock()
        log.warning("redis reachable again (%s answered), shared state resumed", by)
        return True
