"""The rollout tick as an APScheduler job kept in the database (SQLAlchemyJobStore): a
restarted controller finds the job there and carries a running rollout on, its state being
in the database too. The job names a module function, since a closure cannot be stored.

Every controller process with a scheduler has the job; only the one holding the scheduler
lock (fleet.leader: a PostgreSQL advisory lock, a file lock on SQLite) runs the tick."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from fleet.leader import Leadership
from fleet.protocol.messages import utcnow
from fleet.rollouts.engine import FirmwareDelivery, Publish, tick

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger(__name__)

_runtime: dict[str, Any] = {}


def configure_tick(
    engine: Engine,
    delivery: FirmwareDelivery,
    publish: Publish | None,
    leadership: Leadership,
    publish_word: Publish | None = None,
) -> None:
    """Set what `scheduled_tick` uses in this process. The job itself lives in the database
    (SQLAlchemyJobStore) and so names this module's function, not a closure."""
    _runtime.clear()
    _runtime.update(
        engine=engine,
        delivery=delivery,
        publish=publish,
        leadership=leadership,
        publish_word=publish_word,
    )


def scheduled_tick() -> None:
    """The scheduled job: one rollout tick at the current time, run only by the process that holds
    the scheduler lock; a failing tick is logged, never raised."""
    if not _runtime:
        log.warning("rollout tick before configure_tick: skipped")
        return
    leadership: Leadership = _runtime["leadership"]
    leading = leadership.hold()
    # Only changes are logged: which controller runs the ticks, and since when.
    if leading != _runtime.get("leading", False):
        log.info("rollout ticks %s by %s", "started" if leading else "stopped", leadership.holder)
    _runtime["leading"] = leading
    if not leading:
        return
    try:
        tick(
            _runtime["engine"],
            _runtime["delivery"],
            utcnow(),
            _runtime["publish"],
            leadership.holder,
            _runtime.get("publish_word"),
        )
    except Exception:  # one failing tick must not stop the schedule
        log.exception("rollout tick failed; it runs again at the next interval")


def add_tick_job(
    scheduler: BaseScheduler,
    engine: Engine,
    delivery: FirmwareDelivery,
    publish: Publish | None,
    leadership: Leadership,
    every_s: float,
    publish_word: Publish | None = None,
) -> None:
    """Add the rollout tick, every `every_s` seconds, to `scheduler` (its job kept in the
    database), and configure this process to run it with these values."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    configure_tick(engine, delivery, publish, leadership, publish_word)
    scheduler.add_jobstore(SQLAlchemyJobStore(engine=engine), alias="rollouts")
    scheduler.add_job(
        "fleet.rollouts.schedule:scheduled_tick",
        "interval",
        seconds=every_s,
        id="rollout_tick",
        jobstore="rollouts",
        replace_existing=True,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
