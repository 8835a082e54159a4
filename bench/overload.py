"""Overload (issue 27): a replica offered 4x what it can serve, each overload action alone and
together, same run.

The replica (`gateway serve`'s stack, embedded mode, cache hits) runs on one core beside a CPU
burner, at the lowest priority there (nice 19), so that what it can serve is small enough for
the open-loop generator on the other core to offer four times it: a replica starved of CPU, as
under a Kubernetes CPU limit or a noisy neighbour. First the capacity C of such a replica that
takes no overload action (closed loop, wrk); then, for each variant, a replica of its own
offered 4 x C open loop (``tests.openloop``) for SECONDS, then 0.5 x C for 5 s. Printed: when
the first 503 came, the share shed, the accepted requests' p50/p99 in the second half of the
overload, and the recovery.

The variants (VARIANTS, comma-separated, default all but ``main``):
``none`` (no action), ``lag`` (lag shedding alone, GATEWAY_OVERLOAD_LAG 0.25),
``bound`` (GATEWAY_MAX_IN_FLIGHT=BOUND alone, default 32: about a third of a second of C),
``both`` (the defaults: lag 0.25, GATEWAY_MAX_IN_FLIGHT 1024), ``main`` (the tree whose src
directory is BASELINE_SRC, e.g. a worktree of main, with its defaults: lag shedding at the edge).

    python -m bench overload          (env: SECONDS=10, VARIANTS, BOUND, BASELINE_SRC; Linux: needs
                                       sched_setaffinity)
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


def variants(bound: str) -> dict[str, dict[str, str]]:
    """Each variant's replica settings."""
    return {
        "none": {"GATEWAY_OVERLOAD_LAG": "0", "GATEWAY_MAX_IN_FLIGHT": "0"},
        "lag": {"GATEWAY_OVERLOAD_LAG": "0.25", "GATEWAY_MAX_IN_FLIGHT": "0"},
        "bound": {"GATEWAY_OVERLOAD_LAG": "0", "GATEWAY_MAX_IN_FLIGHT": bound},
        "both": {},
        "main": {},
    }


@contextlib.contextmanager
def pinned(
    args: list[str], *, cpu: int, nice: int, env: dict[str, str], port: int | None = None, cwd: str | None = None
) -> Iterator[None]:
    def place() -> None:
        os.sched_setaffinity(0, {cpu})
        os.nice(nice)

    env = {**os.environ, **env}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, preexec_fn=place, cwd=cwd)  # noqa: PLW1509
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


@contextlib.contextmanager
def replica(env: dict[str, str], settings: dict[str, str], baseline: str | None) -> Iterator[str]:
    """A replica starved beside a burner, with ``settings`` (``baseline``: the tree whose src
    directory that is: its gateway, bench.apps and tests.support, run from its root); its URL."""
    port = free_port()
    own, cwd = {**env, **settings}, None
    if baseline is not None:
        cwd = os.path.dirname(os.path.abspath(baseline))
        own["PYTHONPATH"] = os.pathsep.join([cwd, baseline])
    burner = [sys.executable, "-c", "while True: pass"]
    with (  # the burner once the replica is up (starved, it would take long to start)
        pinned([sys.executable, "-m", "bench.apps", str(port)], cpu=REPLICA_CPU, nice=19, env=own, port=port, cwd=cwd),
        pinned(burner, cpu=REPLICA_CPU, nice=0, env={}),
    ):
        yield f"http://127.0.0.1:{port}/v1/tenants/acme/rooms/room-1"


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
    refused = [took for status, took in results if status == 503]
    other = sum(1 for status, _ in results if status not in (200, 503))
    first = f"{min(shed):.2f} s" if shed else "never"
    print(
        f"  {name}: {len(results)} offered, {len(shed) / max(1, len(results)):.0%} shed (first 503 after {first}, "
        f"503 p50 {pct(refused, 0.5):.0f} ms), accepted {sum(1 for s, _ in results if s == 200)}, in the second "
        f"half p50 {pct(late, 0.5):.0f} ms p99 {pct(late, 0.99):.0f} ms; no answer or error {other}",
        flush=True,
    )


def main() -> None:
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("bench overload pins processes to CPUs (Linux only)")
    seconds = float(os.environ.get("SECONDS", "10"))
    chosen = os.environ.get("VARIANTS", "none,lag,bound,both").split(",")
    settings = variants(os.environ.get("BOUND", "32"))
    baseline = os.environ.get("BASELINE_SRC")
    if "main" in chosen and not baseline:
        sys.exit("the main variant runs the tree at BASELINE_SRC (its src directory)")
    os.sched_setaffinity(0, {GENERATOR_CPU})
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    emu_port = free_port()
    env = {"BENCH_UPSTREAM": f"http://127.0.0.1:{emu_port}", "EMULATOR_SECRET_KEY": KEY, "GATEWAY_LOG_LEVEL": "warning"}
    emulator = [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit"]
    with pinned(emulator, cpu=GENERATOR_CPU, nice=0, env=env, port=emu_port):
        # C once, on a replica that takes no action (one that sheds counts its 503s as served)
        with replica(env, settings["none"], None) as url:
            capacity = median(
                [float(wrk([url], concurrency=8, seconds=2, headers=AUTH)["rps"]) for _ in range(3)]  # type: ignore[arg-type]
            )
        print(f"capacity C = {capacity:.0f} req/s (wrk, 8 connections, no overload action)", flush=True)
        for variant in chosen:
            with replica(env, settings[variant], baseline if variant == "main" else None) as url:
                shown = " ".join(f"{k}={v}" for k, v in settings[variant].items()) or "defaults"
                print(f"{variant} ({shown}):", flush=True)
                results, arrivals = asyncio.run(phase(url, 4 * capacity, seconds))
                report(f"4 x C for {seconds:g} s", results, arrivals, seconds)
                results, arrivals = asyncio.run(phase(url, 0.5 * capacity, 5.0))
                report("then 0.5 x C for 5 s", results, arrivals, 5.0)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
