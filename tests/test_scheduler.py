"""The schedule: `jobs()` binds each job's values from the settings, so the scheduler hands a
job only the engine and the clock (fleet.scheduler._guarded)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from fleet.scheduler import jobs
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
