"""The controller's schedule: every periodic job in one place, run by APScheduler.

Each job is a plain function of (engine, settings, now) so it is tested with a fixed clock
and no scheduler. Add a job by adding one `Job` to `JOBS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

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
    return []


def _guarded(job: Job, engine: Engine, settings: Settings) -> Callable[[], None]:
    def run() -> None:
        try:
            job.func(engine, settings, datetime.now(UTC))
        except Exception:  # one failing run must not stop the schedule
            log.exception("scheduled job %s failed; it runs again in %.0f s", job.id, job.every_s)

    return run


def build_scheduler(engine: Engine, settings: Settings) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone=UTC)
    for job in jobs():
        scheduler.add_job(
            _guarded(job, engine, settings),
            "interval",
            seconds=job.every_s,
            id=job.id,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
    return scheduler
