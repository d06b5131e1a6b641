"""Read-side questions about the programme that the API and the programme page share: each
site's standing as `SiteProgramme`, and a milestone as a `MilestoneRef`. The fleet-wide view is
ops' business only (`fleet:read`), so there is no narrower scope to apply."""

from __future__ import annotations

from datetime import date, datetime

from sqlmodel import Session

from fleet.programme.overview import Located, programme_overview
from fleet.programme.schemas import MilestoneRef, SiteProgramme


def site_programmes(
    session: Session, now: datetime, as_of: date | None = None
) -> list[SiteProgramme]:
    """Every site's standing, by code: the milestone reached, the next one, what is overdue;
    lateness is judged on `as_of` when given, else on each site's own date at `now`."""
    return [
        SiteProgramme(
            site=p.site.code,
            name=p.site.name,
            country=p.site.country,
            vendor=p.site.vendor,
            today=p.today,
            current=milestone_ref(p.current),
            next=milestone_ref(p.next),
            late=p.late,
            overdue=[r for r in map(milestone_ref, p.overdue) if r is not None],
            review=p.review,
        )
        for p in programme_overview(session, now, as_of)
    ]


def milestone_ref(m: Located | None) -> MilestoneRef | None:
    """The milestone as the programme API refers to it; None for None."""
    if m is None:
        return None
    return MilestoneRef(
        phase=m.phase,
        room=m.room or None,
        milestone=m.facts.milestone,
        planned=m.facts.planned,
        actual=m.facts.actual,
        actual_end=m.facts.actual_end,
        reached=m.facts.reached,
    )
