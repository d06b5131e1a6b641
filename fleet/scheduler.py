"""The controller's schedule: every periodic job in one place, run by APScheduler.

Each job is a plain function of (engine, settings, now) so it is tested with a fixed clock
and no scheduler. Add a job by adding one `Job` to `jobs()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from fleet.leader import Leadership
from fleet.memory import give_back
from fleet.settings import Settings

log = logging.getLogger(__name__)

JobFunc = Callable[..., None]  # (engine, settings, now) [, watching_since=]


@dataclass(frozen=True)
class Job:
    id: str
    func: JobFunc
    every_s: float
    # Judges silence: also given `watching_since`, when this process began leading, so a
    # controller back from its own outage does not take it for the sites' silence.
    judges_silence: bool = False


def jobs() -> list[Job]:
    """The schedule. Imported late so each domain module stays importable on its own."""
    from fleet.alerts.evaluation import evaluate_alerts
    from fleet.alerts.webhook import deliver_due
    from fleet.devices.liveness import mark_silent_devices
    from fleet.programme.evidence import check_classroom_evidence
    from fleet.programme.overview import check_overdue_milestones
    from fleet.reports.rollup import derive_usage, purge_samples
    from fleet.reports.scheduled import generate_due_reports

    return [
        Job("liveness", mark_silent_devices, 30, judges_silence=True),
        Job("alerts", evaluate_alerts, 30, judges_silence=True),
        # Every second, so the webhook's first retries (1 s, 2 s, 4 s) keep their pace.
        Job("webhook", deliver_due, 1),
        Job("programme_evidence", check_classroom_evidence, 60),
        Job("programme_overdue", check_overdue_milestones, 3600),
        Job("usage_rollup", derive_usage, 60),
        Job("sample_purge", purge_samples, 3600),
        # Hourly: a month's reports appear on the 1st (UTC) once FLEET_REPORT_DELAY_H passed.
        Job("scheduled_reports", generate_due_reports, 3600),
    ]


def _guarded(
    job: Job, engine: Engine, settings: Settings, leadership: Leadership | None = None
) -> Callable[[], None]:
    started = datetime.now(UTC)

    def run() -> None:
        if leadership is not None and not leadership.hold():
            return
        try:
            if job.judges_silence:
                since = leadership.since if leadership is not None else started
                job.func(engine, settings, datetime.now(UTC), watching_since=since)
            else:
                job.func(engine, settings, datetime.now(UTC))
        except Exception:  # one failing run must not stop the schedule
            log.exception("scheduled job %s failed; it runs again in %.0f s", job.id, job.every_s)
        if job.every_s >= 60:
            give_back()  # what a heavy job's peak took, rather than keep it for the next peak

    return run


def build_scheduler(
    engine: Engine,
    settings: Settings,
    publish: Callable[[str, bytes], None] | None = None,
    leadership: Leadership | None = None,
) -> BackgroundScheduler:
    """Every job asks `leadership` first, so with several controller processes only the
    holder of the scheduler lock runs them (see fleet.leader)."""
    scheduler = BackgroundScheduler(timezone=UTC)
    leadership = leadership or Leadership(engine)
    # The rollout tick's job is kept in the database: a restarted controller finds it there
    # and carries a running rollout on (its state is in the database too).
    from fleet.rollouts.schedule import add_tick_job

    add_tick_job(scheduler, engine, settings, publish, leadership)
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
