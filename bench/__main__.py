"""`make bench`: every benchmark in turn, each printing its figure, its limit and the ratio,
then every target again as one table (figure, limit, ratio, goal, met or MISSED).

    python -m bench [--quick | --full]

`--quick` runs the tiny version of each (what `make test` keeps from rotting); `--full` adds
the scales that take long (the API at 100,000 devices).
"""

from __future__ import annotations

import importlib
import sys

from bench.targets import RESULTS, summary

BENCHMARKS = [
    "bench.agent_poll",
    "bench.link",
    "bench.ingest",
    "bench.report_month",
    "bench.api",
    "bench.memory",
    "bench.soak",
    "bench.demo",
]
# The benchmarks that take `--full`; the others run the same either way.
FULL = {"bench.api"}


def main(argv: list[str]) -> int:
    status = 0
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(name)
        args = argv if name in FULL else [a for a in argv if a != "--full"]
        status |= module.main(args)
    print("\n" + summary(RESULTS))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
