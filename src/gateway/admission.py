"""Admission: the server's say on a request, before the app runs (``overload``'s refusals).

A replica starved of CPU queues its requests in the server, not in the app: uvicorn parses each
one and starts a task for it, and those tasks wait their turn in the event loop before any
middleware runs. A refusal made there, by Litestar middleware, came after that wait and still
cost most of a request's CPU (BENCHMARKS.md, "Overload"). So the refusal is made where uvicorn
starts a request's task: ``Admitting`` is uvicorn's httptools protocol, asking ``Overload``
first. A refused request gets a prebuilt 503 problem+json (code ``overloaded``, ``Retry-After``)
written straight to its socket, as uvicorn answers a request it cannot parse (its
``send_400_response``): no task, no ASGI messages, no app. The connection stays open while the
replica is ready, and the next request on it is read as any other: closed, a refusal cost two
thirds of a served request (the accept and TCP set-up of the client's next one), kept alive
0.11-0.26 (BENCHMARKS.md, "Overload: refusals kept alive"), and a replica at four times its
capacity cannot keep up with refusals that cost a quarter of a request. Once the replica is
unready, a refusal says ``Connection: close`` and closes: the Service no longer sends this
replica new connections, so the client's next one goes to another. An admitted API request
counts in flight until its app returns.

An admitted API request whose client has closed the connection by the time its task starts
(it gave up waiting, in the kernel's queues or the loop's) is not run: no answer can reach
anyone, and under overload such requests are the backlog that keeps a replica busy long after
the load drops. It is looked for only while the loop lags past ``LAGGING`` (10 ms: a replica
keeping up runs each request as it is read), in the transport's state and, since the request and
the close are often read in two polls, the kernel's (TCP_INFO: CLOSE_WAIT, one ``getsockopt``). A
write skipped so was never applied; its client saw no answer, so it retries (with its
Idempotency-Key) as after any lost reply. Counted as ``gateway_requests_abandoned_total``; the
request gets no access-log line (the app never ran).

uvicorn's own ``limit_concurrency`` makes the same check at the same place, but it is not ours:
it counts open connections (idle keep-alive ones, and hours-long event streams) as well as tasks
(health and metrics among them), so a replica with many idle clients refuses everything; its
503 is plain text without ``Retry-After``; it logs a warning per refusal (a log line per request
at the moment the replica has least CPU for it); and it refuses ``/readyz`` and Tencent's callbacks.

A connection accepted while the accept queue is past its bound (``Overload.turning_away``) does
not get uvicorn's protocol at all, whose set-up (a parser, timers, its state) costs more than the
refusal: ``TurnedAway`` reads the request line of its first request and, for API work, writes the
prebuilt 503 with ``Connection: close`` and closes; anything else (health, readiness, metrics,
Tencent's callbacks) is handed to uvicorn's protocol with the bytes read, and served. That is what
lets a replica refuse as fast as connections come (BENCHMARKS.md, "Overload: turning work away at
the accept queue").

A refusal is counted (``gateway_overload_shed_total{reason}``) but gets no access-log line and no
request id: the app, which does both, never sees it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway import errors
from gateway.api import problem_response
from gateway.overload import Overload, Refusal

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope

DETAILS: dict[Refusal, str] = {
    "lag": "this replica's event loop is overloaded; retry, another replica may answer",
    "in_flight": "this replica has its maximum of requests in flight (GATEWAY_MAX_IN_FLIGHT); retry, "
    "another replica may answer",
    "accept_queue": "this replica has more connections waiting than it can accept in time; retry, "
    "another replica may answer",
}


def refusal_bytes(reason: Refusal, *, close: bool = True) -> bytes:
    """The whole HTTP/1.1 response refusing a request, as the one problem+json mapping builds it
    (``close``: with ``Connection: close``)."""
    reply = problem_response(errors.Overloaded(DETAILS[reason], retry_after=1), None)
    body = reply.content or b""
    headers = {
        **reply.headers,
        "content-type": str(reply.media_type),
        "content-length": str(len(body)),
        **({"connection": "close"} if close else {}),
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 503 Service Unavailable\r\n{head}\r\n".encode("latin-1") + body


LAGGING = 0.01  # a loop this late (s) may hold requests whose clients have left: look before running them
_TCP_CLOSE_WAIT = 8  # struct tcp_info's tcpi_state (its first byte) once the peer has closed


def _left(transport: asyncio.Transport) -> bool:
    """Whether the client has closed the connection: the transport is closing, or the kernel has
    the client's FIN that the server has not read yet (TCP_INFO's state is CLOSE_WAIT: a request
    read in one poll, the close waiting for the next)."""
    if transport.is_closing():
        return True
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:  # (closed under us)
        return True
    return state == _TCP_CLOSE_WAIT


class InFlight:
    """An admitted API request's app: not run at all if its client has closed the connection
    by the time its task starts (nobody waits for the answer: an abandoned request; the server
    closes its side, without the error and the 500 uvicorn gives an app that did not answer); out
    of the in-flight count when the app returns."""

    __slots__ = ("_app", "_cycle", "_overload")

    def __init__(self, app: ASGI3Application, overload: Overload, cycle: RequestResponseCycle) -> None:
        self._app = app
        self._overload = overload
        self._cycle = cycle

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        try:
            if self._overload.lag > LAGGING and _left(self._cycle.transport):
                self._overload.abandoned += 1
                self._cycle.disconnected = True
                self._cycle.transport.close()
            else:
                await self._app(scope, receive, send)
        finally:
            self._overload.in_flight -= 1


class Admitting(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing what ``overload`` refuses before starting its task."""

    overload: ClassVar[Overload]
    refusals: ClassVar[dict[tuple[Refusal, bool], bytes]]  # by (why, whether the connection closes)
    keep_alive: ClassVar[bool]

    # uvicorn calls this for each request it has read the headers of (a pipelined one once the
    # request before it is answered), right where it would start the app's task.
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        path = cycle.scope["path"]
        refused = self.overload.refusal(path)
        if refused is not None:
            cycle.response_complete = True  # (the parser drops the rest of it, body included)
            if not self.transport.is_closing():  # (a pipelined request after a refusal: dropped)
                self._refuse(refused, cycle)
        elif self.overload.counted(path):
            self.overload.in_flight += 1
            super()._start_asgi_task(cycle, InFlight(app, self.overload, cycle))
        else:
            super()._start_asgi_task(cycle, app)

    def _refuse(self, reason: Refusal, cycle: RequestResponseCycle) -> None:
        # Kept alive, a refusal costs 0.11-0.26 of a served request, closed 0.57-0.72 (the accept
        # and the TCP set-up of the client's next request): a replica at 4x its capacity cannot
        # even keep up with its refusals. Closed once unready: the Service no longer sends this
        # replica new connections, so the client's next one goes to another.
        close = not (self.keep_alive and cycle.keep_alive and self.overload.ready(self.loop.time()))
        self.transport.write(self.refusals[reason, close])
        if close:
            self.transport.close()
        else:
            self.on_response_complete()  # (reads on: the client's next request, pipelined or not)


TURNED_AWAY_FOR = 1.0  # seconds a turned-away connection may take to send its request line


class TurnedAway(asyncio.Protocol):
    """A connection accepted while the accept queue is deep (``Overload.turning_away``): its
    first request, if ``overload`` refuses it (API work, while it still turns work away or sheds),
    gets the prebuilt 503 ``overloaded`` and the connection is closed, for a fraction of what
    uvicorn's protocol costs to set up; any other request (health, readiness, metrics, Tencent's
    callbacks) is handed to that protocol and served."""

    __slots__ = ("_full", "_overload", "_refusals", "_timer", "_transport")

    def __init__(
        self, full: Callable[[], asyncio.Protocol], overload: Overload, refusals: dict[tuple[Refusal, bool], bytes]
    ) -> None:
        self._full = full
        self._overload = overload
        self._refusals = refusals
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(TURNED_AWAY_FOR, transport.close)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None  # (asyncio calls connection_made first)
        if self._timer is not None:
            self._timer.cancel()
        parts = data[:64].split(b" ", 2)  # the request line: METHOD SP target SP version
        refused = self._overload.refusal(parts[1].decode("latin-1")) if len(parts) == 3 else None
        if refused is not None:
            transport.write(self._refusals[refused, True])
            transport.close()
            return
        full = self._full()
        transport.set_protocol(full)
        full.connection_made(transport)
        full.data_received(data)

    def eof_received(self) -> bool:
        return False  # (closes)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


def protocol(overload: Overload, *, keep_alive: bool = True) -> Callable[..., asyncio.Protocol]:
    """What makes each connection's protocol, to give uvicorn (``Config(http=...)``: it calls it
    as it would a protocol class) for a replica's ``overload``: ``Admitting``, or ``TurnedAway``
    while the accept queue is deep."""
    if not hasattr(HttpToolsProtocol, "_start_asgi_task"):  # (older uvicorns started tasks inline)
        raise RuntimeError("admission needs uvicorn's HttpToolsProtocol._start_asgi_task (uvicorn>=0.55)")
    refusals = {(reason, close): refusal_bytes(reason, close=close) for reason in DETAILS for close in (False, True)}
    attributes = {"overload": overload, "refusals": refusals, "keep_alive": keep_alive}
    admitting: type[Admitting] = type("Admitting", (Admitting,), attributes)

    def connection(**kwargs: Any) -> asyncio.Protocol:
        if overload.turning_away:
            return TurnedAway(lambda: admitting(**kwargs), overload, refusals)
        return admitting(**kwargs)

    return connection
