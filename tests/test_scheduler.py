"""The schedule: `jobs()` binds each job's values from the settings, so the scheduler hands a
job only the engine and the clock (fleet.scheduler._guarded)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from fleet.scheduler import build_scheduler, jobs
from fleet.settings import Settings


def test_every_job_runs_given_only_the_engine_and_the_clock(
    registered: Engine, tmp_path: Path
) -> None:
    schedule = jobs(Settings(data_dir=tmp_path))
    assert len({job.id for job in schedule}) == len(schedule)
    now = datetime.now(UTC)
    for job in schedule:
        # As _guarded calls them; a missing or misnamed value raises TypeError here.
        if job.judges_silence:
            job.func(engine=registered, now=now, watching_since=now)
        else:
            job.func(engine=registered, now=now)


def test_a_finished_run_is_stamped_with_its_clock_and_a_failed_one_is_not(
    registered: Engine,
) -> None:
    from prometheus_client import REGISTRY

    from fleet.scheduler import Job, _guarded

    def stamp() -> float | None:
        return REGISTRY.get_sample_value(
            "fleet_job_last_success_timestamp_seconds", {"job": "probe"}
        )

    def fine(engine: Engine, now: datetime) -> None:
        pass

    def broken(engine: Engine, now: datetime) -> None:
        raise RuntimeError("a bug")

    before = datetime.now(UTC).timestamp()
    _guarded(Job("probe", fine, 60), registered)()
    first = stamp()
    assert first is not None and first >= before
    _guarded(Job("probe", broken, 60), registered)()  # logged, not raised
    assert stamp() == first


def test_a_run_falling_due_as_the_scheduler_stops_is_dropped_not_logged_as_an_error(
    registered: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """APScheduler's shutdown race (agronholm/apscheduler#285), played in its order: a pass of
    the scheduler thread over the due jobs that gets the job stores after shutdown shut the
    executors. Shutdown empties the in-memory store but not the database's, so the rollout tick
    is what such a pass finds due; with APScheduler's own thread pool it logs "Error submitting
    job" and a RuntimeError traceback, which the demo printed on Ctrl-C in a CI run."""
    scheduler = build_scheduler(registered, Settings(data_dir=tmp_path))
    scheduler.start(paused=True)  # its thread runs no job; the pass below is this test's
    scheduler.shutdown(wait=True)
    # Due now, in the store such a pass reads (modify_job before shutdown would wake the
    # scheduler's thread, which might make the pass itself, before the one awaited here).
    store = scheduler._lookup_jobstore("rollouts")
    tick = store.lookup_job("rollout_tick")
    assert tick is not None
    tick._modify(next_run_time=datetime.now(UTC))
    store.update_job(tick)
    caplog.set_level(logging.DEBUG, logger="fleet.scheduler")
    with caplog.at_level(logging.DEBUG, logger="apscheduler"):
        scheduler._process_jobs()  # the pass that began before shutdown and ends after it
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == []
    assert "scheduler stopping: rollout_tick not run" in caplog.messages
