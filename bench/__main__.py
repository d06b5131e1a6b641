"""`make bench`: every benchmark in turn, each printing its figure, its limit and the ratio.

`python -m bench --quick` runs the tiny version of each (what `make test` keeps from rotting).
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "bench.agent_poll",
    "bench.link",
    "bench.ingest",
    "bench.report_month",
    "bench.api",
    "bench.memory",
    "bench.soak",
]


def main(argv: list[str]) -> int:
    status = 0
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(name)
        status |= module.main(argv)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
