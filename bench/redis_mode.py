"""What Redis mode costs against embedded mode: forwarding writes, same run, same load generator.

Two gateways as `gateway serve` runs them, one embedded (in-process budget) and one on a real
Redis (the fleet's budget, one replica), forward metadata writes to one emulator that adds 20 ms
to every call; the budget is set high enough not to bind. Rounds alternate between the two, so
drift on the machine hits both alike. Issue bars (issue 13): throughput at 64 in flight in Redis
mode >= 0.9 of embedded; p50 at one caller within +0.3 ms of embedded; slots missed (a call that
could not leave within its send window) <= 1% of grants. Also printed: budget store calls per
grant (bookings batch the calls that arrive together: below 1 means batching happened).

    python -m bench redis_mode        (env: ROUNDS=3 SECONDS=4)
"""

from __future__ import annotations

import json
import os
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.redis_servers import standalone
from tests.support import KEY, TOKENS

from bench._harness import GATEWAY, Steal, free_port, load, process, summarise

AUTH = {"Authorization": f"Bearer {TOKENS['rw']}"}
COUNTERS = ("gateway_budget_grants_total", "gateway_budget_slots_missed_total", "gateway_budget_bookings_total")


def counters(url: str) -> dict[str, float]:
    found = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name] += sample.value
    return found


def main() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    emu_port, embedded_port, redis_port = free_port(), free_port(), free_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    qps = os.environ.get("BENCH_QPS", "100000")  # the budget: high enough not to bind
    env = {"EMULATOR_SECRET_KEY": KEY, "BENCH_UPSTREAM": emulator, "BENCH_QPS": qps}
    env["GATEWAY_LOG_LEVEL"] = "warning"  # both sides alike; the access log's cost is bench forwarding's
    body = json.dumps({"metadata": {"k": "v"}})
    with (
        standalone() as redis,
        process(
            [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--latency-ms", "20"],
            port=emu_port,
            env=env,
        ),
        process([sys.executable, "-m", "bench.apps", str(embedded_port)], port=embedded_port, env=env),
        process(
            [sys.executable, "-m", "bench.apps", str(redis_port)],
            port=redis_port,
            env={**env, "GATEWAY_REDIS_URL": redis.url},
        ),
    ):
        sides = {"embedded": f"http://127.0.0.1:{embedded_port}", "redis": f"http://127.0.0.1:{redis_port}"}
        paths = {
            name: [f"{url}/v1/tenants/acme/rooms/room-{n}/metadata" for n in (1, 2, 3)] for name, url in sides.items()
        }
        for urls in paths.values():
            load(urls, concurrency=8, seconds=1, method="PATCH", body=body, headers=AUTH)  # warm
        for callers in (64, 1):
            runs: dict[str, list[dict[str, object]]] = {}
            before = {name: counters(url) for name, url in sides.items()}
            with Steal() as steal:
                for _ in range(rounds):
                    for name, urls in paths.items():
                        runs.setdefault(name, []).append(
                            load(urls, concurrency=callers, seconds=seconds, method="PATCH", body=body, headers=AUTH)
                        )
            after = {name: counters(url) for name, url in sides.items()}
            print(f"{callers} caller(s), median of {rounds} interleaved rounds of {seconds:g} s ({steal}):")
            rps, p50 = summarise(runs)
            print(
                f"  redis / embedded: throughput {rps['redis'] / rps['embedded']:.2f} (bar >= 0.9 at 64), "
                f"added p50 {p50['redis'] - p50['embedded']:+.2f} ms (bar <= +0.3 ms at 1)"
            )
            for name in sides:
                grants, missed, bookings = (after[name][c] - before[name][c] for c in COUNTERS)
                print(
                    f"  {name:9s} slots missed {missed:.0f} of {grants:.0f} grants ({missed / max(grants, 1):.2%}, "
                    f"bar <= 1%), {bookings / max(grants, 1):.3f} budget store calls per grant"
                )


if __name__ == "__main__":
    main()
