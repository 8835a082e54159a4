"""Shared bench plumbing: free ports, subprocesses that are always stopped, medians."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.redis_servers import free_port  # noqa: F401 - one free-port helper for tests and benches

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]


def wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextlib.contextmanager
def process(args: list[str], *, port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def median(values: list[float]) -> float:
    return statistics.median(values)


def load(
    urls: list[str],
    *,
    concurrency: int,
    seconds: float,
    method: str = "GET",
    body: str = "",
    headers: dict[str, str] | None = None,
) -> dict[str, object]:
    """Run bench/load.py in its own process and return its JSON result."""
    import json

    args = [
        sys.executable,
        "-m",
        "bench.load",
        *urls,
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
        "--method",
        method,
    ]
    if body:
        args += ["--body", body]
    for key, value in (headers or {}).items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result
