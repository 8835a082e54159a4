"""Cost per forwarded request on the steady path, and memory per replica under load.

Metadata writes (no room cache involved) through 2 replicas on one Redis: Redis round trips per
call to Tencent, from the replicas' own counters (issue bar: <= 1 for budget and signature
together), and each replica's RSS at the end of the load (issue bar: <= 150 MB).

    python -m bench cost
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

from tests.fleet import fleet
from tests.redis_servers import standalone
from tests.support import TOKENS

from bench._harness import load


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    with standalone() as redis, fleet(Path(tempfile.mkdtemp()), redis.url, replicas=2) as running:
        running.reset()
        trips0 = running.counter("gateway_redis_round_trips_total")
        beats0 = running.counter("gateway_fleet_heartbeats_total")
        calls0 = running.counter("gateway_upstream_calls_total")
        bookings0 = running.counter("gateway_budget_bookings_total")
        grants0 = running.counter("gateway_budget_grants_total")
        urls = [f"{u}/v1/tenants/acme/rooms/room-{n}/metadata" for n in (1, 2, 3) for u in running.urls]
        peak: dict[int, float] = {}

        def sample(stop: threading.Event) -> None:
            while not stop.wait(0.5):
                for proc in running.procs[1:]:
                    peak[proc.pid] = max(peak.get(proc.pid, 0.0), rss_mb(proc.pid))

        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(stop,))
        sampler.start()
        result = load(
            urls,
            concurrency=32,
            seconds=8,
            method="PATCH",
            body=json.dumps({"metadata": {"k": "v"}}),
            headers={"Authorization": f"Bearer {TOKENS['rw']}"},
        )
        stop.set()
        sampler.join()
        trips = running.counter("gateway_redis_round_trips_total") - trips0
        beats = running.counter("gateway_fleet_heartbeats_total") - beats0
        calls = running.counter("gateway_upstream_calls_total") - calls0
        bookings = running.counter("gateway_budget_bookings_total") - bookings0
        grants = running.counter("gateway_budget_grants_total") - grants0
    print(
        f"{result['requests']} metadata writes ({result['rps']} req/s, statuses {result['statuses']}): "
        f"{calls:.0f} calls to Tencent, {trips:.0f} Redis round trips: {beats:.0f} heartbeats (10 a second per "
        f"replica, whatever the load) and {(trips - beats) / max(calls, 1):.3f} per call; budget store calls "
        f"{bookings:.0f} for {grants:.0f} slots granted ({bookings / max(grants, 1):.3f} per grant)"
    )
    print("peak RSS per replica under load: " + ", ".join(f"{mb:.0f} MB" for mb in peak.values()))


if __name__ == "__main__":
    main()
