"""The programme overview as a Rich table, for `fleet programme`."""

from __future__ import annotations

from rich.table import Table

from fleet.programme.overview import Located, SiteProgress


def programme_table(overview: list[SiteProgress]) -> Table:
    """The programme overview as a Rich table for `fleet programme`: one row per site, with its
    current and next milestone and what is late."""
    table = Table(title="Installation programme", title_justify="left")
    for column in ("site", "country", "vendor", "current milestone", "next planned", "late"):
        table.add_column(column)
    for p in overview:
        late = "no"
        if p.overdue:
            late = "[red]yes[/red]: " + "; ".join(
                f"{_where(m)} {m.facts.milestone} (planned {m.facts.planned})" for m in p.overdue
            )
        review = f"\n[yellow]review: {', '.join(p.review)}[/yellow]" if p.review else ""
        table.add_row(
            p.site.code,
            p.site.country,
            p.site.vendor,
            _current(p.current) + review,
            _next(p.next),
            late,
        )
    return table


def _where(m: Located) -> str:
    return f"phase {m.phase}" + (f" {m.room}" if m.room else "")


def _current(m: Located | None) -> str:
    if m is None:
        return "-"
    when = "date not given"
    if m.facts.actual:
        when = str(m.facts.actual)
        if m.facts.actual_end:
            when += f" to {m.facts.actual_end}"
    return f"{_where(m)} {m.facts.milestone} ({when})"


def _next(m: Located | None) -> str:
    return "-" if m is None else f"{_where(m)} {m.facts.milestone} (planned {m.facts.planned})"
