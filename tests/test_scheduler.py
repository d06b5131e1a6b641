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
