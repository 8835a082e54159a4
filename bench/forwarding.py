"""Forwarding (writes, never cached): the gateway against a direct aiohttp client, same run.

The emulator adds 20 ms to every call; 64 callers in flight, so the direct client's ceiling is
64 / 20 ms = 3,200/s; the budget is set high enough not to bind. Issue bars: throughput >= 0.8 of
a direct aiohttp client; at one caller, p50(gateway) - p50(direct) <= 1 ms. Both load generators
run against both targets (wrk where installed): the issue's ratio is the gateway under a load
generator that is not the bottleneck (wrk) against the direct aiohttp client; the same-generator
ratios are printed beside it.

    python -m bench forwarding        (env: ROUNDS=3 SECONDS=4)
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from tests.support import APP_ID, KEY, TOKENS
from TLSSigAPIv2 import TLSSigAPIv2

from bench._harness import GATEWAY, Steal, free_port, load, process, summarise

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
    generators = ["wrk", "aiohttp"] if shutil.which("wrk") else ["aiohttp"]
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
            runs: dict[str, list[dict[str, object]]] = {}
            with Steal() as steal:
                for _ in range(rounds):  # interleaved, so drift on the machine hits every column alike
                    for generator in generators:
                        runs.setdefault(f"gateway/{generator}", []).append(
                            load(
                                via_gateway,
                                concurrency=callers,
                                seconds=seconds,
                                method="PATCH",
                                body=gw_body,
                                headers=AUTH,
                                generator=generator,
                            )
                        )
                        runs.setdefault(f"direct/{generator}", []).append(
                            load(
                                [direct_url(emulator)],
                                concurrency=callers,
                                seconds=seconds,
                                method="POST",
                                body=direct_body,
                                generator=generator,
                            )
                        )
            print(f"{callers} caller(s), median of {rounds} interleaved rounds of {seconds:g} s ({steal}):")
            rps, p50 = summarise(runs)
            first = generators[0]
            print(
                f"  throughput: gateway driven by {first} / direct aiohttp client = "
                f"{rps[f'gateway/{first}'] / rps['direct/aiohttp']:.2f} (issue bar >= 0.8)"
            )
            for generator in generators:
                print(
                    f"  same generator ({generator}): throughput ratio "
                    f"{rps[f'gateway/{generator}'] / rps[f'direct/{generator}']:.2f}, added p50 "
                    f"{p50[f'gateway/{generator}'] - p50[f'direct/{generator}']:+.2f} ms (bar <= 1 ms at 1 caller)"
                )


if __name__ == "__main__":
    main()
