"""Cache-hit reads against a bare Litestar route in the same server, same run (issue bar: >= 0.6).

GET room answered from the cache (auth, validation, cache lookup, metrics, access log) against a
route that returns the same constant bytes (metrics and access log too: the edge wraps both).
Embedded mode (in-process cache) and Redis mode (hits made in one event-loop turn share a
pipeline, and one call per room); reads of one hot room, and spread over 100 rooms. With the
default 1 s TTL each room is refilled from the emulator once a second: the 100-room run with a
60 s TTL is all hits, the one with 1 s includes ~100 misses (fills) a second.

    python -m bench cache_hits        (env: ROUNDS=3 SECONDS=4 CONCURRENCY=64)

Then, on each server (uvicorn as `gateway serve` runs it; granian's embedded server, the
candidate; SERVERS=uvicorn,granian,granian-worker adds granian's own worker process), a cache hit
in Redis mode and in embedded mode against a bare Litestar app in a process of its own (issue 25's
bar: >= 0.6 of the best bare app), with wrk at 32 connections, every process measured in each
round, and each server's ratio to uvicorn round by round; BASELINE_SRC=/path/src adds the gateway
from that source tree (the code before a change) on each server, same run:

    python -m bench.cache_hits servers     (env: ROUNDS=3 SECONDS=4 SERVERS=uvicorn,granian BASELINE_SRC=...)

And what traces cost (issue 28): a cache hit in Redis mode on uvicorn with tracing off, and on
(OTLP/HTTP to a loopback sink that answers 200) at sampling ratios 1.0 and 0.01, and the gateway
from BASELINE_SRC (before tracing existed), wrk at 32 connections, every process in each round:

    python -m bench.cache_hits traces      (env: ROUNDS=3 SECONDS=4 BASELINE_SRC=... ALT_SRC=...)

ALT_SRC=/path/src adds that tree's tracing at both ratios ("alt": another way of tracing, e.g.
the commit that used Litestar's OpenTelemetry plugin).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from tests.otlp import receiver
from tests.redis_servers import standalone
from tests.support import KEY, TOKENS

from bench._harness import GATEWAY, ROOT, Steal, free_port, load, median, process

AUTH = {"Authorization": f"Bearer {TOKENS['rw']}"}


def measure(
    env: dict[str, str], rounds: int, seconds: float, concurrency: int, rooms: int
) -> list[tuple[float, float]]:
    port = free_port()
    with process([sys.executable, "-m", "bench.apps", str(port)], port=port, env=env):
        base = f"http://127.0.0.1:{port}"
        reads = [f"{base}/v1/tenants/acme/rooms/room-{n}" for n in range(1, rooms + 1)]
        load(reads, concurrency=4, seconds=1, headers=AUTH)  # warm
        pairs = []
        targets = {"hit": (reads, AUTH), "bare": ([f"{base}/bare/rooms/room-1"], {})}
        for n in range(rounds):
            # Alternate which goes first, so a drift in the machine's speed favours neither side.
            rps: dict[str, float] = {}
            for which in ("hit", "bare") if n % 2 == 0 else ("bare", "hit"):
                urls, headers = targets[which]
                result = load(urls, concurrency=concurrency, seconds=seconds, headers=headers)
                rps[which] = float(result["rps"])  # type: ignore[arg-type]
            pairs.append((rps["hit"], rps["bare"]))
    return pairs


def main() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    concurrency = int(os.environ.get("CONCURRENCY", "64"))
    emu_port = free_port()
    emulator = [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--rooms", "100"]
    env = {
        "BENCH_UPSTREAM": f"http://127.0.0.1:{emu_port}",
        "GATEWAY_LOG_LEVEL": "info",
        "EMULATOR_SECRET_KEY": KEY,
    }
    with process(emulator, port=emu_port, env=env), standalone() as redis:
        for mode, extra in (("embedded", {}), ("redis", {"GATEWAY_REDIS_URL": redis.url})):
            for rooms, ttl in ((1, "1"), (100, "60"), (100, "1")):
                pairs = measure({**env, **extra, "GATEWAY_CACHE_TTL": ttl}, rounds, seconds, concurrency, rooms)
                ratio = median([h / b for h, b in pairs])
                print(
                    f"{mode:8s} {rooms:3d} room(s), TTL {ttl:>2s} s: cache hit {median([h for h, _ in pairs]):7.0f} "
                    "req/s, bare route "
                    f"{median([b for _, b in pairs]):7.0f} req/s: ratio {ratio:.2f} (median of {rounds} paired "
                    f"rounds, {concurrency} connections)"
                )


GRANIAN = [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--workers", "1"]
GRANIAN += ["--no-ws", "--log-level", "warning", "--host", "127.0.0.1", "--factory", "bench.apps:factory"]


@contextlib.contextmanager
def served(server: str, app: str, env: dict[str, str], src: str | None = None) -> Iterator[str]:
    """``app`` (gateway or bare) on ``server`` in a process of its own: ``uvicorn`` (as `gateway
    serve` runs it), ``granian`` (its embedded server in our event loop, as `gateway serve` would
    run it) or ``granian-worker`` (``python -m granian``: a supervisor and a worker process)."""
    port = free_port()
    env = {**env, "BENCH_SERVER": server, "PYTHONPATH": f"{src or ROOT / 'src'}:{ROOT}"}
    env |= {"BENCH_APP": app, "BENCH_PORT": str(port)}
    if server == "granian-worker":
        args = [*GRANIAN, "--port", str(port)]
    else:
        args = [sys.executable, "-m", "bench.apps", str(port), *(["bare"] if app == "bare" else [])]
    with process(args, port=port, env=env):
        yield f"http://127.0.0.1:{port}"


def servers() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    baseline = os.environ.get("BASELINE_SRC")
    emu_port = free_port()
    emulator = [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--rooms", "100"]
    env = {"BENCH_UPSTREAM": f"http://127.0.0.1:{emu_port}", "GATEWAY_LOG_LEVEL": "info", "EMULATOR_SECRET_KEY": KEY}
    with process(emulator, port=emu_port, env=env), standalone() as redis, contextlib.ExitStack() as stack:
        modes = {
            "redis": {**env, "GATEWAY_REDIS_URL": redis.url, "GATEWAY_CACHE_TTL": "60"},
            "embedded": {**env, "GATEWAY_CACHE_TTL": "60"},
        }
        targets: dict[str, tuple[list[str], dict[str, str]]] = {}
        names = os.environ.get("SERVERS", "uvicorn,granian").split(",")
        for server in names:
            url = stack.enter_context(served(server, "bare", env))
            targets[f"bare/{server}"] = ([f"{url}/bare/rooms/room-1"], {})
            trees = {"gateway": None, **({"before": baseline} if baseline else {})}
            for name, src in trees.items():
                for mode, mode_env in modes.items():
                    url = stack.enter_context(served(server, "gateway", mode_env, src))
                    reads = [f"{url}/v1/tenants/acme/rooms/room-{n}" for n in range(1, 101)]
                    load(reads, concurrency=4, seconds=1, headers=AUTH)  # warm: fill the cache
                    targets[f"{name}/{mode}/{server}"] = (reads, AUTH)
        runs: dict[str, list[float]] = {}
        with Steal() as steal:
            for n in range(rounds):
                order = list(targets) if n % 2 == 0 else list(reversed(targets))
                for key in order:
                    urls, headers = targets[key]
                    result = load(urls, concurrency=32, seconds=seconds, headers=headers, generator="wrk")
                    runs.setdefault(key, []).append(float(result["rps"]))  # type: ignore[arg-type]
        rps = {key: median(values) for key, values in runs.items()}
        best = max(rps[f"bare/{s}"] for s in names)
        print(f"cache hits, 100 rooms, wrk 32 connections, median of {rounds} rounds ({steal}):")
        for key, value in rps.items():
            print(f"  {key:24s} {value:8.0f} req/s   {value / best:.2f} of the best bare app")
        for key in rps:  # each round's ratio (measured within seconds of each other), then their median
            head, _, server = key.rpartition("/")
            if server != "uvicorn" and f"{head}/uvicorn" in runs:
                ratios = [g / u for g, u in zip(runs[key], runs[f"{head}/uvicorn"], strict=True)]
                print(
                    f"  {server} / uvicorn, {head:16s} {median(ratios):.2f} (median of the rounds', "
                    f"{min(ratios):.2f}-{max(ratios):.2f})"
                )


def traces() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    baseline, alt = os.environ.get("BASELINE_SRC"), os.environ.get("ALT_SRC")
    emu_port = free_port()
    emulator = [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--rooms", "100"]
    env = {"BENCH_UPSTREAM": f"http://127.0.0.1:{emu_port}", "GATEWAY_LOG_LEVEL": "info", "EMULATOR_SECRET_KEY": KEY}
    with (
        process(emulator, port=emu_port, env=env),
        standalone() as redis,
        receiver(keep=False) as (sink, _),
        contextlib.ExitStack() as stack,
    ):
        shared = {**env, "GATEWAY_REDIS_URL": redis.url, "GATEWAY_CACHE_TTL": "60"}
        on = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
        variants: dict[str, tuple[dict[str, str], str | None]] = {
            **({"before": (shared, baseline)} if baseline else {}),
            "off": (shared, None),
            "on, ratio 1.0": ({**shared, **on, "OTEL_TRACES_SAMPLER_ARG": "1.0"}, None),
            "on, ratio 0.01": ({**shared, **on, "OTEL_TRACES_SAMPLER_ARG": "0.01"}, None),
        }
        if alt:
            variants["alt, ratio 1.0"] = ({**shared, **on, "OTEL_TRACES_SAMPLER_ARG": "1.0"}, alt)
            variants["alt, ratio 0.01"] = ({**shared, **on, "OTEL_TRACES_SAMPLER_ARG": "0.01"}, alt)
        targets: dict[str, list[str]] = {}
        for name, (variant_env, src) in variants.items():
            url = stack.enter_context(served("uvicorn", "gateway", variant_env, src))
            reads = [f"{url}/v1/tenants/acme/rooms/room-{n}" for n in range(1, 101)]
            load(reads, concurrency=4, seconds=1, headers=AUTH)  # warm: fill the cache
            targets[name] = reads
        runs: dict[str, list[float]] = {}
        with Steal() as steal:
            for n in range(rounds):
                for name in list(targets) if n % 2 == 0 else list(reversed(targets)):
                    result = load(targets[name], concurrency=32, seconds=seconds, headers=AUTH, generator="wrk")
                    runs.setdefault(name, []).append(float(result["rps"]))  # type: ignore[arg-type]
        rps = {name: median(values) for name, values in runs.items()}
        against = "before" if baseline else "off"
        print(f"cache hits, Redis mode, uvicorn, 100 rooms, wrk 32 connections, median of {rounds} rounds ({steal}):")
        for name, values in runs.items():
            # each round's ratio to the reference measured in that round (drift cancels), then their median
            ratio = median([v / r for v, r in zip(values, runs[against], strict=True)])
            print(f"  {name:16s} {rps[name]:8.0f} req/s   {ratio:.2f} of {against} (median of the rounds' ratios)")


if __name__ == "__main__":
    if sys.argv[1:] == ["servers"]:
        servers()
    elif sys.argv[1:] == ["traces"]:
        traces()
    else:
        main()
