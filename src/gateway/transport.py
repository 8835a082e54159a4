"""An httpx transport over aiohttp's connection pool.

httpx's own pool (httpcore) degrades sharply as requests in flight grow (BENCHMARKS.md,
"Upstream transport"); aiohttp's connector does not. The gateway keeps httpx as its client API
and its test seam (``httpx.MockTransport``) and puts this transport under it. aiohttp errors map
to httpx's exception tree exactly: a refused connection is a ``ConnectError``, a connection lost
mid-request a ``RemoteProtocolError``. Timeouts are the caller's (``asyncio.timeout``).
"""

from __future__ import annotations

import aiohttp
import httpx

_SKIP = frozenset({"host", "content-length", "connection", "transfer-encoding"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Keep-alive pool of at most ``connections`` sockets, created in the running event loop."""

    def __init__(self, *, connections: int, keepalive: float = 15.0) -> None:
        self._connections = connections
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._connections, limit_per_host=0, keepalive_timeout=self._keepalive, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True
        )
        return self._session

    @property
    def open_connections(self) -> int:
        """Sockets the pool holds now (idle or busy); tests use it to find leaks."""
        connector = self._session.connector if self._session is not None else None
        if connector is None:
            return 0
        idle = sum(len(conns) for conns in connector._conns.values())  # noqa: SLF001 - no public view
        return idle + len(connector._acquired)  # noqa: SLF001

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _SKIP]
        try:
            async with session.request(
                request.method, str(request.url), data=request.content, headers=headers, allow_redirects=False
            ) as response:
                content = await response.read()
                return httpx.Response(
                    status_code=response.status,
                    headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
                    content=content,
                    request=request,
                )
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(type(exc).__name__, request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
            raise httpx.RemoteProtocolError(type(exc).__name__, request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.NetworkError(type(exc).__name__, request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
