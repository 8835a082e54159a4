"""What an Idempotency-Key costs a write: keyed against keyless messages, Redis mode, same run.

One gateway as `gateway serve` runs it, on a real Redis (one replica), sends messages
(``POST …/messages``, not repeatable) to the emulator; the budget is set high enough not to bind.
wrk gives every keyed request a key of its own (no replays: each is a first request, which
claims its key in Redis and keeps its answer). Rounds alternate keyed and keyless. Issue bar
(issue 23): p50 of a keyed write ≤ p50 of a keyless one + 1 ms, and at most one extra Redis
round trip a write (printed from ``gateway_redis_round_trips_total``).

    python -m bench idempotency        (env: ROUNDS=3 SECONDS=4; needs wrk)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.redis_servers import standalone
from tests.support import KEY, TOKENS

from bench._harness import GATEWAY, Steal, free_port, process, summarise, wrk

AUTH = {"Authorization": f"Bearer {TOKENS['rw']}"}


def round_trips(url: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "gateway_redis_round_trips_total":
                return sample.value
    return 0.0


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench idempotency needs wrk (apt-get install wrk): the aiohttp generator cannot vary the key")
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    emu_port, gw_port = free_port(), free_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    env = {"EMULATOR_SECRET_KEY": KEY, "BENCH_UPSTREAM": emulator, "BENCH_QPS": "100000"}
    env["GATEWAY_LOG_LEVEL"] = "warning"
    url = f"http://127.0.0.1:{gw_port}"
    path = [f"{url}/v1/tenants/acme/rooms/room-1/messages"]
    body = json.dumps({"sender": "administrator", "text": "hello"})
    with (
        standalone() as redis,
        process(
            [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--latency-ms", "2"],
            port=emu_port,
            env=env,
        ),
        process(
            [sys.executable, "-m", "bench.apps", str(gw_port)],
            port=gw_port,
            env={**env, "GATEWAY_REDIS_URL": redis.url},
        ),
    ):
        wrk(path, concurrency=4, seconds=1, method="POST", body=body, headers=AUTH, key=uuid.uuid4().hex)  # warm
        for callers in (1, 16):
            runs: dict[str, list[dict[str, object]]] = {}
            trips: dict[str, list[float]] = {}
            with Steal() as steal:
                for _ in range(rounds):
                    for name, key in (("keyless", None), ("keyed", uuid.uuid4().hex)):
                        before = round_trips(url)
                        result = wrk(
                            path, concurrency=callers, seconds=seconds, method="POST", body=body, headers=AUTH, key=key
                        )
                        runs.setdefault(name, []).append(result)
                        trips.setdefault(name, []).append((round_trips(url) - before) / max(1, int(result["requests"])))
            print(f"{callers} caller(s), wrk, median of {rounds} interleaved rounds of {seconds:g} s ({steal}):")
            _, p50 = summarise(runs)
            extra = (
                sorted(trips["keyed"])[len(trips["keyed"]) // 2] - sorted(trips["keyless"])[len(trips["keyless"]) // 2]
            )
            print(
                f"  keyed - keyless: p50 {p50['keyed'] - p50['keyless']:+.2f} ms (bar <= +1 ms), "
                f"Redis round trips a write {extra:+.2f} (bar <= +1; the answer is kept in the background)"
            )


if __name__ == "__main__":
    main()
