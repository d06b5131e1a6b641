"""Where each site stands: the milestone it has reached, the next one planned, what is late."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet.alerts.evaluation import update_gauge
from fleet.alerts.models import AlertKind, Severity
from fleet.alerts.reconcile import Judgement, reconcile
from fleet.alerts.rules import Finding, Observation
from fleet.job_rows import each
from fleet.models import Site
from fleet.programme.milestones import MilestoneFacts, is_overdue, position
from fleet.programme.models import ClassroomEvidence, MilestoneRecord, Phase
from fleet.programme.records import facts_of, site_today

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Located:
    """One recorded milestone with where it belongs: a phase, or a classroom of a phase."""

    site_code: str
    phase: int
    room: str  # "" for the phase itself
    facts: MilestoneFacts
    note: str = ""

    @property
    def subject(self) -> str:
        """The milestone's owner in words: "<site> phase <n>", and the room when it is a
        classroom's."""
        return f"{self.site_code} phase {self.phase}" + (f" {self.room}" if self.room else "")


@dataclass(frozen=True)
class SiteProgress:
    """Where one site stands on its local `today`: the furthest milestone reached, the next one
    planned, those past their planned date, and classrooms flagged for review by device evidence."""

    site: Site
    today: date
    current: Located | None
    next: Located | None
    overdue: list[Located] = field(default_factory=list)
    review: list[str] = field(default_factory=list)  # classrooms flagged by device evidence

    @property
    def late(self) -> bool:
        """True when any milestone is past its planned date."""
        return bool(self.overdue)


def progress(
    site: Site, milestones: Iterable[Located], review: Iterable[str], today: date
) -> SiteProgress:
    """A site's standing from its milestones (pure): the furthest reached, the next planned."""
    items = list(milestones)
    reached = [m for m in items if m.facts.reached]
    current = max(reached, key=_order, default=None)
    upcoming = [
        m
        for m in items
        if not m.facts.reached
        and m.facts.planned is not None
        and (current is None or _order(m) > _order(current))
    ]
    upcoming.sort(key=lambda m: (m.facts.planned, _order(m)))
    overdue = sorted((m for m in items if is_overdue(m.facts, today)), key=_order)
    return SiteProgress(
        site=site,
        today=today,
        current=current,
        next=upcoming[0] if upcoming else None,
        overdue=overdue,
        review=sorted(review),
    )


def _order(m: Located) -> tuple[int, int, bool]:
    # A phase's own milestone sorts after its classrooms' of the same name: it sums them up.
    return (m.phase, position(m.facts.milestone), m.room == "")


def located_milestones(
    session: Session, site_code: str | None = None, *, sites: list[str] | None = None
) -> list[Located]:
    """The milestones of one site (`site_code`), of `sites`, or of every site."""
    query = select(MilestoneRecord, Phase).where(MilestoneRecord.phase_id == Phase.id)
    if site_code is not None:
        query = query.where(Phase.site_code == site_code)
    if sites is not None:
        query = query.where(col(Phase.site_code).in_(sites))
    rows = session.exec(query.order_by(col(Phase.site_code), col(Phase.number))).all()
    located = [
        Located(phase.site_code, phase.number, record.room_id, facts_of(record), record.note)
        for record, phase in rows
    ]
    return sorted(located, key=lambda m: (m.site_code, *_order(m), m.room))


def programme_overview(
    session: Session, now: datetime, today: date | None = None, *, codes: list[str] | None = None
) -> list[SiteProgress]:
    """Every site's standing (only `codes`' if given); `today` overrides each site's own date
    (for an "as of" view)."""
    by_site: dict[str, list[Located]] = defaultdict(list)
    for m in located_milestones(session, sites=codes):
        by_site[m.site_code].append(m)
    review: dict[str, list[str]] = defaultdict(list)
    flagged = select(ClassroomEvidence).where(ClassroomEvidence.status == "review")
    if codes is not None:
        flagged = flagged.where(col(ClassroomEvidence.site_code).in_(codes))
    for evidence in session.exec(flagged):
        review[evidence.site_code].append(evidence.room_id)
    query = select(Site).order_by(col(Site.code))
    if codes is not None:
        query = query.where(col(Site.code).in_(codes))
    sites = session.exec(query).all()
    return [
        progress(site, by_site[site.code], review[site.code], today or site_today(site, now))
        for site in sites
    ]


def check_overdue_milestones(engine: Engine, now: datetime, *, notify: bool) -> None:
    """The scheduled check: one `programme_overdue` alert per site while any of its planned
    milestones is past its date (in the site's own calendar), resolved once none is.
    `notify`: queue a webhook notification for each alert opened or resolved. A site whose
    records cannot be read is logged, counted and skipped (fleet.job_rows); the others are
    judged."""
    with Session(engine) as session:
        codes = list(session.exec(select(Site.code).order_by(col(Site.code))))
    opened: list[int] = []
    resolved: list[int] = []

    def judge(chunk: list[str]) -> None:
        with Session(engine) as session:
            overview = programme_overview(session, now, codes=chunk)
        judgements = [
            Judgement(
                site.site.code,
                None,
                (Observation.of(AlertKind.programme_overdue, now, overdue_finding(site)),),
            )
            for site in overview
        ]
        with engine.begin() as conn:
            result = reconcile(conn, judgements, now, notify=notify)
        opened.extend(result.opened)
        resolved.extend(result.resolved)

    # All sites at once; only if that raises, site by site.
    each("programme_overdue", codes, judge, chunk=max(len(codes), 1))
    with engine.begin() as conn:
        update_gauge(conn)
    if opened or resolved:
        log.info("programme_overdue: %d opened, %d resolved", len(opened), len(resolved))


def overdue_finding(site: SiteProgress) -> Finding | None:
    """The programme_overdue alert finding (a warning naming each late milestone) for a site with
    milestones past their planned date; None when none is."""
    if not site.overdue:
        return None
    late = "; ".join(
        f"{m.subject} {m.facts.milestone} planned {m.facts.planned}" for m in site.overdue
    )
    return Finding(
        AlertKind.programme_overdue,
        Severity.warning,
        f"past its planned date at {site.site.code} (today {site.today} there): {late}. "
        "Record the milestone, or move its planned date",
    )
