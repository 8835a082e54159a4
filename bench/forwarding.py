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
SENDERS=transport,aiohttp does the same for the gateway's upstream client (its transport; aiohttp's
``ClientSession`` with the send window asked in its client tracing, bench.upstream_transport's
``AiohttpSender``: issue 24; also aiohttp-headers, aiohttp-unchecked: bench.apps) and prints each
sender's throughput ratio and added p50 against the first; with more than one sender, a cache-hit
row first (GET of room-4, never written here, so never reaching the sender: the control, ≈1.0).
Each gateway has an emulator of its own (so has the direct client): a sender that leaves sockets
open cannot load another's upstream.

The control, in the same rounds: ``hop``, a bare Litestar route in each gateway's server that
forwards one pre-signed call through the gateway's transport (``bench.apps.hop``: no auth, budget,
validation, signing or metrics). What it adds over the direct client is what any forwarding hop
in this server costs on this machine; what the gateway adds over it is the gateway's own work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import urllib.request

from tests.support import APP_ID, KEY, TOKENS
from TLSSigAPIv2 import TLSSigAPIv2

from bench._harness import GATEWAY, IDLE_GAP, Steal, free_port, load, process, round_trips, summarise

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
    senders = os.environ.get("SENDERS", "transport").split(",")
    env = {"EMULATOR_SECRET_KEY": KEY, "BENCH_QPS": "100000", "GATEWAY_LOG_LEVEL": "info"}
    generators = ["wrk", "aiohttp"] if shutil.which("wrk") else ["aiohttp"]
    with contextlib.ExitStack() as stack:

        def start_emulator() -> str:  # one per gateway and one for the direct client: none shares sockets
            port = free_port()
            args = [*GATEWAY, "emulator", "--port", str(port), "--no-rate-limit", "--latency-ms", "20", "--rooms", "4"]
            stack.enter_context(process(args, port=port, env=env))
            return f"http://127.0.0.1:{port}"

        emulator = start_emulator()
        gw_body = json.dumps({"activity_status": 1})
        direct_body = json.dumps({"RoomInfo": {"RoomId": "room-1", "ActivityStatus": 1}})
        gateways: dict[str, list[str]] = {}
        hops: dict[str, str] = {}
        pids: dict[str, int] = {}
        for server in servers:
            for sender in senders:
                gw_port = free_port()
                args = [sys.executable, "-m", "bench.apps", str(gw_port)]
                variant = {"BENCH_SERVER": server, "BENCH_SENDER": sender, "BENCH_UPSTREAM": start_emulator()}
                proc = stack.enter_context(process(args, port=gw_port, env={**env, **variant}))
                via = [f"http://127.0.0.1:{gw_port}/v1/tenants/acme/rooms/room-{n}" for n in (1, 2, 3)]
                load(via, concurrency=8, seconds=1, method="PATCH", body=gw_body, headers=AUTH)  # warm
                parts = [p for p, many in ((server, len(servers) > 1), (sender, len(senders) > 1)) if many]
                gateways["/".join(["gateway", *parts])] = via
                pids["/".join(["gateway", *parts])] = proc.pid
                if sender == senders[0]:  # the control: a bare forwarding hop in the same server (bench.apps)
                    hops["/".join(["hop", *([server] if len(servers) > 1 else [])])] = (
                        f"http://127.0.0.1:{gw_port}/bare/hop/room-1"
                    )
        if len(senders) > 1:
            hits: dict[str, list[dict[str, object]]] = {}
            with Steal() as steal:
                for _ in range(rounds):
                    for name, via_gateway in gateways.items():
                        read = [via_gateway[0].replace("room-1", "room-4")]
                        hits.setdefault(name, []).append(
                            load(read, concurrency=64, seconds=seconds, headers=AUTH, generator=generators[0])
                        )
            print(f"cache hits (GET room-4), 64 callers, median of {rounds} interleaved rounds ({steal}):")
            hit_rps, _ = summarise(hits, width=max(26, *(len(k) + 1 for k in hits)))
            compare(hit_rps, None, servers, senders, generators[:1])
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
                        for name, via_hop in hops.items():
                            runs.setdefault(f"{name}/{generator}", []).append(
                                load(
                                    [via_hop],
                                    concurrency=callers,
                                    seconds=seconds,
                                    method="PATCH",
                                    body=gw_body,
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
            rps, p50 = summarise(runs, width=max(26, *(len(k) + 1 for k in runs)))
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
            for name in hops:
                server = name.partition("/")[2]
                gateway = "/".join(
                    ["gateway", *([server] if server else []), *([senders[0]] if len(senders) > 1 else [])]
                )
                for generator in generators:
                    hop, ours, direct = (p50[f"{n}/{generator}"] for n in (name, gateway, "direct"))
                    print(
                        f"  {name} ({generator}), the control: a bare forwarding hop in the same server adds "
                        f"{hop - direct:+.2f} ms p50 over the direct client; {gateway} adds {ours - hop:+.2f} ms "
                        "over it"
                    )
            if callers == 1:
                for name, via_hop in hops.items():
                    port = int(via_hop.split(":")[2].split("/")[0])
                    hot, idle = round_trips("127.0.0.1", port, BARE_GET, _whole_reply)
                    print(
                        f"  {name}, the control: the same server's bare GET route (bench.apps.bare), p50 from a "
                        f"plain socket: {hot:.0f} µs back to back, {idle:.0f} µs after {IDLE_GAP * 1000:.0f} ms idle"
                    )
            compare(rps, p50, servers, senders, generators)
        print("slots missed (a call that could not leave within its send window: booked again), whole run:")
        for name, via_gateway in gateways.items():
            fds = len(os.listdir(f"/proc/{pids[name]}/fd")) if os.path.isdir("/proc") else -1
            print(f"  {name}: {missed(via_gateway[0])} (open file descriptors at the end: {fds})")


BARE_GET = b"GET /bare/rooms/room-1 HTTP/1.1\r\nHost: bench\r\n\r\n"


def _whole_reply(data: bytes) -> bool:
    """Whether ``data`` holds a whole HTTP reply with a content-length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = next(
        int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
    )
    return len(body) >= length


def missed(url: str) -> int | str:
    """The gateway's gateway_budget_slots_missed_total, all series (``url``: any of its URLs)."""
    try:
        with urllib.request.urlopen(url.split("/v1/", 1)[0] + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError as exc:  # (a gateway out of file descriptors cannot answer)
        return f"unknown ({exc})"
    return round(sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(MISSED)))


MISSED = "gateway_budget_slots_missed_total{"


def compare(
    rps: dict[str, float], p50: dict[str, float] | None, servers: list[str], senders: list[str], generators: list[str]
) -> None:
    """Each sender against the first (SENDERS): the throughput ratio and the added p50, per server
    and generator (medians, measured in the same interleaved rounds)."""
    for server in servers:
        names = {s: "/".join(["gateway", *([server] if len(servers) > 1 else []), s]) for s in senders}
        for sender in senders[1:]:
            for generator in generators:
                ours, first = (f"{names[x]}{'' if p50 is None else '/' + generator}" for x in (sender, senders[0]))
                added = "" if p50 is None else f", p50 {p50[ours] - p50[first]:+.2f} ms"
                print(f"  {ours} / {first}: throughput {rps[ours] / rps[first]:.2f}{added}")


if __name__ == "__main__":
    main()
