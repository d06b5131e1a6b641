"""Each benchmark's targets, printed the same way and gathered for `make bench`'s summary.

A target is a figure against a limit measured in the same run, their ratio, and the goal the
ratio must meet (at least or at most a bound). `target(...)` prints one line:

    TARGET <name>: figure <f> <unit>; limit <l> <unit>; ratio <r> (goal >= 0.5): met

and keeps it in `RESULTS`, so `python -m bench` can print every target again at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Target:
    name: str
    figure: float
    limit: float
    unit: str
    goal: float  # the bound on figure / limit
    at_least: bool  # True: ratio >= goal (a throughput); False: ratio <= goal (a time)

    @property
    def ratio(self) -> float:
        return self.figure / self.limit if self.limit else 0.0

    @property
    def met(self) -> bool:
        return self.ratio >= self.goal if self.at_least else self.ratio <= self.goal

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        return (
            f"TARGET {self.name}: figure {_number(self.figure)} {self.unit}; "
            f"limit {_number(self.limit)} {self.unit}; ratio {self.ratio:.2f} "
            f"(goal {sign} {self.goal:g}): {'met' if self.met else 'MISSED'}"
        )


RESULTS: list[Target] = []


def target(
    name: str, figure: float, limit: float, unit: str, *, goal: float, at_least: bool
) -> Target:
    """Print one target's line and keep it for the summary."""
    found = Target(name, figure, limit, unit, goal, at_least)
    RESULTS.append(found)
    print(f"  {found.line()}", flush=True)
    return found


def summary(results: list[Target]) -> str:
    """Every target of a run as a Markdown table (what the README's figures are copied from)."""
    rows = [
        f"Targets, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC:",
        "",
        "| target | figure | limit (same run) | ratio | goal | |",
        "|---|---|---|---|---|---|",
    ]
    for t in results:
        sign = ">=" if t.at_least else "<="
        rows.append(
            f"| {t.name} | {_number(t.figure)} {t.unit} | {_number(t.limit)} {t.unit} | "
            f"{t.ratio:.2f} | {sign} {t.goal:g} | {'met' if t.met else 'MISSED'} |"
        )
    return "\n".join(rows)


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"
