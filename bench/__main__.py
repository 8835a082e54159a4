"""`python -m bench [name ...]`: run the benchmarks (all by default) and print their ratios."""

from __future__ import annotations

import runpy
import sys

BENCHES = {
    "upstream_transport": "bench.upstream_transport",
    "cache_hits": "bench.cache_hits",
    "forwarding": "bench.forwarding",
    "budget_fleet": "bench.budget_fleet",
    "fixed_window": "bench.fixed_window",
    "coalescing": "bench.coalescing",
    "cost": "bench.cost",
    "redis_mode": "bench.redis_mode",
    "fairness": "bench.fairness",
    "proxy": "bench.proxy",
    "callbacks": "bench.callbacks",
    "idempotency": "bench.idempotency",
    "overload": "bench.overload",
}


def main() -> None:
    names = sys.argv[1:] or list(BENCHES)
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    for name in names:
        print(f"\n=== {name}", flush=True)
        sys.argv = [name]
        runpy.run_module(BENCHES[name], run_name="__main__")


if __name__ == "__main__":
    main()
