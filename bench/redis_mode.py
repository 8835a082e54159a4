"""What Redis mode costs against embedded mode: forwarding writes, same run, same load generator.

Two gateways as `gateway serve` runs them, one embedded (in-process budget) and one on a real
Redis (the fleet's budget, one replica), forward metadata writes to one emulator that adds 20 ms
to every call; the budget is set high enough not to bind. Rounds alternate between the two, so
drift on the machine hits both alike. Issue bars (issue 13): throughput at 64 in flight in Redis
mode >= 0.9 of embedded; p50 at one caller within +0.3 ms of embedded; slots missed (a call that
could not leave within its send window) <= 1% of grants. Also printed: budget store calls per
grant (bookings batch the calls that arrive together: below 1 means batching happened), and each
gateway's CPU: how busy its process was (100% = one core, all it can use) and its CPU a request.
A side well under 100% at 64 in flight is bound by waiting, not by CPU.

    python -m bench redis_mode        (env: ROUNDS=3 SECONDS=4 BENCH_QPS=100000 REDIS=standalone|cluster
                                            WRITE=metadata|room)

``WRITE=room``: the writes are room PATCHes (``activity_status``), which also invalidate the
cached room: two Redis round trips each instead of one.

``REDIS=cluster``: each Redis-mode side on a 3-primary Redis Cluster of its own (``redis+cluster://``)
instead of a standalone server.

BASELINE_SRC=/path/to/other/checkout/src adds the same two gateways run from that source tree
(e.g. a `git worktree` of the previous main), interleaved with these: before and after, one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.redis_servers import cluster, standalone
from tests.support import KEY, TOKENS

from bench._harness import (
    GATEWAY,
    IDLE_GAP,
    ROOT,
    Steal,
    free_port,
    load,
    process,
    process_cpu,
    round_trips,
    summarise,
)

AUTH = {"Authorization": f"Bearer {TOKENS['rw']}"}
COUNTERS = ("gateway_budget_grants_total", "gateway_budget_slots_missed_total", "gateway_budget_bookings_total")


def counters(url: str) -> dict[str, float]:
    found = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name] += sample.value
    return found


@contextlib.contextmanager
def redis_server(kind: str) -> Iterator[str]:
    """A Redis of its own for one side (``kind``: standalone, or a 3-primary cluster): its URL."""
    if kind == "cluster":
        with cluster(3) as nodes:
            yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    else:
        with standalone() as server:
            yield server.url


def main() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    emu_port = free_port()
    baseline = os.environ.get("BASELINE_SRC")
    emulator = f"http://127.0.0.1:{emu_port}"
    qps = os.environ.get("BENCH_QPS", "100000")  # the budget: high enough not to bind
    env = {"EMULATOR_SECRET_KEY": KEY, "BENCH_UPSTREAM": emulator, "BENCH_QPS": qps}
    env["GATEWAY_LOG_LEVEL"] = "warning"  # both sides alike; the access log's cost is bench forwarding's
    room = os.environ.get("WRITE", "metadata") == "room"  # room PATCHes: a booking and an invalidation each
    body = json.dumps({"activity_status": 1} if room else {"metadata": {"k": "v"}})
    kind = os.environ.get("REDIS", "standalone")
    with (
        redis_server(kind) as own_redis_url,
        redis_server(kind) as baseline_redis_url,
        process(
            [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--latency-ms", "20"],
            port=emu_port,
            env=env,
        ),
        contextlib.ExitStack() as gateways,
    ):
        sides: dict[str, str] = {}
        pids: dict[str, int] = {}
        for name, source, redis_url in (
            ("embedded", None, None),
            ("redis", None, own_redis_url),
            ("base-embedded", baseline, None),
            ("base-redis", baseline, baseline_redis_url),
        ):
            if name.startswith("base") and not baseline:
                continue
            port = free_port()
            own = {**env, **({"GATEWAY_REDIS_URL": redis_url} if redis_url else {})}
            if source:
                own["PYTHONPATH"] = os.pathsep.join([source, str(ROOT)])
            proc = gateways.enter_context(process([sys.executable, "-m", "bench.apps", str(port)], port=port, env=own))
            sides[name], pids[name] = f"http://127.0.0.1:{port}", proc.pid
        tail = "" if room else "/metadata"
        paths = {
            name: [f"{url}/v1/tenants/acme/rooms/room-{n}{tail}" for n in (1, 2, 3)] for name, url in sides.items()
        }
        for urls in paths.values():
            load(urls, concurrency=8, seconds=1, method="PATCH", body=body, headers=AUTH)  # warm
        for callers in (64, 1):
            runs: dict[str, list[dict[str, object]]] = {}
            busy = dict.fromkeys(sides, 0.0)  # CPU seconds each gateway used while loaded
            before = {name: counters(url) for name, url in sides.items()}
            with Steal() as steal:
                for _ in range(rounds):
                    for name, urls in paths.items():
                        used = process_cpu(pids[name])
                        runs.setdefault(name, []).append(
                            load(urls, concurrency=callers, seconds=seconds, method="PATCH", body=body, headers=AUTH)
                        )
                        busy[name] += process_cpu(pids[name]) - used
            after = {name: counters(url) for name, url in sides.items()}
            print(f"{callers} caller(s), median of {rounds} interleaved rounds of {seconds:g} s ({steal}):")
            rps, p50 = summarise(runs)
            for prefix in ("", "base-") if baseline else ("",):
                ratio = rps[prefix + "redis"] / rps[prefix + "embedded"]
                added = p50[prefix + "redis"] - p50[prefix + "embedded"]
                print(
                    f"  {prefix}redis / {prefix}embedded: throughput {ratio:.2f} (bar >= 0.9 at 64), "
                    f"added p50 {added:+.2f} ms (bar <= +0.3 ms at 1)"
                )
            if callers == 1:
                hot, idle = redis_round_trips(own_redis_url if kind != "cluster" else None)
                if hot is not None:
                    print(
                        f"  the control: a Redis round trip here (PING, p50) takes {hot:.0f} µs back to back and "
                        f"{idle:.0f} µs after {IDLE_GAP * 1000:.0f} ms idle, as a lone request's booking waits"
                    )
            for name in sides:
                grants, missed, bookings = (after[name][c] - before[name][c] for c in COUNTERS)
                answered = sum(int(r["requests"]) for r in runs[name])  # type: ignore[call-overload]
                share, per_request = busy[name] / (rounds * seconds), 1e6 * busy[name] / max(answered, 1)
                print(
                    f"  {name:13s} slots missed {missed:.0f} of {grants:.0f} grants ({missed / max(grants, 1):.2%}, "
                    f"bar <= 1%), {bookings / max(grants, 1):.3f} budget store calls per grant; "
                    f"CPU busy {share:.0%}, {per_request:.0f} µs a request"
                )


def redis_round_trips(url: str | None) -> tuple[float | None, float | None]:
    """PING's round trip (``round_trips``), or None for a cluster (which node would be the answer?)."""
    if url is None:
        return None, None
    host, _, port = url.removeprefix("redis://").split("/")[0].rpartition(":")
    return round_trips(host, int(port), b"PING\r\n", lambda data: data.endswith(b"\r\n"))


if __name__ == "__main__":
    main()
