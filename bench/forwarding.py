"""Forwarding (writes, never cached): the gateway against a direct aiohttp client, same run.

The emulator adds 20 ms to every call; 64 callers in flight, so the direct client's ceiling is
64 / 20 ms = 3,200/s; the budget is set high enough not to bind. Issue bars: throughput >= 0.8 of
a direct aiohttp client; at one caller, p50(gateway) - p50(direct) <= 1 ms. Both load generators
run against both targets (wrk where installed): the issue's ratio is the gateway under a load
generator that is not the bottleneck (wrk) against the direct aiohttp client; the same-generator
ratios are printed beside it.

    python -m bench forwarding        (env: ROUNDS=3 SECONDS=4 SERVERS=uvicorn)

SERVERS=uvicorn,granian runs the gateway on each server (uvicorn, as `gateway serve` runs it;
granian's embedded server, the candidate of 2026-12-07), a process each, in the same rounds.
"""

from __future__ import annotations

import contextlib
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
    servers = os.environ.get("SERVERS", "uvicorn").split(",")
    emu_port = free_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    env = {"EMULATOR_SECRET_KEY": KEY, "BENCH_UPSTREAM": emulator, "BENCH_QPS": "100000", "GATEWAY_LOG_LEVEL": "info"}
    generators = ["wrk", "aiohttp"] if shutil.which("wrk") else ["aiohttp"]
    with (
        process(
            [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--latency-ms", "20"],
            port=emu_port,
            env=env,
        ),
        contextlib.ExitStack() as stack,
    ):
        gw_body = json.dumps({"activity_status": 1})
        direct_body = json.dumps({"RoomInfo": {"RoomId": "room-1", "ActivityStatus": 1}})
        gateways: dict[str, list[str]] = {}
        for server in servers:
            gw_port = free_port()
            args = [sys.executable, "-m", "bench.apps", str(gw_port)]
            stack.enter_context(process(args, port=gw_port, env={**env, "BENCH_SERVER": server}))
            via = [f"http://127.0.0.1:{gw_port}/v1/tenants/acme/rooms/room-{n}" for n in (1, 2, 3)]
            load(via, concurrency=8, seconds=1, method="PATCH", body=gw_body, headers=AUTH)  # warm
            gateways[f"gateway/{server}" if len(servers) > 1 else "gateway"] = via
        for callers in (64, 1):
            runs: dict[str, list[dict[str, object]]] = {}
            with Steal() as steal:
                for _ in range(rounds):  # interleaved, so drift on the machine hits every column alike
                    for generator in generators:
                        for name, via_gateway in gateways.items():
                            runs.setdefault(f"{name}/{generator}", []).append(
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
            rps, p50 = summarise(runs, width=26)
            first = generators[0]
            for name in gateways:
                print(
                    f"  {name}: throughput driven by {first} / direct aiohttp client = "
                    f"{rps[f'{name}/{first}'] / rps['direct/aiohttp']:.2f} (issue bar >= 0.8)"
                )
                for generator in generators:
                    print(
                        f"  {name}, same generator ({generator}): throughput ratio "
                        f"{rps[f'{name}/{generator}'] / rps[f'direct/{generator}']:.2f}, added p50 "
                        f"{p50[f'{name}/{generator}'] - p50[f'direct/{generator}']:+.2f} ms (bar <= 1 ms at 1 caller)"
                    )


if __name__ == "__main__":
    main()
