"""Overload (issue 27): a replica offered 4x what it can serve, with and without shedding, same run.

The replica (`gateway serve`'s stack, embedded mode, cache hits) runs on one core beside a CPU
burner, at the lowest priority there (nice 19), so that what it can serve is small enough for
the open-loop generator on the other core to offer four times it: a replica starved of CPU, as
under a Kubernetes CPU limit or a noisy neighbour. First its capacity C (closed loop, wrk);
then, with shedding on (the default GATEWAY_OVERLOAD_LAG) and off (0): 4 x C offered open loop
(``tests.openloop``) for SECONDS, then 0.5 x C for 5 s. Printed: when the first 503 came, the
share shed, the accepted requests' p50/p99 in the second half of the overload, and the recovery.

    python -m bench overload          (env: SECONDS=10; Linux: needs sched_setaffinity)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from tests import openloop
from tests.support import KEY, TOKENS

from bench._harness import GATEWAY, free_port, median, wait_port, wrk

AUTH = {"Authorization": f"Bearer {TOKENS['rw']}"}
REPLICA_CPU, GENERATOR_CPU = 1, 0


@contextlib.contextmanager
def pinned(args: list[str], *, cpu: int, nice: int, env: dict[str, str], port: int | None = None) -> Iterator[None]:
    def place() -> None:
        os.sched_setaffinity(0, {cpu})
        os.nice(nice)

    proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL, preexec_fn=place)  # noqa: PLW1509
    try:
        if port is not None:
            wait_port(port)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def phase(url: str, rate: float, seconds: float) -> tuple[list[tuple[int, float]], list[float]]:
    target = openloop.target(url, headers=AUTH)
    arrivals: list[float] = []
    results = await openloop.offer([target], rate=rate, seconds=seconds, drain=15.0, arrivals=arrivals)
    return results, arrivals


def report(name: str, results: list[tuple[int, float]], arrivals: list[float], seconds: float) -> None:
    shed = [a for (status, _), a in zip(results, arrivals, strict=True) if status == 503]
    late = [took for (status, took), a in zip(results, arrivals, strict=True) if status == 200 and a > seconds / 2]
    other = sum(1 for status, _ in results if status not in (200, 503))
    first = f"{min(shed):.2f} s" if shed else "never"
    print(
        f"  {name}: {len(results)} answered, {len(shed) / max(1, len(results)):.0%} shed (first 503 after {first}), "
        f"accepted in the second half p50 {pct(late, 0.5):.0f} ms p99 {pct(late, 0.99):.0f} ms, other {other}"
    )


def main() -> None:
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("bench overload pins processes to CPUs (Linux only)")
    seconds = float(os.environ.get("SECONDS", "10"))
    os.sched_setaffinity(0, {GENERATOR_CPU})
    emu_port = free_port()
    env = {"BENCH_UPSTREAM": f"http://127.0.0.1:{emu_port}", "EMULATOR_SECRET_KEY": KEY, "GATEWAY_LOG_LEVEL": "warning"}
    emulator = [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit"]
    burner = [sys.executable, "-c", "while True: pass"]
    with pinned(emulator, cpu=GENERATOR_CPU, nice=0, env=env, port=emu_port):
        for lag in ("0.25", "0"):
            port = free_port()
            args = [sys.executable, "-m", "bench.apps", str(port)]
            with (  # the burner once the replica is up (starved, it would take long to start)
                pinned(args, cpu=REPLICA_CPU, nice=19, env={**env, "GATEWAY_OVERLOAD_LAG": lag}, port=port),
                pinned(burner, cpu=REPLICA_CPU, nice=0, env={}),
            ):
                url = f"http://127.0.0.1:{port}/v1/tenants/acme/rooms/room-1"
                capacity = median(
                    [float(wrk([url], concurrency=8, seconds=2, headers=AUTH)["rps"]) for _ in range(3)]  # type: ignore[arg-type]
                )
                print(f"GATEWAY_OVERLOAD_LAG={lag}: capacity C = {capacity:.0f} req/s (wrk, 8 connections)")
                results, arrivals = asyncio.run(phase(url, 4 * capacity, seconds))
                report(f"4 x C for {seconds:g} s", results, arrivals, seconds)
                results, arrivals = asyncio.run(phase(url, 0.5 * capacity, 5.0))
                report("then 0.5 x C for 5 s", results, arrivals, 5.0)


if __name__ == "__main__":
    main()
