"""Overload, as Envoy's overload manager sees it: resource monitors and actions at thresholds.

The resources, sampled by ``Overload.run`` every ``every`` seconds:

- the event loop: every request, every budget slot's send window and every Redis reply on a
  replica waits its turn on it, so how late a timer fires (the loop's *lag*) is the queue all
  of them stand in once they are in the process;
- the listener's accept queue (``pending``: TCP_INFO of the listening socket, whose
  ``tcpi_unacked`` is the queue's length): the connections the kernel holds that the replica has
  not accepted. A replica held to a CPU limit (a CFS quota, as Kubernetes sets) runs in slices,
  5 ms in every 100 ms at 50m; a loop that keeps up with what it has read lags little between
  them while connections pile up in the kernel. That is the queue the lag cannot see.

The actions:

- **shed**: when ``over`` samples in a row (100 ms and more) lag past ``shed_at`` seconds, the
  replica answers new API work 503 ``overloaded`` with ``Retry-After``, before the work queues
  behind the backlog, so the requests it accepts keep a bounded latency. A refusal keeps its
  connection open while the replica is ready (a closed one costs the replica an accept per
  refusal, 0.57-0.72 of serving) and closes it once it is unready (Envoy's
  ``disable_http_keepalive``), when the client's next connection goes to another replica. One
  late sample is a stall that has passed (a pause of the machine, a long collection), not a
  queue: it sheds nothing. It serves again once a sample is under half of ``shed_at`` (the
  hysteresis keeps it from flapping at the bound).
- **turn away**: one sample with more than ``accept_queue`` connections waiting to be accepted
  (``turning_away``) refuses API work 503 ``overloaded`` (``accept_queue``) until the queue is
  down to a quarter of that: new connections get ``admission.TurnedAway``, which refuses their
  API request and closes for a fraction of uvicorn's set-up, and requests on open connections are
  refused as when shedding. The queue is FIFO, its head the connections that waited longest:
  turning them away drains it, and those that come once it is short are served soon. (Through
  uvicorn's protocol, the same refusals cost two thirds of a request each, and the replica
  refused 96-99% while the few it admitted still waited seconds; BENCHMARKS.md, "Overload under
  a CPU limit"; with it, "Overload: turning work away at the accept queue".)
- **admit**: at most ``max_in_flight`` API requests in flight (Envoy's circuit breaker
  ``max_requests``; 0: no bound). A request counts from the moment the server has read its
  headers until its app returns, so the count includes the requests queued in the event loop
  behind the backlog, not only those running: the queue the lag is a symptom of, seen at once.
  Event streams are admitted like any request but do not count once open (they last hours;
  GATEWAY_EVENTS_MAX_SUBSCRIBERS bounds them).
- **unready**: being *overloaded* (shedding; or turning work away, and for ``HOLD`` seconds after
  the queue was last deep: a replica that drains its queue in bursts is overloaded throughout)
  for ``unready_after`` seconds in a row turns readiness false, so that Kubernetes sends new
  connections to other replicas; it turns true when that stops. What no replica can see is the
  wait before the kernel holds a connection: a client whose handshake found the accept queue
  full retransmits after 1, 3 and 7 s; turning away keeps the queue far from full.
  A replica at its in-flight bound stays ready: the bound is met in bursts, and the requests it
  holds may be waiting for budget slots the whole fleet shares, which another replica would not
  get sooner.

Both refusals are the server's, made before the app runs (``admission``): only API work
(``/v1/tenants/...``) is refused; Tencent's callbacks, health, readiness and metrics never are.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
from typing import Literal

log = logging.getLogger("gateway.overload")

Refusal = Literal["lag", "in_flight", "accept_queue"]  # why a request was refused: the shed counter's labels
ACCEPT_QUEUE = 128  # the default bound on the connections waiting to be accepted (GATEWAY_OVERLOAD_ACCEPT_QUEUE)
# Seconds a replica stays overloaded after its accept queue was last past its bound: turning work
# away drains the queue in a slice, then it refills while the replica serves; under a 50m limit at
# 4x its capacity the queue was deep again 1.1-1.3 s later (bench overload, two runs), so a 1 s
# hold let readiness see a new overload every second and never a sustained one.
HOLD = 2.0
_TCP_INFO_UNACKED = slice(24, 28)  # struct tcp_info's __u32 tcpi_unacked: a listener's accept queue
_API = "/v1/tenants/"
_STREAM = re.compile(r"/v1/tenants/[^/]+/events")


class Overload:
    """The event loop's lag, the API requests in flight, and what the replica does about them
    (``shed_at`` 0: never sheds for lag; ``max_in_flight`` 0: no bound)."""

    def __init__(
        self,
        *,
        shed_at: float,
        unready_after: float,
        max_in_flight: int = 0,
        accept_queue: int = ACCEPT_QUEUE,
        every: float = 0.05,
        over: int = 2,
    ) -> None:
        self._shed_at = shed_at
        self._queue_at = accept_queue
        self._max_in_flight = max_in_flight
        self._unready_after = unready_after
        self._every = every
        self._over = over
        self._late = 0  # samples in a row past shed_at
        self.lag = 0.0  # the latest sample, in seconds
        self.shedding = False  # for lag
        self.overloaded = False  # shedding, or a deep accept queue: the gauge and readiness
        self.listeners: list[socket.socket] = []  # the server's listening TCP sockets, once it listens
        self.pending = 0  # connections waiting to be accepted at the last sample
        self.turning_away = False  # the accept queue is past its bound: API work is refused
        self._deep_at = -math.inf  # when a sample last found the accept queue past its bound
        # requests answered 503 overloaded, by why
        self.shed: dict[Refusal, int] = {"lag": 0, "in_flight": 0, "accept_queue": 0}
        self.in_flight = 0  # API requests admitted and not finished (``counted``)
        self.abandoned = 0  # admitted API requests not run: their client had closed the connection
        self._since = 0.0  # when being overloaded began (loop time)

    def refusal(self, path: str) -> Refusal | None:
        """Why a new request for ``path`` is refused now, or None: it is admitted."""
        if not path.startswith(_API):
            return None
        if self.shedding:
            reason: Refusal = "lag"
        elif self.turning_away:
            reason = "accept_queue"
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
        """One measurement of the loop's lag, taken at ``now`` (the loop's clock), with the accept
        queue's length (``pending``) read just before it."""
        self.lag = lag
        if self._shed_at > 0:
            self._late = self._late + 1 if lag > self._shed_at else 0
            if not self.shedding and self._late >= self._over:
                self.shedding = True
            elif self.shedding and lag < self._shed_at / 2:
                self.shedding = False
        if 0 < self._queue_at < self.pending:
            self.turning_away, self._deep_at = True, now
        elif self.turning_away and self.pending <= self._queue_at // 4:
            self.turning_away = False
        overloaded = self.shedding or self.turning_away or now - self._deep_at < HOLD
        if overloaded and not self.overloaded:
            self.overloaded, self._since = True, now
            fields = {"lag_seconds": round(lag, 3), "accept_queue": self.pending, "shedding": self.shedding}
            log.warning("overloaded", extra={"fields": fields})
        elif self.overloaded and not overloaded:
            self.overloaded = False
            log.warning("no longer overloaded", extra={"fields": {"for_seconds": round(now - self._since, 3)}})

    def ready(self, now: float) -> bool:
        """False while the replica has been overloaded for ``unready_after`` seconds."""
        return not (self.overloaded and now - self._since >= self._unready_after)

    async def run(self) -> None:
        """Sample the lag until cancelled: a timer's lateness past its ``every`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self._every)
            now = loop.time()
            self.pending = self.accept_queue()
            self.sample(max(0.0, now - start - self._every), now)

    def accept_queue(self) -> int:
        """Connections the kernel holds for the listeners, not yet accepted (one ``getsockopt``
        each)."""
        pending = 0
        for sock in self.listeners:
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_UNACKED.stop)
            except OSError:  # (closed while draining)
                continue
            pending += int.from_bytes(info[_TCP_INFO_UNACKED], "little")
        return pending
