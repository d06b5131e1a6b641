"""The fleet overview's rows: every site, what is wrong there, and why it stands out.

Counts come from `fleet.sites.queries`, as `GET /api/v1/sites`' do, so the page and the API
agree; the caller's scope is applied there. A technician gets their sites; a vendor gets each
site where it has devices, counting only its own devices and the alerts about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from markupsafe import Markup
from sqlmodel import Session

from fleet.alerts.queries import OpenAlerts, unacknowledged_alerts_by_site
from fleet.auth.permissions import Caller
from fleet.sites.queries import site_summaries
from fleet.sites.schemas import SiteSummary
from fleet.web.programme_page import milestones_by_site
from fleet.web.templating import PROBLEM_STATES, STATE_ORDER


@dataclass
class SiteRow:
    site: SiteSummary
    problems: list[str] = field(default_factory=list)  # why it stands out, worst first
    open_alerts: OpenAlerts = field(default_factory=OpenAlerts)  # not yet acknowledged
    milestone: str = "—"  # the latest reached in its installation programme
    programme_late: bool = False

    @property
    def is_problem(self) -> bool:
        return bool(self.problems)

    @property
    def never_reported(self) -> bool:
        return self.site.last_reported_at is None and self.site.agent is None

    @property
    def state_cells(self) -> Markup:
        """The per-state count cells of the overview table, in column order. Written here
        rather than in the template: they are most of the page, and made of state names
        and integers only, so the template's per-value escaping would be spent on nothing."""
        by_state = self.site.devices_by_state
        cells = []
        for state in STATE_ORDER:
            n = int(by_state.get(state, 0))
            css = f"num has-{state}" if n else "num"
            cells.append(
                f'<td class="{css}" data-value="{n}" data-state="{state}">{n if n else "·"}</td>'
            )
        return Markup("".join(cells))  # noqa: S704  (state names, integers)

    @property
    def troubled_devices(self) -> int:
        return sum(self.site.devices_by_state.get(s, 0) for s in PROBLEM_STATES)


def site_problems(site: SiteSummary, open_alerts: OpenAlerts = OpenAlerts()) -> list[str]:
    """What an ops person should look at first; empty for a healthy (or silent, new) site."""
    problems = []
    if site.agent is not None and site.agent.state != "online":
        problems.append(f"site agent {site.agent.state}")
    for state in STATE_ORDER:
        count = site.devices_by_state.get(state, 0)
        if state in PROBLEM_STATES and count:
            problems.append(f"{count} {state.replace('_', ' ')}")
    # Warnings (a panel left on after hours) show in their column; only critical ones make
    # a site stand out, or nearly every site would, every evening.
    if open_alerts.critical:
        plural = "s" if open_alerts.critical != 1 else ""
        problems.append(f"{open_alerts.critical} critical alert{plural}")
    return problems


def site_rows(session: Session, caller: Caller | None = None) -> list[SiteRow]:
    """Every site the caller may see (None: every site), as the overview shows it."""
    alerts = unacknowledged_alerts_by_site(session, caller)
    # A site's installation programme is its own business, not a vendor's.
    is_vendor = caller is not None and caller.vendor is not None
    milestones = {} if is_vendor else milestones_by_site(session)
    rows = []
    for site in site_summaries(session, caller):
        open_alerts = alerts.get(site.code, OpenAlerts())
        milestone, late = milestones.get(site.code, ("—", False))
        rows.append(
            SiteRow(
                site=site,
                problems=site_problems(site, open_alerts),
                open_alerts=open_alerts,
                milestone=milestone,
                programme_late=late,
            )
        )
    # Problem sites first, the most troubled on top; then by name.
    rows.sort(key=lambda r: (not r.is_problem, -r.troubled_devices, r.site.name.lower()))
    return rows


def fleet_totals(rows: list[SiteRow]) -> dict[str, int]:
    totals = dict.fromkeys(STATE_ORDER, 0)
    for row in rows:
        for state, count in row.site.devices_by_state.items():
            totals[state] = totals.get(state, 0) + count
    return totals


def newest_report(rows: list[SiteRow]) -> datetime | None:
    seen = [r.site.last_reported_at for r in rows if r.site.last_reported_at is not None]
    return max(seen, default=None)
