"""The egress proxy's cost: the gateway calling the emulator directly and through proxy.py
(`tests/proxies.py`, with Basic credentials), side by side in one run, the same load generator
on both. The emulator adds 20 ms to every call; writes (never cached); the budget does not bind.
The figure is mostly the proxy's own: proxy.py is a Python proxy, slower than Squid or Envoy.

    python -m bench proxy        (env: ROUNDS=3 SECONDS=4)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from tests.proxies import egress_proxy
from tests.support import KEY, TOKENS

from bench._harness import GATEWAY, Steal, free_port, load, process, summarise

AUTH = {"Authorization": f"Bearer {TOKENS['rw']}"}


def main() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    emu_port, direct_port, proxied_port = free_port(), free_port(), free_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    env = {
        "EMULATOR_SECRET_KEY": KEY,
        "BENCH_UPSTREAM": emulator,
        "BENCH_QPS": "100000",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    with (
        egress_proxy(Path(tempfile.mkdtemp())) as proxy,
        process(
            [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--latency-ms", "20"],
            port=emu_port,
            env=env,
        ),
        process([sys.executable, "-m", "bench.apps", str(direct_port)], port=direct_port, env=env),
        process(
            [sys.executable, "-m", "bench.apps", str(proxied_port)],
            port=proxied_port,
            env={**env, "BENCH_PROXY": proxy.url()},
        ),
    ):
        targets = {
            "direct": [f"http://127.0.0.1:{direct_port}/v1/tenants/acme/rooms/room-{n}" for n in (1, 2, 3)],
            "via proxy": [f"http://127.0.0.1:{proxied_port}/v1/tenants/acme/rooms/room-{n}" for n in (1, 2, 3)],
        }
        body = json.dumps({"activity_status": 1})
        for urls in targets.values():  # warm: the sockets and the tunnel are open before measuring
            load(urls, concurrency=8, seconds=1, method="PATCH", body=body, headers=AUTH)
        for callers in (64, 1):
            runs: dict[str, list[dict[str, object]]] = {}
            with Steal() as steal:
                for _ in range(rounds):  # interleaved, so drift on the machine hits both alike
                    for name, urls in targets.items():
                        runs.setdefault(name, []).append(
                            load(urls, concurrency=callers, seconds=seconds, method="PATCH", body=body, headers=AUTH)
                        )
            print(f"{callers} caller(s), median of {rounds} interleaved rounds of {seconds:g} s ({steal}):")
            rps, p50 = summarise(runs, width=10)
            print(
                f"  through the proxy / direct: throughput {rps['via proxy'] / rps['direct']:.2f}, "
                f"added p50 {p50['via proxy'] - p50['direct']:+.2f} ms"
            )


if __name__ == "__main__":
    main()
