"""Several real gateway processes on one Redis and one emulator process, as in production."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.redis_servers import free_port
from tests.support import SECRETS, TOKENS, config_yaml

GATEWAY = [sys.executable, "-m", "gateway"]
EMULATOR_NICE = -10  # the stand-in for Tencent runs ahead of the replicas (Fleet.start)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def start_emulator(url: str, config: Path, rooms: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The emulator as a process of its own at ``url``, its apps from ``config``, ready.

    Tencent does not share the gateway's CPU; here the stand-in does, and it stamps each call's
    arrival when its event loop gets to it. Starved behind the replicas on two cores, it got to
    calls in bursts (0.25 ms apart, its own cost a call, after a stall), counted more than 200 in
    a second that the gateway had spread out, answered 60007 and set off retries (a fleet test
    saw "209 in a second" and a 3.99 s request so); in the test's own event loop, it stamped
    calls whenever the gateway and the load generator beside it let it (51 in a second through
    tinyproxy against a budget of 50). It runs in a process of its own, ahead of the others where
    the OS lets it (root, as in CI), elsewhere as it is. ``stats()["stalls"]`` says when it ran
    late all the same."""
    port = url.rsplit(":", 1)[1]
    emulator = subprocess.Popen(
        [*GATEWAY, "emulator", "--port", port, "--config", str(config), "--rooms", str(rooms)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, emulator.pid, EMULATOR_NICE)
    try:
        wait_http(f"{url}/_emulator/stats", emulator)
    except BaseException:
        stop(emulator)
        raise
    return emulator


def emulator_stats(url: str) -> dict[str, Any]:
    """What the emulator at ``url`` counted (its ``/_emulator/stats``)."""
    result: dict[str, Any] = httpx.get(f"{url}/_emulator/stats", timeout=10).json()
    return result


@contextlib.contextmanager
def emulator_process(tmp: Path, rooms: int = 3) -> Iterator[str]:
    """An emulator process (``start_emulator``) with the suite's apps and ``rooms`` rooms each; yields its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    config = tmp / "emulator.yaml"
    config.write_text(config_yaml(url))
    proc = start_emulator(url, config, rooms, {**os.environ, **SECRETS})
    try:
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def behind_slow_tencent(
    tmp_path: Path, *, latency_ms: int, drain_seconds: float, stderr: int | None = None, **settings: object
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`gateway serve` (its URL and process) in front of an emulator that takes ``latency_ms``
    to answer, with GATEWAY_DRAIN_SECONDS and ``settings`` (GATEWAY_<NAME>) set; both stopped on
    the way out."""
    emu_port, gw_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(f"http://127.0.0.1:{emu_port}"))
    env = {**os.environ, **SECRETS, "GATEWAY_CONFIG": str(config), "GATEWAY_DRAIN_SECONDS": str(drain_seconds)}
    env.update({f"GATEWAY_{name.upper()}": str(value) for name, value in settings.items()})
    emulator = subprocess.Popen(
        [*GATEWAY, "emulator", "--port", str(emu_port), "--config", str(config), "--latency-ms", str(latency_ms)],
        env=env,
    )
    gateway = subprocess.Popen(
        [*GATEWAY, "serve", "--host", "127.0.0.1", "--port", str(gw_port)], env=env, stderr=stderr
    )
    try:
        wait_http(f"http://127.0.0.1:{emu_port}/_emulator/stats", emulator)
        base = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{base}/readyz", gateway)
        yield base, gateway
    finally:
        if gateway.poll() is None:
            stop(gateway)
        stop(emulator)


class Fleet:
    """An emulator process and ``replicas`` gateway processes sharing ``redis_url``."""

    def __init__(
        self,
        tmp: Path,
        redis_url: str,
        replicas: int,
        rooms: int = 20,
        redis_urls: dict[int, str] | None = None,
        weights: dict[str, int] | None = None,
        **settings: Any,
    ) -> None:
        self.emulator_url = f"http://127.0.0.1:{free_port()}"
        config = tmp / "gateway.yaml"
        config.write_text(config_yaml(self.emulator_url, weights=weights))
        self.env = {
            **os.environ,
            **SECRETS,
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_MAX_REPLICAS": str(replicas),
            "GATEWAY_LOG_LEVEL": "warning",
            **{f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.config = config
        self.redis_urls = redis_urls or {}  # replica index -> its own GATEWAY_REDIS_URL
        self.replicas = replicas
        self.rooms = rooms
        self.urls: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.procs.append(start_emulator(self.emulator_url, self.config, self.rooms, self.env))
        for index in range(self.replicas):
            gw_port = free_port()
            own = {"GATEWAY_REDIS_URL": self.redis_urls[index]} if index in self.redis_urls else {}
            proc = subprocess.Popen(
                [*GATEWAY, "serve", "--host", "127.0.0.1", "--port", str(gw_port)],
                env={**self.env, **own},
                stdout=subprocess.DEVNULL,
            )
            self.procs.append(proc)
            self.urls.append(f"http://127.0.0.1:{gw_port}")
            wait_http(f"http://127.0.0.1:{gw_port}/readyz", proc)
        self.warm_up()

    def warm_up(self) -> None:
        """Open each replica's Redis and upstream pools, load the scripts and sign once, as in a
        fleet that has been running: measurements start from steady state."""
        auth = {"authorization": f"Bearer {TOKENS['rw']}", "cache-control": "no-cache"}
        with httpx.Client(headers=auth, timeout=10) as client:
            for url in self.urls:
                for n in range(1, 4):
                    client.get(f"{url}/v1/tenants/acme/rooms/room-{n}")
                    client.patch(f"{url}/v1/tenants/acme/rooms/room-{n}", json={"activity_status": 0})

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)

    def counter(self, sample: str) -> float:
        """A counter summed over every replica and label set (``sample``: the sample's name, as
        ``gateway_budget_grants_total``), read from each replica's /metrics."""
        total = 0.0
        for url in self.urls:
            for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
                total += sum(s.value for s in family.samples if s.name == sample)
        return total

    def stats(self) -> dict[str, Any]:
        return emulator_stats(self.emulator_url)

    def reset(self, **faults: Any) -> None:
        httpx.post(f"{self.emulator_url}/_emulator/reset")
        httpx.post(f"{self.emulator_url}/_emulator/faults", json=faults)


@contextlib.contextmanager
def fleet(
    tmp: Path,
    redis_url: str,
    replicas: int = 3,
    rooms: int = 20,
    redis_urls: dict[int, str] | None = None,
    weights: dict[str, int] | None = None,
    **settings: Any,
) -> Iterator[Fleet]:
    running = Fleet(tmp, redis_url, replicas, rooms, redis_urls, weights, **settings)
    try:
        running.start()
        yield running
    finally:
        running.close()


class Partition:
    """A TCP relay to ``port`` on loopback that can be cut (every connection closed, new ones
    refused) and mended: one replica's road to Redis, while the others keep theirs."""

    def __init__(self, port: int) -> None:
        self._target = port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.mend()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def mend(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new connections
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()  # (on 3.12+ this also waits for the aborted connections)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
