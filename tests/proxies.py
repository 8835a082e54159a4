"""Real egress proxies for the tests, each in its own process on a free loopback port, wanting
Basic credentials, with a log to read which calls reached it: proxy.py (PyPI; CONNECT tunnels
logged as they close), and Debian's tinyproxy and squid (``scripts/dev.py test`` installs them
when they are missing and it runs as root)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.redis_servers import free_port

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


class DebianProxy:
    """A running tinyproxy or squid: ``url`` carries the right credentials; ``requests`` are the
    log's lines for requests that reached it (refused ones too)."""

    def __init__(self, name: str, port: int, log: Path, marker: str) -> None:
        self.name = name
        self.port = port
        self._log = log
        self._marker = marker  # what a request's log line holds

    def url(self, user: str = USER, password: str = PASSWORD) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def requests(self, what: str = "") -> list[str]:
        text = self._log.read_text(errors="replace") if self._log.exists() else ""
        return [line for line in text.splitlines() if self._marker in line and what in line]

    def wait_for(self, what: str, count: int, within: float = 5.0) -> list[str]:
        """The request lines holding ``what`` once there are ``count`` (logs are written behind)."""
        end = time.monotonic() + within
        while len(found := self.requests(what)) < count and time.monotonic() < end:
            time.sleep(0.02)
        return found


DEBIAN_PROXIES = ("tinyproxy", "squid")
_AS_ROOT = os.geteuid() == 0  # then each drops to its own user, which must read its folder


def debian_proxy_binary(name: str) -> str:
    """The proxy's binary (squid lives in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError(f"no {name}: `python3 scripts/dev.py test` installs it as root, else apt-get install {name}")
    return found


def _tinyproxy_config(folder: Path, port: int) -> str:
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 60", "MaxClients 200", f"BasicAuth {USER} {PASSWORD}"]
    lines += ["LogLevel Info", f'LogFile "{folder / "proxy.log"}"', f'PidFile "{folder / "proxy.pid"}"']
    lines += ["DisableViaHeader Yes"]
    if _AS_ROOT:  # tinyproxy will not run as root
        group = "nogroup" if _has_group("nogroup") else "nobody"
        lines += ["User nobody", f"Group {group}"]
    return "\n".join(lines) + "\n"


def _squid_config(folder: Path, port: int) -> str:
    # Basic credentials checked by a shell helper: no htpasswd tool needed (squid passes "user password").
    (folder / "auth.sh").write_text(
        "#!/bin/sh\nwhile read -r user password; do\n"
        f'  if [ "$user" = "{USER}" ] && [ "$password" = "{PASSWORD}" ]; then echo OK; else echo ERR; fi\ndone\n'
    )
    lines = [f"http_port 127.0.0.1:{port}", "visible_hostname localhost", f"pid_filename {folder / 'squid.pid'}"]
    lines += [f"access_log stdio:{folder / 'proxy.log'}", f"cache_log {folder / 'cache.log'}", "cache_store_log none"]
    lines += ["cache deny all", "cache_mem 8 MB", f"coredump_dir {folder}", "pinger_enable off", "logfile_rotate 0"]
    lines += [f"auth_param basic program /bin/sh {folder / 'auth.sh'}", "auth_param basic children 2 startup=1 idle=1"]
    lines += ["auth_param basic realm egress", "acl authed proxy_auth REQUIRED", "http_access allow authed"]
    lines += ["http_access deny all", "shutdown_lifetime 0 seconds", "buffered_logs off"]
    if _AS_ROOT:
        lines += ["cache_effective_user proxy"]
    return "\n".join(lines) + "\n"


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def debian_proxy(name: str) -> Iterator[DebianProxy]:
    """Start tinyproxy or squid in the foreground with its own config in a temporary folder;
    ready once it accepts a connection; stopped and its folder removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix=f"lrg-{name}-"))
    folder.chmod(0o777)
    try:
        port = free_port()
        config = folder / f"{name}.conf"
        if name == "tinyproxy":
            config.write_text(_tinyproxy_config(folder, port))
            args, marker = [debian_proxy_binary(name), "-d", "-c", str(config)], "Request ("
        else:
            config.write_text(_squid_config(folder, port))
            args, marker = [debian_proxy_binary(name), "-N", "-f", str(config)], " "
        for written in folder.iterdir():
            written.chmod(0o644)
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listening(process, port, name)
            yield DebianProxy(name, port, folder / "proxy.log", marker)
        finally:
            process.send_signal(signal.SIGINT)  # squid: a fast shutdown (SIGTERM waits for clients)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_listening(process: subprocess.Popen[bytes], port: int, name: str) -> None:
    end = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if process.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{name} did not start on port {port}")
        time.sleep(0.05)
