"""A closed-loop HTTP load generator in its own process (aiohttp: not the bottleneck, unlike
httpx's pool). `concurrency` workers each send the next request as soon as the last one answered.

    python -m bench.load URL --concurrency 64 --seconds 5 [--method PATCH --body '{...}'] [-H 'k: v']

Prints one JSON line: requests, seconds, rps, p50_ms, p99_ms, statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter

import aiohttp


async def run(args: argparse.Namespace) -> dict[str, object]:
    headers = dict(h.split(": ", 1) for h in args.header)
    body = args.body.encode() if args.body else None
    if body:
        headers.setdefault("content-type", "application/json")
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    urls = args.url
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        end = time.perf_counter() + args.seconds

        async def worker(n: int) -> None:
            i = n
            while time.perf_counter() < end:
                url = urls[i % len(urls)]
                i += args.concurrency
                began = time.perf_counter()
                try:
                    async with session.request(args.method, url, data=body, headers=headers) as response:
                        await response.read()
                except aiohttp.ClientError:  # (a refused or dropped connection: counted, as wrk counts it)
                    statuses[0] += 1
                    continue
                latencies.append(time.perf_counter() - began)
                statuses[response.status] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3) if latencies else None,
        "statuses": dict(statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url", nargs="+")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="")
    parser.add_argument("-H", "--header", action="append", default=[])
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
