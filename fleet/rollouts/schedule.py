"""The rollout tick as an APScheduler job kept in the database (SQLAlchemyJobStore): a
restarted controller finds the job there and carries a running rollout on, its state being
in the database too. The job names a module function, since a closure cannot be stored."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from fleet.protocol import utcnow
from fleet.rollouts.engine import Publish, new_holder, tick
from fleet.settings import Settings

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger(__name__)

_runtime: dict[str, Any] = {}


def configure_tick(engine: Engine, settings: Settings, publish: Publish | None) -> str:
    """Set what `scheduled_tick` uses in this process. The job itself lives in the database
    (SQLAlchemyJobStore) and so names this module's function, not a closure."""
    holder = new_holder()
    _runtime.update(engine=engine, settings=settings, publish=publish, holder=holder)
    return holder


def scheduled_tick() -> None:
    if not _runtime:
        log.warning("rollout tick before configure_tick: skipped")
        return
    try:
        result = tick(
            _runtime["engine"],
            _runtime["settings"],
            utcnow(),
            _runtime["publish"],
            _runtime["holder"],
        )
    except Exception:  # one failing tick must not stop the schedule
        log.exception("rollout tick failed; it runs again at the next interval")
        return
    # Only changes are logged: which controller runs the ticks, and since when.
    holding = result is not None
    if holding != _runtime.get("holding", False):
        log.info("rollout tick lease %s by %s", "taken" if holding else "lost", _runtime["holder"])
    _runtime["holding"] = holding


def add_tick_job(
    scheduler: BaseScheduler, engine: Engine, settings: Settings, publish: Publish | None
) -> None:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    configure_tick(engine, settings, publish)
    scheduler.add_jobstore(SQLAlchemyJobStore(engine=engine), alias="rollouts")
    scheduler.add_job(
        "fleet.rollouts.schedule:scheduled_tick",
        "interval",
        seconds=settings.rollout_tick_s,
        id="rollout_tick",
        jobstore="rollouts",
        replace_existing=True,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
