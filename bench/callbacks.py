"""Tencent's callbacks in, room events out: what one replica can take, and how fast events arrive.

Two gateways as `gateway serve` runs them, one embedded (events kept in process) and one on a
real Redis (a stream per tenant), each with one subscriber on its events stream:

1. **Throughput**: wrk posts signed callbacks, each with a distinct body (so none is a
   duplicate), at 32 in flight; every one is verified, deduplicated, invalidates its room and
   is published. Rounds alternate between the two gateways. Printed: callbacks/s, p50/p99, and
   the events the subscriber received (it reads as fast as it can; when it falls behind its
   queue, it reads the log itself and still gets every event).
2. **Delivery latency**: one callback every 5 ms for a few seconds; the time from sending the
   callback to the subscriber reading its event, both in this process (p50/p99).

    python -m bench callbacks        (env: ROUNDS=3 SECONDS=4)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time

import httpx
from tests.redis_servers import standalone
from tests.sse import Stream, subscribe
from tests.support import KEY, TOKENS
from tests.test_callbacks import signed

from bench._harness import GATEWAY, Steal, free_port, median, process, wrk

LISTENER = {"authorization": f"Bearer {TOKENS['ev']}"}
EVENTS = "/v1/tenants/acme/events"
COMMAND = "Live.CallbackAfterDestroyRoom"


async def drain(stream: Stream, seen: list[int]) -> None:
    """Read events until cancelled, counting them."""
    while True:
        await stream.event(within=3600)
        seen[0] += 1


async def latencies(url: str, count: int) -> list[float]:
    """Seconds from posting each callback to its event reaching a subscriber (one at a time, 5 ms apart)."""
    out: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client, subscribe(client, EVENTS, LISTENER) as stream:
        sent: dict[int, float] = {}

        async def read() -> None:
            while len(out) < count:
                frame = await stream.event(within=10)
                when = frame.json()["event_time"]
                if when in sent:
                    out.append(time.perf_counter() - sent.pop(when))

        reader = asyncio.create_task(read())
        base = int(time.time() * 1000) * 1000
        for n in range(count):
            when = base + n
            body = json.dumps({"RoomId": "room-1", "EventTime": when, "EventType": "DestroyByUser"})
            sent[when] = time.perf_counter()
            response = await client.post(signed(COMMAND), content=body)
            assert response.status_code == 200, response.text
            await asyncio.sleep(0.005)
        await asyncio.wait_for(reader, 10)
    return out


async def measure(sides: dict[str, str], rounds: int, seconds: float) -> None:
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in sides}
    received: dict[str, list[int]] = {name: [0] for name in sides}
    async with contextlib.AsyncExitStack() as stack:
        readers = []
        for name, url in sides.items():
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=None))
            stream = await stack.enter_async_context(subscribe(client, EVENTS, LISTENER))
            readers.append(asyncio.create_task(drain(stream, received[name])))
        with Steal() as steal:
            for round_no in range(rounds):
                for name, url in sides.items():
                    template = json.dumps(
                        {"RoomId": "room-1", "EventTime": round_no * 10**9, "EventType": "DestroyByUser", "N": "%d"}
                    )
                    result = await asyncio.to_thread(
                        wrk,
                        [url + signed(COMMAND)],
                        concurrency=32,
                        seconds=seconds,
                        method="POST",
                        body=template.replace('"%d"', "%d"),
                        vary=True,
                    )
                    runs[name].append(result)
        await asyncio.sleep(2)  # let the subscribers catch up
        for reader in readers:
            reader.cancel()
    print(f"throughput, 32 in flight, median of {rounds} interleaved rounds of {seconds:g} s ({steal}):")
    rps = {name: median([float(r["rps"]) for r in rs]) for name, rs in runs.items()}  # type: ignore[arg-type]
    for name, rs in runs.items():
        posted = sum(int(r["requests"]) for r in rs)  # type: ignore[call-overload]
        errors = sum(int(r["errors"]) for r in rs)  # type: ignore[call-overload]
        p50 = median([float(r["p50_ms"]) for r in rs])  # type: ignore[arg-type]
        p99 = median([float(r["p99_ms"]) for r in rs])  # type: ignore[arg-type]
        print(
            f"  {name:9s} {rps[name]:8.0f} callbacks/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  errors {errors}  "
            f"its subscriber received {received[name][0]} events (wrk counted {posted} answers)"
        )
    print(f"  redis / embedded: {rps['redis'] / rps['embedded']:.2f}")
    print("delivery latency, callback sent -> event read by a subscriber (200/s, one at a time):")
    for name, url in sides.items():
        got = sorted(await latencies(url, 600))
        p99 = got[int(len(got) * 0.99) - 1]
        print(f"  {name:9s} p50 {statistics.median(got) * 1000:.2f} ms  p99 {p99 * 1000:.2f} ms  ({len(got)} events)")


def main() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    emu_port = free_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    env = {"EMULATOR_SECRET_KEY": KEY, "BENCH_UPSTREAM": emulator, "GATEWAY_LOG_LEVEL": "warning"}
    with (
        standalone() as redis,
        process([*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit"], port=emu_port, env=env),
        contextlib.ExitStack() as gateways,
    ):
        sides: dict[str, str] = {}
        for name, redis_url in (("embedded", None), ("redis", redis.url)):
            port = free_port()
            own = {**env, **({"GATEWAY_REDIS_URL": redis_url} if redis_url else {})}
            gateways.enter_context(process([sys.executable, "-m", "bench.apps", str(port)], port=port, env=own))
            sides[name] = f"http://127.0.0.1:{port}"
        asyncio.run(measure(sides, rounds, seconds))


if __name__ == "__main__":
    main()
