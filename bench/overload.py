"""Overload (issue 27): a replica offered 4x what it can serve, each overload action alone and
together, same run.

The replica (`gateway serve`'s stack, embedded mode, cache hits) runs on one core with a small
share of it, so that what it can serve is small enough for the open-loop generator on the other
core to offer four times it. How it is starved (LIMIT):

- a number (the default, 0.05, where this machine lets the bench make a cgroup): a CPU limit,
  as Kubernetes sets ``resources.limits.cpu`` (here 50m): a CFS quota of LIMIT x 100 ms in every
  100 ms period, in a cgroup of its own (v1 ``cpu.cfs_quota_us`` or v2 ``cpu.max``), entered
  once the replica is up;
- ``nice``: beside a CPU burner on its core, at the lowest priority there (nice 19), as under a
  noisy neighbour. What it gets then depends on whatever else the machine runs.

First the capacity C of such a replica that takes no overload action (closed loop, wrk); then,
for each variant, a replica of its own offered 4 x C open loop (``tests.openloop``) for SECONDS,
then 0.5 x C for 5 s. Printed: when the first 503 came, the share shed, the accepted requests'
p50/p99 in the second half of the overload, the recovery, and what a kubelet would have seen of
``/readyz`` meanwhile (a probe every 0.5 s with a 1 s timeout, as Kubernetes' default).

The variants (VARIANTS, comma-separated, default none,lag,bound,queue,both):
``none`` (no action), ``lag`` (lag shedding alone, GATEWAY_OVERLOAD_LAG 0.25),
``bound`` (GATEWAY_MAX_IN_FLIGHT=BOUND alone, default 32: about a third of a second of C),
``queue`` (the accept queue's bound alone, GATEWAY_OVERLOAD_ACCEPT_QUEUE 128),
``both`` (the defaults: lag 0.25, GATEWAY_MAX_IN_FLIGHT 1024, the accept queue's bound 128,
refusals kept alive until unready), ``noqueue`` (the defaults but no bound on the accept queue:
before GATEWAY_OVERLOAD_ACCEPT_QUEUE existed), ``close`` (the defaults, every refusal closing its
connection: before issue 27's second admission session), ``keepalive`` (the defaults, never
unready, so refusals are never closed),
``backlog`` and ``close+backlog`` (a listen backlog of BACKLOG, default 128, not 4096),
``both+bound`` (the defaults with GATEWAY_MAX_IN_FLIGHT=BOUND), ``main`` (the tree whose src
directory is BASELINE_SRC, e.g. a worktree of main, with its defaults).

First (COSTS=1, the default), what a request costs a replica alone on its core, served or
refused, closed or kept alive (``costs``): the replica's CPU from /proc/PID/stat over a wrk run.

``CLIENT_TIMEOUT``: each client gives up on a request after that many seconds (closing its
socket), as callers with a timeout do; unset, they wait until the phase's drain.

    python -m bench overload          (env: SECONDS=10, LIMIT, VARIANTS, BOUND, BACKLOG, COSTS,
                                       BASELINE_SRC, CLIENT_TIMEOUT; Linux: needs sched_setaffinity)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from tests import openloop
from tests.support import KEY, TOKENS

from bench._harness import GATEWAY, free_port, median, wait_port, wrk

AUTH = {"Authorization": f"Bearer {TOKENS['rw']}"}
REPLICA_CPU, GENERATOR_CPU = 1, 0


def variants(bound: str, backlog: str) -> dict[str, dict[str, str]]:
    """Each variant's replica settings."""
    return {
        "none": {"GATEWAY_OVERLOAD_LAG": "0", "GATEWAY_MAX_IN_FLIGHT": "0", "GATEWAY_OVERLOAD_ACCEPT_QUEUE": "0"},
        "lag": {"GATEWAY_OVERLOAD_LAG": "0.25", "GATEWAY_MAX_IN_FLIGHT": "0", "GATEWAY_OVERLOAD_ACCEPT_QUEUE": "0"},
        "bound": {"GATEWAY_OVERLOAD_LAG": "0", "GATEWAY_MAX_IN_FLIGHT": bound, "GATEWAY_OVERLOAD_ACCEPT_QUEUE": "0"},
        "queue": {"GATEWAY_OVERLOAD_LAG": "0", "GATEWAY_MAX_IN_FLIGHT": "0"},
        "both": {},
        "close": {"BENCH_REFUSAL": "close"},
        "noqueue": {"GATEWAY_OVERLOAD_ACCEPT_QUEUE": "0"},
        "keepalive": {"GATEWAY_OVERLOAD_UNREADY_AFTER": "1e6"},
        "backlog": {"BENCH_BACKLOG": backlog},
        "close+backlog": {"BENCH_REFUSAL": "close", "BENCH_BACKLOG": backlog},
        "both+bound": {"GATEWAY_MAX_IN_FLIGHT": bound},
        "main": {},
    }


@contextlib.contextmanager
def pinned(
    args: list[str], *, cpu: int, nice: int, env: dict[str, str], port: int | None = None, cwd: str | None = None
) -> Iterator[int]:
    def place() -> None:
        os.sched_setaffinity(0, {cpu})
        os.nice(nice)

    env = {**os.environ, **env}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, preexec_fn=place, cwd=cwd)  # noqa: PLW1509
    try:
        if port is not None:
            wait_port(port)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


PERIOD_US = 100_000  # the CFS period Kubernetes sets (cpu.cfs_period_us)


def cgroup_root() -> tuple[str, str] | None:
    """Where this machine lets the bench make a cgroup with a CPU quota: (its parent folder,
    ``v1`` or ``v2``), or None."""
    for root, kind, knob in (("/sys/fs/cgroup/cpu", "v1", "cpu.cfs_quota_us"), ("/sys/fs/cgroup", "v2", "cpu.max")):
        probe = os.path.join(root, f"bench-probe-{os.getpid()}")
        try:
            os.mkdir(probe)
        except OSError:
            continue
        try:
            if os.path.exists(os.path.join(probe, knob)) and os.access(os.path.join(probe, knob), os.W_OK):
                return root, kind
        finally:
            os.rmdir(probe)
    return None


@contextlib.contextmanager
def cpu_limit(pid: int, cpus: float) -> Iterator[None]:
    """Process ``pid`` (all its threads) held to ``cpus`` of a CPU, as a Kubernetes CPU limit."""
    where = cgroup_root()
    if where is None:
        sys.exit("LIMIT needs a cgroup this user can make (cgroup v1 cpu or v2 cpu.max); LIMIT=nice does without")
    root, kind = where
    group = os.path.join(root, f"bench-overload-{pid}")
    os.mkdir(group)
    quota = max(1000, int(cpus * PERIOD_US))
    try:
        if kind == "v1":
            for knob, value in (("cpu.cfs_period_us", PERIOD_US), ("cpu.cfs_quota_us", quota)):
                with open(os.path.join(group, knob), "w") as f:
                    f.write(str(value))
        else:
            with open(os.path.join(group, "cpu.max"), "w") as f:
                f.write(f"{quota} {PERIOD_US}")
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        yield
    finally:
        # (back to the root, if it still runs, so the group can go)
        with contextlib.suppress(OSError), open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        for _ in range(50):
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.1)


@contextlib.contextmanager
def replica(
    env: dict[str, str], settings: dict[str, str], baseline: str | None, limit: str
) -> Iterator[tuple[str, int]]:
    """A starved replica (``limit``: a CPU quota, or ``nice`` beside a burner) with ``settings``
    (``baseline``: the tree whose src directory that is: its gateway, bench.apps and
    tests.support, run from its root); its URL."""
    port = free_port()
    own, cwd = {**env, **settings}, None
    if baseline is not None:
        cwd = os.path.dirname(os.path.abspath(baseline))
        own["PYTHONPATH"] = os.pathsep.join([cwd, baseline])
    args = [sys.executable, "-m", "bench.apps", str(port)]
    url = f"http://127.0.0.1:{port}/v1/tenants/acme/rooms/room-1"
    if limit == "nice":
        burner = [sys.executable, "-c", "while True: pass"]
        with (  # the burner once the replica is up (starved, it would take long to start)
            pinned(args, cpu=REPLICA_CPU, nice=19, env=own, port=port, cwd=cwd) as pid,
            pinned(burner, cpu=REPLICA_CPU, nice=0, env={}),
        ):
            yield url, pid
    else:  # the limit once the replica is up (held to it, it would take long to start)
        with pinned(args, cpu=REPLICA_CPU, nice=0, env=own, port=port, cwd=cwd) as pid, cpu_limit(pid, float(limit)):
            yield url, pid


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time process ``pid`` has had, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """The CPU time this machine's cores have been busy (all but idle and iowait), /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


SHED = {"BENCH_SHED": "1", "GATEWAY_OVERLOAD_LAG": "0", "GATEWAY_OVERLOAD_UNREADY_AFTER": "1e6"}
COSTS = {  # what a request costs a replica, by how it is answered (bench.apps' BENCH_* variants)
    "served (200, kept alive)": {},
    "refused, closed (503)": {**SHED, "BENCH_REFUSAL": "close"},
    "refused, kept alive (503)": SHED,
}


def costs(env: dict[str, str], seconds: float = 3.0) -> None:
    """Each way of answering, on a replica alone on its core (no burner): wrk (8 connections;
    it reconnects after a ``Connection: close``) for ``seconds``, the replica's CPU a request, and
    the whole machine's (the generator's, and the kernel's TCP set-up, included)."""
    for name, settings in COSTS.items():
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/tenants/acme/rooms/room-1"
        args = [sys.executable, "-m", "bench.apps", str(port)]
        with pinned(args, cpu=REPLICA_CPU, nice=0, env={**env, **settings}, port=port) as pid:
            wrk([url], concurrency=8, seconds=1, headers=AUTH)  # (warm: the cache filled, the code run)
            cpu, busy = cpu_seconds(pid), busy_seconds()
            run = wrk([url], concurrency=8, seconds=seconds, headers=AUTH)
            cpu, busy = cpu_seconds(pid) - cpu, busy_seconds() - busy
        n = max(1, int(run["requests"]))  # type: ignore[call-overload]
        print(
            f"  {name}: {run['rps']} req/s, replica CPU {cpu / n * 1e6:.0f} µs a request; the machine's "
            f"{busy / n * 1e6:.0f} µs (wrk, the kernel and whatever else runs included)",
            flush=True,
        )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def phase(url: str, rate: float, seconds: float) -> tuple[list[tuple[int, float]], list[float]]:
    target = openloop.target(url, headers=AUTH)
    arrivals: list[float] = []
    give_up = float(os.environ["CLIENT_TIMEOUT"]) if os.environ.get("CLIENT_TIMEOUT") else None
    results = await openloop.offer([target], rate=rate, seconds=seconds, drain=15.0, arrivals=arrivals, give_up=give_up)
    return results, arrivals


class Kubelet(threading.Thread):
    """``/readyz`` every 0.5 s with a 1 s timeout, as Kubernetes probes by default: each probe's
    moment and whether it passed (200 in time), until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self._url = url.split("/v1/", maxsplit=1)[0] + "/readyz"
        self._halt = threading.Event()
        self.probes: list[tuple[float, bool]] = []

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.is_set():
            began = time.monotonic()
            try:
                with urllib.request.urlopen(self._url, timeout=1.0) as reply:
                    passed = reply.status == 200
            except (OSError, urllib.error.URLError):
                passed = False
            self.probes.append((began - start, passed))
            self._halt.wait(max(0.0, 0.5 - (time.monotonic() - began)))

    def stop(self) -> str:
        self._halt.set()
        self.join(5)
        failed = [at for at, passed in self.probes if not passed]
        last = f", last failed at {max(failed):.1f} s" if failed else ""
        return f"readiness probes failed {len(failed)} of {len(self.probes)}{last}"


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
    limit = os.environ.get("LIMIT") or ("0.05" if cgroup_root() else "nice")
    chosen = os.environ.get("VARIANTS", "none,lag,bound,queue,both").split(",")
    settings = variants(os.environ.get("BOUND", "32"), os.environ.get("BACKLOG", "128"))
    baseline = os.environ.get("BASELINE_SRC")
    if "main" in chosen and not baseline:
        sys.exit("the main variant runs the tree at BASELINE_SRC (its src directory)")
    os.sched_setaffinity(0, {GENERATOR_CPU})
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    shown = "beside a burner at nice 19" if limit == "nice" else f"a CPU limit of {limit} (CFS quota, 100 ms period)"
    print(f"each replica starved by {shown}", flush=True)
    emu_port = free_port()
    env = {"BENCH_UPSTREAM": f"http://127.0.0.1:{emu_port}", "EMULATOR_SECRET_KEY": KEY, "GATEWAY_LOG_LEVEL": "warning"}
    emulator = [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit"]
    with pinned(emulator, cpu=GENERATOR_CPU, nice=0, env=env, port=emu_port):
        if os.environ.get("COSTS", "1") == "1":
            print("what a request costs, by how it is answered:", flush=True)
            costs(env)
        # C once, on a replica that takes no action (one that sheds counts its 503s as served)
        with replica(env, settings["none"], None, limit) as (url, _):
            capacity = median(
                [float(wrk([url], concurrency=8, seconds=2, headers=AUTH)["rps"]) for _ in range(3)]  # type: ignore[arg-type]
            )
        print(f"capacity C = {capacity:.0f} req/s (wrk, 8 connections, no overload action)", flush=True)
        for variant in chosen:
            with replica(env, settings[variant], baseline if variant == "main" else None, limit) as (url, pid):
                shown = " ".join(f"{k}={v}" for k, v in settings[variant].items()) or "defaults"
                print(f"{variant} ({shown}):", flush=True)
                for name, rate, span in ((f"4 x C for {seconds:g} s", 4, seconds), ("then 0.5 x C for 5 s", 0.5, 5.0)):
                    cpu, own, start = cpu_seconds(pid), time.process_time(), time.monotonic()
                    kubelet = Kubelet(url)
                    kubelet.start()
                    results, arrivals = asyncio.run(phase(url, rate * capacity, span))
                    wall = time.monotonic() - start
                    report(name, results, arrivals, span)
                    print(
                        f"    over its {wall:.1f} s: the replica had {cpu_seconds(pid) - cpu:.2f} s of CPU, "
                        f"the generator {(time.process_time() - own) / wall:.0%} of its core; {kubelet.stop()}",
                        flush=True,
                    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
