"""The controller's schedule: every periodic job in one place, run by APScheduler.

Each job is a plain function of (engine, settings, now) so it is tested with a fixed clock
and no scheduler. Add a job by adding one `Job` to `jobs()`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from fleet.settings import Settings

log = logging.getLogger(__name__)

JobFunc = Callable[[Engine, Settings, datetime], None]


@dataclass(frozen=True)
class Job:
    id: str
    func: JobFunc
    every_s: float


def jobs() -> list[Job]:
    """The schedule. Imported late so each domain module stays importable on its own."""
    from fleet.alerts.evaluation import evaluate_alerts
    from fleet.alerts.webhook import deliver_due
    from fleet.liveness import mark_silent_devices
    from fleet.programme.evidence import check_classroom_evidence
    from fleet.programme.overview import check_overdue_milestones
    from fleet.reports.rollup import derive_usage, purge_samples
    from fleet.reports.scheduled import generate_due_reports

    return [
        Job("liveness", mark_silent_devices, 30),
        Job("alerts", evaluate_alerts, 30),
        # Every second, so the webhook's first retries (1 s, 2 s, 4 s) keep their pace.
        Job("webhook", deliver_due, 1),
        Job("programme_evidence", check_classroom_evidence, 60),
        Job("programme_overdue", check_overdue_milestones, 3600),
        Job("usage_rollup", derive_usage, 60),
        Job("sample_purge", purge_samples, 3600),
        # Hourly: a month's reports appear on the 1st (UTC) once FLEET_REPORT_DELAY_H passed.
        Job("scheduled_reports", generate_due_reports, 3600),
    ]


class Leadership:
    """Exactly one scheduler runs the jobs, however many controller processes run one: the
    holder of the `scheduler` lease (a row whose atomic UPDATE works on SQLite and
    PostgreSQL alike). A leader that dies is replaced once its lease has expired."""

    NAME = "scheduler"

    def __init__(self, engine: Engine, lease_s: float = 30.0, holder: str | None = None) -> None:
        self.engine = engine
        self.lease_s = lease_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = False
        # Job threads ask at once; one question to the database at a time is enough.
        self._lock = threading.Lock()

    def hold(self, now: datetime) -> bool:
        with self._lock:
            return self._hold(now)

    def _hold(self, now: datetime) -> bool:
        from fleet.rollouts.models import TickLease

        table = SQLModel.metadata.tables[TickLease.__tablename__]
        expires = now + timedelta(seconds=self.lease_s)
        try:
            with self.engine.begin() as conn:
                taken = conn.execute(
                    update(table)
                    .where(table.c.name == self.NAME)
                    .where((table.c.holder == self.holder) | (table.c.expires_at < now))
                    .values(holder=self.holder, expires_at=expires)
                ).rowcount
                if not taken:
                    exists = conn.execute(
                        select(table.c.name).where(table.c.name == self.NAME)
                    ).first()
                    if exists is None:
                        conn.execute(
                            insert(table).values(
                                name=self.NAME, holder=self.holder, expires_at=expires, cursor=0
                            )
                        )
                        taken = 1
        except IntegrityError:  # another process inserted the row first
            taken = 0
        if bool(taken) != self.leading:
            log.info("scheduler %s: %s", self.holder, "now leading" if taken else "another leads")
        self.leading = bool(taken)
        return self.leading


def _guarded(
    job: Job, engine: Engine, settings: Settings, leadership: Leadership | None = None
) -> Callable[[], None]:
    def run() -> None:
        now = datetime.now(UTC)
        if leadership is not None and not leadership.hold(now):
            return
        try:
            job.func(engine, settings, now)
        except Exception:  # one failing run must not stop the schedule
            log.exception("scheduled job %s failed; it runs again in %.0f s", job.id, job.every_s)

    return run


def build_scheduler(
    engine: Engine, settings: Settings, publish: Callable[[str, bytes], None] | None = None
) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone=UTC)
    # The rollout tick's job is kept in the database: a restarted controller finds it there
    # and carries a running rollout on (its state is in the database too).
    from fleet.rollouts.schedule import add_tick_job

    add_tick_job(scheduler, engine, settings, publish)
    leadership = Leadership(engine)
    for job in jobs():
        scheduler.add_job(
            _guarded(job, engine, settings, leadership),
            "interval",
            seconds=job.every_s,
            id=job.id,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
    return scheduler
