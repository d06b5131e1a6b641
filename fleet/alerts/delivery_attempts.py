"""The life of one row of a notification outbox (`webhook_delivery`, `email_delivery`): due
rows are read, each attempt is recorded on its row, and a row ends delivered or given up.
Both outboxes keep the same columns for this (`attempts`, `next_attempt_at`, `delivered_at`,
`failed_at`, `last_error`), so one set of steps serves both, and a restart loses nothing:
what is due is whatever the table says is due."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, Table, select

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 2000
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 3600.0


def retry_delay(attempts: int) -> timedelta:
    """After the n-th failed attempt: 1 s, 2 s, 4 s ... capped at an hour."""
    return timedelta(seconds=min(FIRST_RETRY_S * 2 ** (attempts - 1), MAX_RETRY_S))


def due_rows(engine: Engine, table: Table, now: datetime, limit: int) -> list[int]:
    """The ids of `table`'s rows due at `now`, oldest due first, at most `limit`."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(table.c.id)
                .where(table.c.next_attempt_at <= now)
                .order_by(table.c.next_attempt_at, table.c.id)
                .limit(limit)
            ).scalars()
        )


def record_delivered(
    engine: Engine, table: Table, row_id: int, attempts: int, now: datetime
) -> None:
    """The row's `attempts`-th attempt went through: it is done."""
    with engine.begin() as conn:
        conn.execute(
            table.update()
            .where(table.c.id == row_id)
            .values(attempts=attempts, delivered_at=now, next_attempt_at=None, last_error=None)
        )


def record_failure(
    engine: Engine,
    table: Table,
    row_id: int,
    attempts: int,
    error: str,
    now: datetime,
    *,
    max_attempts: int,
    what: str,
    fix: str,
) -> None:
    """The row's `attempts`-th attempt failed with `error`: retried after `retry_delay`, or,
    at `max_attempts`, given up and logged as an error naming `what` and the `fix`."""
    values: dict[str, object] = {"attempts": attempts, "last_error": error[:MAX_ERROR_CHARS]}
    if attempts >= max_attempts:
        values.update(next_attempt_at=None, failed_at=now)
        log.error(
            "%s given up after %d attempts: %s. %s, then set next_attempt_at on its %s row to "
            "send it again",
            what,
            attempts,
            error,
            fix,
            table.name,
        )
    else:
        values["next_attempt_at"] = now + retry_delay(attempts)
        log.warning("%s attempt %d failed: %s", what, attempts, error)
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == row_id).values(**values))


def record_unsendable(
    engine: Engine, table: Table, row_id: int, exc: Exception, now: datetime
) -> None:
    """A row that cannot even be read or sent: given up at once, so it holds up no other."""
    with engine.begin() as conn:
        conn.execute(
            table.update()
            .where(table.c.id == row_id)
            .values(
                next_attempt_at=None,
                failed_at=now,
                last_error=f"cannot be sent: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS],
            )
        )


def attempt(
    engine: Engine,
    table: Table,
    row_id: int,
    attempts: int,
    now: datetime,
    deliver: Callable[[], None],
    failure: type[Exception],
    *,
    max_attempts: int,
    what: str,
    fix: str,
) -> bool:
    """Run `deliver` as the row's `attempts`-th attempt and record how it went: True when it
    went through; False when it raised `failure` (recorded by `record_failure`). Any other
    exception propagates, for the job's per-row handling (fleet.job_rows)."""
    try:
        deliver()
    except failure as exc:
        record_failure(
            engine,
            table,
            row_id,
            attempts,
            str(exc),
            now,
            max_attempts=max_attempts,
            what=what,
            fix=fix,
        )
        return False
    record_delivered(engine, table, row_id, attempts, now)
    return True
