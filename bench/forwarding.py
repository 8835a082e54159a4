"""Forwarding (writes, never cached): the gateway against a direct aiohttp client, same run.

The emulator adds 20 ms to every call; 64 callers in flight, so the direct client's ceiling is
64 / 20 ms = 3,200/s; the budget is set high enough not to bind. Issue bars: throughput >= 0.8 of
direct; at one caller, p50(gateway) - p50(direct) <= 1 ms.

    python -m bench forwarding        (env: ROUNDS=3 SECONDS=4)
"""

from __future__ import annotations

import json
import os
import sys

from tests.support import APP_ID, KEY, TOKENS
from TLSSigAPIv2 import TLSSigAPIv2

from bench._harness import GATEWAY, free_port, load, median, process

AUTH = {"Authorization": f"Bearer {TOKENS['rw']}"}


def direct_url(emulator: str) -> str:
    sig = TLSSigAPIv2(APP_ID, KEY).gen_sig("administrator", 86400)
    return (
        f"{emulator}/v4/live_engine_http_srv/update_room_info?sdkappid={APP_ID}&identifier=administrator"
        f"&usersig={sig}&random=7&contenttype=json"
    )


def main() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    emu_port, gw_port = free_port(), free_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    env = {"EMULATOR_SECRET_KEY": KEY, "BENCH_UPSTREAM": emulator, "BENCH_QPS": "100000", "GATEWAY_LOG_LEVEL": "info"}
    with (
        process(
            [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--latency-ms", "20"],
            port=emu_port,
            env=env,
        ),
        process([sys.executable, "-m", "bench.apps", str(gw_port)], port=gw_port, env=env),
    ):
        via_gateway = [f"http://127.0.0.1:{gw_port}/v1/tenants/acme/rooms/room-{n}" for n in (1, 2, 3)]
        gw_body = json.dumps({"activity_status": 1})
        direct_body = json.dumps({"RoomInfo": {"RoomId": "room-1", "ActivityStatus": 1}})
        load(via_gateway, concurrency=8, seconds=1, method="PATCH", body=gw_body, headers=AUTH)  # warm
        for callers in (64, 1):
            gateway_runs, direct_runs = [], []
            for _ in range(rounds):
                gateway_runs.append(
                    load(via_gateway, concurrency=callers, seconds=seconds, method="PATCH", body=gw_body, headers=AUTH)
                )
                direct_runs.append(
                    load([direct_url(emulator)], concurrency=callers, seconds=seconds, method="POST", body=direct_body)
                )
            g_rps = median([float(r["rps"]) for r in gateway_runs])  # type: ignore[arg-type]
            d_rps = median([float(r["rps"]) for r in direct_runs])  # type: ignore[arg-type]
            g_p50 = median([float(r["p50_ms"]) for r in gateway_runs])  # type: ignore[arg-type]
            d_p50 = median([float(r["p50_ms"]) for r in direct_runs])  # type: ignore[arg-type]
            print(
                f"{callers:3d} callers: gateway {g_rps:7.0f} req/s (p50 {g_p50:.2f} ms), direct {d_rps:7.0f} req/s "
                f"(p50 {d_p50:.2f} ms): throughput ratio {g_rps / d_rps:.2f}, added p50 {g_p50 - d_p50:+.2f} ms"
            )


if __name__ == "__main__":
    main()
