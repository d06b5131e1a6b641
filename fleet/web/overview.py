"""The fleet overview's rows: every site, what is wrong there, and why it stands out.

Counts come from `fleet.sites.queries`, as `GET /api/v1/sites`' do, so the page and the API
agree; the caller's scope is applied there. A technician gets their sites; a vendor gets each
site where it has devices, counting only its own devices and the alerts about them.
"""

from __future__ import annotations

import functools
import gettext
import html
from dataclasses import dataclass, field
from datetime import datetime

from jinja2.filters import do_urlencode
from markupsafe import Markup
from sqlmodel import Session

from fleet.alerts.queries import OpenAlerts, unacknowledged_alerts_by_site
from fleet.auth.permissions import Caller
from fleet.sites.queries import site_summaries
from fleet.sites.schemas import SiteSummary
from fleet.web.programme_page import milestones_by_site
from fleet.web.templating import PROBLEM_STATES, STATE_ORDER, epoch, level_badge_html
from fleet.web.viewer import Viewer
from fleet.web.words import AGENT_STATES, ALERT_KINDS, N_, STATES, word

NULL_TRANSLATIONS = gettext.NullTranslations()


# A site's status, worst first: what the overview sorts by and the "need attention" card counts.
LEVELS = ("critical", "warning", "silent", "ok")  # their badges: fleet.web.templating.level_badge


@dataclass
class SiteRow:
    """One site's row of the fleet overview: its summary, why it stands out, its unacknowledged
    alerts, its latest programme milestone, and its status level."""

    site: SiteSummary
    problems: list[str] = field(default_factory=list)  # why it stands out, worst first
    open_alerts: OpenAlerts = field(default_factory=OpenAlerts)  # not yet acknowledged
    milestone: str = "—"  # the latest reached in its installation programme
    programme_late: bool = False
    level: str = "ok"  # one of LEVELS

    @property
    def is_problem(self) -> bool:
        """Whether the site needs attention: the overview's card counts these."""
        return self.level in ("critical", "warning")

    @property
    def never_reported(self) -> bool:
        """Whether no reading has come from any of the site's devices and no agent state is
        known."""
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

    def html(
        self, index: int, reported: Markup, t: gettext.NullTranslations, viewer: Viewer
    ) -> Markup:
        """The site's row of the overview table (its status `index`-th, worst first), the
        last-reported cell holding `reported` (the template's `when` of the time, which knows
        the viewer's zone and the page's now). Written here rather than in the template for
        the reason `state_cells` is: a row a site, of a dozen cells, was most of the page's
        time, its every value escaped one by one through Jinja; here each is escaped once,
        as plain text (`html.escape`: a Markup made of each value cost more than escaping
        it), and the catalog's words are trusted as the template's `_` trusts them."""
        site, alerts, label = self.site, self.open_alerts, _row_labels(t)
        code, level = html.escape(site.code), html.escape(self.level)
        site_name = html.escape(site.name)
        name, quoted = site_name, html.escape(do_urlencode(site.code))
        if viewer.may("sites:read"):
            name = f'<a class="link" href="/sites/{quoted}">{site_name}</a>'
        status = str(level_badge_html(self.level, t))
        if self.problems:
            status += f' <span class="problem-text">{html.escape(", ".join(self.problems))}</span>'
        alert_class, shown = "", "·"
        if alerts.total:
            n = alerts.critical
            title = html.escape(t.ngettext("%(num)d critical", "%(num)d critical", n) % {"num": n})
            alert_class = " has-critical" if n else " has-warning"
            shown = (
                f'<a class="link" href="/alerts?site={quoted}" title="{title}">{alerts.total}</a>'
            )
        milestone = html.escape(self.milestone)
        if self.programme_late:
            milestone += f' <span class="late">{label["late"]}</span>'
        if site.agent is not None:
            agent_state = html.escape(site.agent.state)
            said = html.escape(word(t, AGENT_STATES, site.agent.state))
            agent = f'<span class="agent agent-{agent_state}">{said}</span>'
        else:
            agent_state = "none"
            never = "—" if viewer.role == "vendor" else label["never heard"]
            agent = f'<span class="muted">{never}</span>'
        problem = " problem" if self.is_problem else ""
        return Markup(  # noqa: S704  (each value escaped above; the labels are the catalog's)
            f'<tr class="level-row-{level}{problem}" data-site="{code}" data-level="{level}">'
            f'\n      <td data-label="{label["Site"]}" data-value="{site_name}">{name} '
            f'<span class="code">{code}</span> '
            f'<span class="muted country">{html.escape(site.country)}</span></td>'
            f'\n      <td data-label="{label["Status"]}" data-value="{index}" '
            f'data-testid="site-status">\n        {status}      </td>'
            f'\n      <td data-label="{label["Devices"]}" class="num" '
            f'data-value="{site.devices}">{site.devices}</td>'
            f"\n      {self.state_cells}"
            f'\n      <td data-label="{label["Open alerts"]}" class="num{alert_class}" '
            f'data-value="{alerts.total}" data-testid="open-alerts">{shown}</td>'
            f'\n      <td data-label="{label["Programme"]}">{milestone}</td>'
            f'\n      <td data-label="{label["Agent"]}" data-value="{agent_state}">{agent}</td>'
            f'\n      <td data-label="{label["Last reported"]}" '
            f'data-value="{epoch(site.last_reported_at)}">{reported}</td>'
            "\n    </tr>"
        )

    @property
    def troubled_devices(self) -> int:
        """How many of the site's devices are in PROBLEM_STATES: the overview sorts by it after
        the level."""
        return sum(self.site.devices_by_state.get(s, 0) for s in PROBLEM_STATES)


@functools.lru_cache(maxsize=16)
def _row_labels(t: gettext.NullTranslations) -> dict[str, str]:
    """The words every row of the overview repeats, in `t`'s language: looked up once a
    language, not a dozen times a row. The catalogs live as long as the process."""
    return {
        word: t.gettext(word)
        for word in (
            N_("Site"),
            N_("Status"),
            N_("Devices"),
            N_("Open alerts"),
            N_("Programme"),
            N_("Agent"),
            N_("Last reported"),
            N_("late"),
            N_("never heard"),
        )
    }


def site_level(site: SiteSummary, open_alerts: OpenAlerts) -> str:
    """The site's status (LEVELS): its worst open alert's severity, or critical when its agent
    or devices are down even before an alert says so; `silent` for a site never heard from."""
    agent_down = site.agent is not None and site.agent.state != "online"
    devices_down = any(site.devices_by_state.get(s, 0) for s in PROBLEM_STATES)
    if open_alerts.critical or agent_down or devices_down:
        return "critical"
    if open_alerts.total:
        return "warning"
    if site.last_reported_at is None and site.agent is None:
        return "silent"
    return "ok"


def site_problems(
    site: SiteSummary,
    open_alerts: OpenAlerts = OpenAlerts(),
    t: gettext.NullTranslations = NULL_TRANSLATIONS,
) -> list[str]:
    """What to look at first, in the page's language; empty for a healthy (or silent) site."""
    problems = []
    if site.agent is not None and site.agent.state != "online":
        problems.append(
            t.gettext("site agent %(state)s") % {"state": word(t, AGENT_STATES, site.agent.state)}
        )
    for state in STATE_ORDER:
        count = site.devices_by_state.get(state, 0)
        if state in PROBLEM_STATES and count:
            problems.append(
                t.ngettext("%(num)d device %(state)s", "%(num)d devices %(state)s", count)
                % {"num": count, "state": word(t, STATES, state)}
            )
    # Every open alert counts, by severity: a panel left on after hours is a warning to see,
    # not a site "all well".
    if open_alerts.critical:
        n = open_alerts.critical
        problems.append(
            t.ngettext("%(num)d critical alert", "%(num)d critical alerts", n) % {"num": n}
        )
    if open_alerts.warning:
        n = open_alerts.warning
        problems.append(
            t.ngettext("%(num)d warning alert", "%(num)d warning alerts", n) % {"num": n}
        )
    if open_alerts.kinds and problems:
        kinds = sorted(word(t, ALERT_KINDS, k) for k in open_alerts.kinds)
        problems[-1] += " (" + ", ".join(kinds) + ")"
    return problems


def site_rows(
    session: Session,
    caller: Caller | None = None,
    t: gettext.NullTranslations = NULL_TRANSLATIONS,
) -> list[SiteRow]:
    """Every site the caller may see (None: every site), as the overview shows it."""
    alerts = unacknowledged_alerts_by_site(session, caller)
    # A site's installation programme is its own business, not a vendor's.
    is_vendor = caller is not None and caller.vendor is not None
    milestones = {} if is_vendor else milestones_by_site(session, t)
    rows = []
    for site in site_summaries(session, caller):
        open_alerts = alerts.get(site.code, OpenAlerts())
        milestone, late = milestones.get(site.code, ("—", False))
        rows.append(
            SiteRow(
                site=site,
                problems=site_problems(site, open_alerts, t),
                open_alerts=open_alerts,
                milestone=milestone,
                programme_late=late,
                level=site_level(site, open_alerts),
            )
        )
    # The worst status first, the most troubled on top; then by name.
    rows.sort(
        key=lambda r: (
            LEVELS.index(r.level),
            -r.troubled_devices,
            -r.open_alerts.total,
            r.site.name.lower(),
        )
    )
    return rows


def fleet_totals(rows: list[SiteRow]) -> dict[str, int]:
    """Devices by state, summed over the rows, every state of STATE_ORDER present: the overview's
    totals."""
    totals = dict.fromkeys(STATE_ORDER, 0)
    for row in rows:
        for state, count in row.site.devices_by_state.items():
            totals[state] = totals.get(state, 0) + count
    return totals


def newest_report(rows: list[SiteRow]) -> datetime | None:
    """The latest time any of the rows' sites reported (UTC), or None when none has."""
    seen = [r.site.last_reported_at for r in rows if r.site.last_reported_at is not None]
    return max(seen, default=None)
