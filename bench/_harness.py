"""Shared bench plumbing: free ports, subprocesses that are always stopped, medians."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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


def summarise(runs: dict[str, list[dict[str, object]]], width: int = 18) -> tuple[dict[str, float], dict[str, float]]:
    """Print each column's median req/s, median p50 and total errors over its runs (``load``
    results); return the medians (req/s, p50 ms) by column. req/s counts the answers that were
    not errors (all of them in a healthy run); p50 is over every answer (wrk cannot tell them
    apart), the median of the runs that had one (NaN if none had)."""

    def ok_rps(r: dict[str, object]) -> float:
        requests, errors = int(r["requests"]), int(r["errors"])  # type: ignore[call-overload]
        return float(r["rps"]) * max(requests - errors, 0) / requests if requests else 0.0  # type: ignore[arg-type]

    def p50_of(v: list[dict[str, object]]) -> float:
        answered = [float(r["p50_ms"]) for r in v if r["p50_ms"] is not None and int(r["requests"])]  # type: ignore[arg-type, call-overload]
        return median(answered) if answered else math.nan

    rps = {k: median([ok_rps(r) for r in v]) for k, v in runs.items()}
    p50 = {k: p50_of(v) for k, v in runs.items()}
    errors = {k: sum(int(r["errors"]) for r in v) for k, v in runs.items()}  # type: ignore[call-overload]
    for key in runs:
        print(f"  {key:{width}s} {rps[key]:7.0f} req/s  p50 {p50[key]:6.2f} ms  errors {errors[key]}")
    return rps, p50


IDLE_GAP = 0.02  # the emulator's latency: how long a lone caller leaves each hop idle


def round_trips(
    host: str, port: int, request: bytes, done: Callable[[bytes], bool], *, count: int = 300
) -> tuple[float, float]:
    """One request's round trip on a kept-alive plain socket, p50 in µs: back to back, and each
    after IDLE_GAP of quiet, as a lone caller's request meets every hop (this machine wakes an
    idle process slowly). ``done``: whether the bytes read so far hold the whole reply."""
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def once() -> float:
            started = time.perf_counter()
            sock.sendall(request)
            data = b""
            while not done(data):
                data += sock.recv(65536)
            return (time.perf_counter() - started) * 1e6

        hot = [once() for _ in range(count)]
        idle = []
        for _ in range(count):
            time.sleep(IDLE_GAP)
            idle.append(once())
    return median(hot), median(idle)


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used so far, from /proc (0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, all) CPU ticks of this machine so far, from /proc/stat (None elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return fields[7], sum(fields)


class Steal:
    """What the hypervisor took from this VM while the block ran: ``steal`` in /proc/stat is
    time another guest ran while this one had work, and every process on a stolen vCPU stalls,
    whatever its code. A VM paused for 250 ms stalls a whole fleet of replicas at once: their
    slots pass with nobody on a CPU to send (the budget's forfeits). Not every pause is reported
    as steal (BENCHMARKS.md, "Fifth session"): a low figure does not prove the VM ran throughout.
    Sampled every 100 ms."""

    def __init__(self) -> None:
        self.share: float | None = None  # of the whole run's CPU time
        self.worst: float | None = None  # of the worst 100 ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Steal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        first = last = cpu_ticks()
        if first is None:
            return
        worst = 0.0
        while not self._stop.wait(0.1):
            now = cpu_ticks()
            if now is None or last is None:
                return
            if now[1] > last[1]:
                worst = max(worst, (now[0] - last[0]) / (now[1] - last[1]))
            last = now
        if last is not None and last[1] > first[1]:
            self.share, self.worst = (last[0] - first[0]) / (last[1] - first[1]), worst

    def __str__(self) -> str:
        if self.share is None or self.worst is None:
            return "CPU stolen by the hypervisor: unknown"
        return f"CPU stolen by the hypervisor: {self.share:.1%} of the run, {self.worst:.0%} of its worst 100 ms"


def load(
    urls: list[str],
    *,
    concurrency: int,
    seconds: float,
    method: str = "GET",
    body: str = "",
    headers: dict[str, str] | None = None,
    generator: str | None = None,
) -> dict[str, object]:
    """Closed-loop load from its own process: requests, rps, p50_ms, p99_ms, statuses.

    ``generator`` is ``wrk`` (C, a few µs of CPU a request) or ``aiohttp`` (bench/load.py, ~300 µs
    a request: on two cores it takes CPU from what it measures). The default is wrk where it is
    installed (``apt-get install wrk``), else aiohttp; BENCH_LOADGEN overrides.
    """
    generator = generator or os.environ.get("BENCH_LOADGEN") or ("wrk" if shutil.which("wrk") else "aiohttp")
    if generator == "wrk" and len({_origin(u) for u in urls}) > 1:
        generator = "aiohttp"  # one wrk drives one origin; spreading over replicas is aiohttp's job
    if generator == "wrk":
        return wrk(urls, concurrency=concurrency, seconds=seconds, method=method, body=body, headers=headers)
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
    statuses: dict[str, int] = result["statuses"]  # type: ignore[assignment]
    result["errors"] = sum(n for status, n in statuses.items() if not 200 <= int(status) < 400)
    result["generator"] = "aiohttp"
    return result


_WRK_SCRIPT = """
local paths, i, vary, key = {%(paths)s}, 0, %(vary)s, %(key)s
wrk.method = %(method)s
wrk.body = %(body)s
%(headers)s
request = function()
  i = i + 1
  if vary then
    return wrk.format(nil, paths[(i %% #paths) + 1], nil, string.format(wrk.body, i))
  end
  if key then  -- a new Idempotency-Key for every request
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    headers["Idempotency-Key"] = key .. i
    return wrk.format(nil, paths[(i %% #paths) + 1], headers)
  end
  return wrk.format(nil, paths[(i %% #paths) + 1])
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%.1f %%.1f\\n", summary.requests, summary.duration,
    errors.status + errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _origin(url: str) -> str:
    match = re.match(r"^https?://[^/]+", url)
    if match is None:
        raise ValueError(f"not an http(s) URL: {url}")
    return match.group(0)


def _lua(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid Lua string literal for this ASCII text


def wrk(
    urls: list[str],
    *,
    concurrency: int,
    seconds: float,
    method: str = "GET",
    body: str = "",
    headers: dict[str, str] | None = None,
    vary: bool = False,
    key: str | None = None,
) -> dict[str, object]:
    """The same measurement with wrk (one thread; its latencies are kept in microseconds).
    ``vary``: ``body`` is a Lua format string whose ``%d`` is the request's number (distinct bodies).
    ``key``: every request carries a distinct ``Idempotency-Key``, this prefix and its number."""
    origin = _origin(urls[0])
    if any(_origin(u) != origin for u in urls):
        raise ValueError("wrk runs take URLs of one origin")
    paths = [u[len(origin) :] for u in urls]
    all_headers = dict(headers or {})
    if body:
        all_headers.setdefault("Content-Type", "application/json")
    script = _WRK_SCRIPT % {
        "paths": ", ".join(_lua(p) for p in paths),
        "method": _lua(method),
        "body": _lua(body) if body else "nil",
        "vary": "true" if vary else "false",
        "key": "nil" if key is None else _lua(key),
        "headers": "\n".join(f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in all_headers.items()),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as file:
        file.write(script)
        file.flush()
        args = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s", "-s", file.name, urls[0]]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    requests, micros, errors, p50, p99 = (float(x) for x in line.split()[1:])
    return {
        "requests": int(requests),
        "seconds": round(micros / 1e6, 3),
        "rps": round(requests / (micros / 1e6), 1),
        "p50_ms": round(p50 / 1000, 3),
        "p99_ms": round(p99 / 1000, 3),
        "errors": int(errors),
        "generator": "wrk",
    }
