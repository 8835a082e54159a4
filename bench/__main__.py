"""`python -m bench [name ...]`: run the benchmarks (all by default) and print their ratios."""

from __future__ import annotations

import runpy
import sys

BENCHES = {"upstream_transport": "bench.upstream_transport", "budget_fleet": "bench.budget_fleet"}


def main() -> None:
    names = sys.argv[1:] or list(BENCHES)
    for name in names:
        print(f"\n=== {name}", flush=True)
        sys.argv = [name]
        runpy.run_module(BENCHES[name], run_name="__main__")


if __name__ == "__main__":
    main()
