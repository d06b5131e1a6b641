"""The controller's schedule: every periodic job in one place, run by APScheduler.

Each job is a plain function of the engine, the values it needs and `now`, so it is tested
with a fixed clock, no scheduler and no `Settings`; `jobs()` binds those values from the
settings. Add a job by adding one `Job` to `jobs()`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job as ScheduledJob
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import Gauge
from sqlalchemy import Engine

from fleet.leader import Leadership
from fleet.memory import give_back
from fleet.settings import Settings

log = logging.getLogger(__name__)

# The clock of each job's last run that finished: an alert on its age catches a job that
# keeps failing, and a test awaits a run that began after what it did.
LAST_SUCCESS = Gauge(
    "fleet_job_last_success_timestamp_seconds",
    "Unix time at which the last run of each scheduled job that finished without raising began",
    ["job"],
)

# Called as func(engine=..., now=...) [, watching_since=...]: by keyword, so that jobs() can
# bind the job's other values with functools.partial whatever their place in its signature.
JobFunc = Callable[..., None]


@dataclass(frozen=True)
class Job:
    """One periodic job of the schedule: its id (also the `job` label of its metrics), the function
    it runs, and how often, in seconds."""

    id: str
    func: JobFunc
    every_s: float
    # Judges silence: also given `watching_since`, when this process began leading, so a
    # controller back from its own outage does not take it for the sites' silence.
    judges_silence: bool = False


def jobs(settings: Settings) -> list[Job]:
    """The schedule, each job bound to the values it takes from `settings`. Imported late so
    each domain module stays importable on its own."""
    from fleet.alerts.evaluation import evaluate_alerts
    from fleet.alerts.mail import deliver_due as deliver_mail
    from fleet.alerts.notices import notify_due
    from fleet.alerts.webhook import deliver_due
    from fleet.devices.liveness import mark_silent_devices
    from fleet.programme.evidence import check_classroom_evidence
    from fleet.programme.overview import check_overdue_milestones
    from fleet.reports.rollup import derive_usage, purge_samples
    from fleet.reports.scheduled import generate_due_reports
    from fleet.retention import apply_retention

    profiles = settings.profiles_dir
    alerts = settings.alert_rules()
    retention = timedelta(days=settings.sample_retention_days)
    return [
        Job(
            "liveness",
            partial(mark_silent_devices, profiles_dir=profiles),
            settings.liveness_every_s,
            judges_silence=True,
        ),
        Job(
            "alerts",
            partial(evaluate_alerts, rules=alerts),
            settings.alerts_every_s,
            judges_silence=True,
        ),
        # Every second, so the webhook's first retries (1 s, 2 s, 4 s) keep their pace.
        Job("webhook", partial(deliver_due, webhook=settings.webhook()), 1),
        Job(
            "notices", partial(notify_due, policy=settings.notice_policy()), settings.notice_tick_s
        ),
        Job("email", partial(deliver_mail, mailer=settings.mailer()), 1),
        Job("programme_evidence", partial(check_classroom_evidence, notify=alerts.notify), 60),
        Job("programme_overdue", partial(check_overdue_milestones, notify=alerts.notify), 3600),
        Job("usage_rollup", partial(derive_usage, profiles_dir=profiles), 60),
        Job("sample_purge", partial(purge_samples, retention=retention), 3600),
        Job("retention", partial(apply_retention, rules=settings.retention_rules()), 3600),
        # Hourly: a month's reports appear on the 1st (UTC) once FLEET_REPORT_DELAY_H passed.
        Job(
            "scheduled_reports",
            partial(generate_due_reports, schedule=settings.report_schedule()),
            3600,
        ),
    ]


def _guarded(job: Job, engine: Engine, leadership: Leadership | None = None) -> Callable[[], None]:
    started = datetime.now(UTC)

    def run() -> None:
        if leadership is not None and not leadership.hold():
            return
        now = datetime.now(UTC)
        try:
            if job.judges_silence:
                since = leadership.since if leadership is not None else started
                job.func(engine=engine, now=now, watching_since=since)
            else:
                job.func(engine=engine, now=now)
            LAST_SUCCESS.labels(job.id).set(now.timestamp())
        except Exception:  # one failing run must not stop the schedule
            log.exception("scheduled job %s failed; it runs again in %.0f s", job.id, job.every_s)
        if job.every_s >= 60:
            give_back()  # what a heavy job's peak took, rather than keep it for the next peak

    return run


class ClosingThreadPoolExecutor(ThreadPoolExecutor):
    """APScheduler 3's thread-pool executor, closed to new runs before its pool shuts.

    `BaseScheduler.shutdown` marks the scheduler stopped and shuts its executors, but a pass of
    the scheduler thread's `_process_jobs` that began before it (it checks only for a pause,
    then waits for the job stores' lock that shutdown holds) submits the jobs it found due once
    shutdown lets go; the shut pool raises RuntimeError, which APScheduler logs as an error with
    its traceback (agronholm/apscheduler#285; still so in 3.11). A run that falls due as the
    controller stops is dropped here, logged at debug: its next run is the next controller's.
    """

    def __init__(self, max_workers: int = 10) -> None:
        super().__init__(max_workers)
        self._closing = threading.Lock()
        self._closed = False

    def submit_job(self, job: ScheduledJob, run_times: Sequence[datetime]) -> None:
        """As APScheduler's, except that once `shutdown` began the run is dropped."""
        # Held across the submission: shutdown cannot close the pool between check and submit.
        with self._closing:
            if self._closed:
                log.debug("scheduler stopping: %s not run", job.id)
                return
            super().submit_job(job, run_times)

    def shutdown(self, wait: bool = True) -> None:
        """Refuses new runs, then shuts the pool (waiting for the running ones if `wait`)."""
        with self._closing:
            self._closed = True
        super().shutdown(wait)


def build_scheduler(
    engine: Engine,
    settings: Settings,
    publish: Callable[[str, bytes], None] | None = None,
    leadership: Leadership | None = None,
    publish_retained: Callable[[str, bytes], None] | None = None,
) -> BackgroundScheduler:
    """Every job asks `leadership` first, so with several controller processes only the
    holder of the scheduler lock runs them (see fleet.leader)."""
    scheduler = BackgroundScheduler(
        timezone=UTC, executors={"default": ClosingThreadPoolExecutor()}
    )
    leadership = leadership or Leadership(engine)
    # The rollout tick's job is kept in the database: a restarted controller finds it there
    # and carries a running rollout on (its state is in the database too).
    from fleet.rollouts.schedule import add_tick_job

    delivery = settings.firmware_delivery()
    add_tick_job(
        scheduler,
        engine,
        delivery,
        publish,
        leadership,
        settings.rollout_tick_s,
        publish_retained,
    )
    from fleet.commands.schedules import run_power_schedules

    # Its commands go out on the scheduler's MQTT link, which only this function is given.
    schedule_job = Job(
        "power_schedules",
        partial(run_power_schedules, publish=publish, topic_root=settings.topic_root),
        settings.power_schedule_s,
    )
    for job in [*jobs(settings), schedule_job]:
        scheduler.add_job(
            _guarded(job, engine, leadership),
            "interval",
            seconds=job.every_s,
            id=job.id,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
    return scheduler
