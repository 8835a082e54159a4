"""Overload, as Envoy's overload manager sees it: a resource monitor and actions at thresholds.

The resource is the event loop: every request, every budget slot's send window and every Redis
reply on a replica waits its turn on it, so how late a timer fires (the loop's *lag*) is the
queue all of them stand in. ``Overload.run`` samples it every ``every`` seconds.

The actions:

- **shed**: when ``over`` samples in a row (100 ms and more) lag past ``shed_at`` seconds, the
  replica answers new API work 503 ``overloaded`` with ``Retry-After``, before the work queues
  behind the backlog, so the requests it accepts keep a bounded latency. A refusal keeps its
  connection open while the replica is ready (a closed one costs the replica an accept per
  refusal, 0.57-0.72 of serving) and closes it once it is unready (Envoy's
  ``disable_http_keepalive``), when the client's next connection goes to another replica. One
  late sample is a stall that has passed (a pause of the machine, a long collection), not a
  queue: it sheds nothing. It serves again once a sample is under half of ``shed_at`` (the hysteresis keeps it
  from flapping at the bound).
- **admit**: at most ``max_in_flight`` API requests in flight (Envoy's circuit breaker
  ``max_requests``; 0: no bound). A request counts from the moment the server has read its
  headers until its app returns, so the count includes the requests queued in the event loop
  behind the backlog, not only those running: the queue the lag is a symptom of, seen at once.
  Event streams are admitted like any request but do not count once open (they last hours;
  GATEWAY_EVENTS_MAX_SUBSCRIBERS bounds them).
- **unready**: shedding for ``unready_after`` seconds in a row turns readiness false, so that
  Kubernetes routes around a replica that cannot keep up; it turns true when shedding stops.
  A replica at its in-flight bound stays ready: the bound is met in bursts, and the requests it
  holds may be waiting for budget slots the whole fleet shares, which another replica would not
  get sooner.

Both refusals are the server's, made before the app runs (``admission``): only API work
(``/v1/tenants/...``) is refused; Tencent's callbacks, health, readiness and metrics never are.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Literal

log = logging.getLogger("gateway.overload")

Refusal = Literal["lag", "in_flight"]  # why a request was refused: the shed counter's label values
_API = "/v1/tenants/"
_STREAM = re.compile(r"/v1/tenants/[^/]+/events")


class Overload:
    """The event loop's lag, the API requests in flight, and what the replica does about them
    (``shed_at`` 0: never sheds for lag; ``max_in_flight`` 0: no bound)."""

    def __init__(
        self, *, shed_at: float, unready_after: float, max_in_flight: int = 0, every: float = 0.05, over: int = 2
    ) -> None:
        self._shed_at = shed_at
        self._max_in_flight = max_in_flight
        self._unready_after = unready_after
        self._every = every
        self._over = over
        self._late = 0  # samples in a row past shed_at
        self.lag = 0.0  # the latest sample, in seconds
        self.shedding = False
        self.shed: dict[Refusal, int] = {"lag": 0, "in_flight": 0}  # requests answered 503 overloaded, by why
        self.in_flight = 0  # API requests admitted and not finished (``counted``)
        self._since = 0.0  # when shedding began (loop time)

    def refusal(self, path: str) -> Refusal | None:
        """Why a new request for ``path`` is refused now, or None: it is admitted."""
        if not path.startswith(_API):
            return None
        if self.shedding:
            reason: Refusal = "lag"
        elif 0 < self._max_in_flight <= self.in_flight:
            reason = "in_flight"
        else:
            return None
        self.shed[reason] += 1
        return reason

    @staticmethod
    def counted(path: str) -> bool:
        """Whether an admitted request for ``path`` counts in flight until it finishes."""
        return path.startswith(_API) and _STREAM.fullmatch(path) is None

    def sample(self, lag: float, now: float) -> None:
        """One measurement of the loop's lag, taken at ``now`` (the loop's clock)."""
        self.lag = lag
        if self._shed_at <= 0:
            return
        self._late = self._late + 1 if lag > self._shed_at else 0
        if not self.shedding and self._late >= self._over:
            self.shedding, self._since = True, now
            log.warning("overloaded: shedding new requests", extra={"fields": {"lag_seconds": round(lag, 3)}})
        elif self.shedding and lag < self._shed_at / 2:
            self.shedding = False
            log.warning("no longer overloaded", extra={"fields": {"shed_for_seconds": round(now - self._since, 3)}})

    def ready(self, now: float) -> bool:
        """False while shedding has lasted ``unready_after`` seconds."""
        return not (self.shedding and now - self._since >= self._unready_after)

    async def run(self) -> None:
        """Sample the lag until cancelled: a timer's lateness past its ``every`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self._every)
            now = loop.time()
            self.sample(max(0.0, now - start - self._every), now)
