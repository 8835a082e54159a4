"""A real egress proxy for the tests: proxy.py (PyPI) in its own process on a free loopback port,
with Basic credentials, and its access log to read which calls crossed it."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

USER, PASSWORD = "egress-user", "egress-pass-0123456789"


class EgressProxy:
    """A running proxy.py: ``url`` carries the right credentials; ``lines`` is its access log."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self._log = log

    def url(self, user: str = USER, password: str = PASSWORD) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def lines(self, what: str = "", kind: str = "access_log") -> list[str]:
        """The log's lines of ``kind`` containing ``what``: ``access_log`` (one per request, or per
        tunnel once it closes) or ``ProxyAuthenticationFailed`` (one per refused request)."""
        text = self._log.read_text() if self._log.exists() else ""
        return [line for line in text.splitlines() if kind in line and what in line]

    async def closed(self, what: str, count: int = 1, within: float = 5.0) -> None:
        """Wait, without blocking the event loop, until ``count`` tunnels whose log line holds
        ``what`` have closed (a tunnel is logged once the proxy has closed both its sides), then
        a moment more: the origin's end of a refused handshake must be torn down by this loop,
        before the loop closes, or it is left behind unclosed."""
        end = time.monotonic() + within
        while len(self.lines(what)) < count and time.monotonic() < end:  # noqa: ASYNC110 - another process writes the log
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)

    def wait_for(self, what: str, count: int, within: float = 5.0, kind: str = "access_log") -> list[str]:
        """The lines (see ``lines``) once there are ``count`` (the log is written behind)."""
        end = time.monotonic() + within
        while len(found := self.lines(what, kind)) < count and time.monotonic() < end:
            time.sleep(0.02)
        return found


@contextlib.contextmanager
def egress_proxy(tmp: Path) -> Iterator[EgressProxy]:
    """Start proxy.py, wait until it listens; stop it on exit."""
    port_file, log = tmp / "proxy.port", tmp / "proxy.log"
    args = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file)]
    args += ["--num-workers", "1", "--num-acceptors", "1", "--threaded", "--basic-auth", f"{USER}:{PASSWORD}"]
    args += ["--log-level", "INFO", "--log-file", str(log)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > end:
                raise RuntimeError("proxy.py did not start")
            time.sleep(0.05)
        yield EgressProxy(int(port_file.read_text()), log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
