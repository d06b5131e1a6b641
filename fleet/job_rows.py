"""Scheduled jobs take their rows a chunk at a time, and a row that raises costs only itself.

A job that reads every device in one query and judges them in one loop stops at the first row
it cannot handle (a timestamp no `datetime` holds, JSON that no longer parses, a timetable
that does not validate), and stays stopped: the row is still there at the next run. Jobs hand
their keys (device ids, site codes, report periods) to `each`, which does the work a chunk at
a time; a chunk that raises is done again key by key, and a key that raises on its own is
logged with the key and the reason, counted in `fleet_job_row_failures_total{job}`, and
skipped, while the other keys are done.

A database that is away or busy, or a deployment that is wrong (`DATABASE_FAULTS`), is no
row's fault: that error is raised, and the scheduler runs the job again at its next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from prometheus_client import Counter

from fleet.db import DATABASE_FAULTS

log = logging.getLogger(__name__)

K = TypeVar("K")
R = TypeVar("R")

ROW_FAILURES = Counter(
    "fleet_job_row_failures_total",
    "Rows (devices, sites, rooms, reports, deliveries) a scheduled job skipped because "
    "handling them raised, by job",
    ["job"],
)


def each(
    job: str,
    keys: Sequence[K],
    work: Callable[[list[K]], Iterable[R] | None],
    *,
    chunk: int = 200,
    on_skip: Callable[[K, Exception], None] | None = None,
    name: Callable[[K], object] = lambda key: key,
) -> list[R]:
    """Call `work` on `keys` `chunk` at a time and return what the calls gave, together.

    `work` must leave nothing behind when it raises (its own transaction, say), because a
    chunk that raises is done again one key at a time. A key that raises alone is skipped:
    logged with `job`, the key (as `name` gives it) and the reason, counted, and handed to
    `on_skip` (to mark it, so that it does not come first again). Raises only a DATABASE_FAULTS
    error."""
    out: list[R] = []
    for start in range(0, len(keys), max(chunk, 1)):
        part = list(keys[start : start + chunk])
        try:
            out.extend(work(part) or ())
            continue
        except DATABASE_FAULTS:
            raise
        except Exception as exc:
            if len(part) == 1:
                skip(job, part[0], exc, on_skip, name)
                continue
            log.warning("%s: a chunk of %d raised (%r); taking it key by key", job, len(part), exc)
        for key in part:
            try:
                out.extend(work([key]) or ())
            except DATABASE_FAULTS:
                raise
            except Exception as exc:
                skip(job, key, exc, on_skip, name)
    return out


def skip(
    job: str,
    key: K,
    exc: Exception,
    on_skip: Callable[[K, Exception], None] | None = None,
    name: Callable[[K], object] = lambda key: key,
) -> None:
    """Log and count one row a job could not handle."""
    ROW_FAILURES.labels(job).inc()
    log.error(
        "%s: skipped %s: %s: %s. The rest of the run goes on; fix or remove the row",
        job,
        name(key),
        type(exc).__name__,
        exc,
    )
    # The traceback only on asking: the row fails again at every run until it is fixed.
    log.debug("%s: %s skipped", job, name(key), exc_info=exc)
    if on_skip is not None:
        try:
            on_skip(key, exc)
        except DATABASE_FAULTS:
            raise
        except Exception:
            log.exception("%s: could not mark %s as skipped", job, key)
