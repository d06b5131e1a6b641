"""When alerts are judged: after each ingest group for the devices it touched, and on the
schedule for everything (the time-based kinds: unreachable for long, site offline, left on
after hours). Both read in chunks, observe with rules.py and write through reconcile.py, a
chunk a transaction; a row that raises is logged, counted and skipped (fleet.job_rows), and
every other device and site is judged."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import Gauge
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, func, select
from sqlmodel import SQLModel

from fleet.alerts.models import AlertKind, AlertState
from fleet.alerts.reconcile import ALERTS, Judgement, ReconcileResult, reconcile
from fleet.alerts.rules import SiteClock, observe, observe_site
from fleet.devices.liveness import read_agent_facts, read_device_facts
from fleet.devices.profile_book import poll_interval_s, profiles_in
from fleet.devices.registry import timetable_from_json
from fleet.devices.state import DeviceFacts, site_silence_threshold
from fleet.job_rows import each
from fleet.protocol.messages import Reading
from fleet.protocol.profiles import Profile

log = logging.getLogger(__name__)

DEVICES = SQLModel.metadata.tables["device"]
SITES = SQLModel.metadata.tables["site"]
AGENTS = SQLModel.metadata.tables["agent_status"]
IN_CHUNK = 500
JOB = "alerts"

OPEN_ALERTS = Gauge("fleet_alerts_open", "Alerts open or acknowledged, by kind", ["kind"])

AfterCommit = Callable[[Engine, list[str], datetime], None]


@dataclass(frozen=True)
class AlertRules:
    """The controller's side of judging alerts: the profiles devices are judged by, the one
    threshold no profile sets, and whether alert changes are notified."""

    # The firmware profiles (thresholds, poll intervals), re-read when a file there changes.
    profiles_dir: Path
    # A device unreachable this long in class hours raises an alert.
    unreachable_after: timedelta
    # Queue a webhook notification for every alert opened, escalated or resolved.
    notify: bool


def after_ingest(rules: AlertRules) -> AfterCommit:
    """The hook for `Ingest.after_commit`: judge the devices a group touched."""

    def run(engine: Engine, device_ids: list[str], now: datetime) -> None:
        if device_ids:
            evaluate_devices(engine, rules, now, device_ids)

    return run


def evaluate_alerts(
    engine: Engine, rules: AlertRules, now: datetime, watching_since: datetime | None = None
) -> None:
    """The scheduled job: every device and every site, then the gauge. `watching_since`:
    when this controller began running it (see fleet.devices.state.silence_unjudged)."""
    evaluate_devices(engine, rules, now)
    evaluate_sites(engine, rules, now, watching_since)
    with engine.connect() as conn:
        update_gauge(conn)


def evaluate_devices(
    engine: Engine, rules: AlertRules, now: datetime, device_ids: list[str] | None = None
) -> ReconcileResult:
    """Judge `device_ids` (every device when None) at `now` and write their alerts, a chunk
    of devices a transaction. Raises fleet.protocol.errors.ConfigErrors when a profile does
    not validate."""
    profiles = profiles_in(rules.profiles_dir)
    clocks = _site_clocks(engine)
    if device_ids is None:
        with engine.connect() as conn:
            device_ids = list(conn.execute(select(DEVICES.c.id)).scalars())
    result = ReconcileResult()

    def judge(chunk: list[str]) -> None:
        with engine.begin() as conn:
            judgements = [
                judgement
                for row in _device_rows(conn, chunk)
                if (judgement := _judge_device(row, profiles, clocks, rules, now)) is not None
            ]
            done = reconcile(conn, judgements, now, notify=rules.notify)
        _merge(result, done)  # once committed: a chunk taken again key by key counts once

    each(JOB, sorted(set(device_ids)), judge, chunk=IN_CHUNK)
    _log(result)
    return result


def evaluate_sites(
    engine: Engine, rules: AlertRules, now: datetime, watching_since: datetime | None = None
) -> ReconcileResult:
    """Judge every site's link at `now` and write the alerts, a chunk of sites a
    transaction. `watching_since`: when this controller began running the job (see
    fleet.devices.state.silence_unjudged)."""
    profiles = profiles_in(rules.profiles_dir)
    agents = read_agent_facts(engine, JOB)
    polls: dict[str, list[float]] = {}
    for device in read_device_facts(engine, JOB, lambda p: poll_interval_s(profiles, p)):
        polls.setdefault(device.site, []).append(device.poll_interval_s)
    with engine.connect() as conn:
        sites = list(conn.execute(select(SITES.c.code)).scalars())
        heard = set(conn.execute(select(AGENTS.c.site_code)).scalars())
    result = ReconcileResult()

    def judge(chunk: list[str]) -> None:
        judgements = []
        for site in chunk:
            if site in heard and site not in agents:
                continue  # its agent's row could not be read (counted): not "never heard"
            silence = site_silence_threshold(polls.get(site, []))
            seen = observe_site(agents.get(site), silence, now, watching_since=watching_since)
            # None: not judged yet, and its alerts stay as they are.
            judgements.append(Judgement(site, None, (seen,) if seen is not None else ()))
        with engine.begin() as conn:
            done = reconcile(conn, judgements, now, notify=rules.notify)
        _merge(result, done)

    each(JOB, sites, judge, chunk=IN_CHUNK)
    _log(result)
    return result


def update_gauge(conn: Connection) -> None:
    """Set the fleet_alerts_open gauge to the count of unresolved (open or acknowledged) alerts of
    each kind; a kind with none is set to 0."""
    counts: dict[str, int] = dict(
        conn.execute(
            select(ALERTS.c.kind, func.count())
            .where(ALERTS.c.state != AlertState.resolved.value)
            .group_by(ALERTS.c.kind)
        ).all()
    )
    for kind in AlertKind:
        OPEN_ALERTS.labels(kind.value).set(counts.get(kind.value, 0))


def _judge_device(
    row: Any,
    profiles: dict[str, Profile],
    clocks: dict[str, SiteClock],
    rules: AlertRules,
    now: datetime,
) -> Judgement | None:
    if row["retired_at"] is not None:
        return Judgement(row["site_code"], row["id"], (), gone=True)
    clock = clocks.get(row["site_code"])
    if clock is None:
        return None  # its site's clock could not be read (skipped and counted): not judged
    facts = DeviceFacts(
        row["id"],
        row["site_code"],
        row["state"],
        row["state_since"],
        row["last_seen_at"],
        poll_interval_s(profiles, row["profile"]),
    )
    observations = observe(
        facts,
        _reading(row),
        profiles.get(row["profile"]),
        clock,
        now,
        unreachable_after=rules.unreachable_after,
    )
    return Judgement(row["site_code"], row["id"], tuple(observations))


def _reading(row: Any) -> Reading | None:
    raw = row["last_reading"]
    if not raw:
        return None
    try:
        reading = Reading.model_validate(raw)
    except ValidationError:
        log.warning("device %s: stored last reading no longer validates; skipped", row["id"])
        return None
    if reading.firmware is None and row["firmware"] is not None:
        # Some profiles report firmware only now and then; the device row keeps the last one.
        reading = reading.model_copy(update={"firmware": row["firmware"]})
    return reading


def _device_rows(conn: Connection, device_ids: list[str]) -> list[Any]:
    columns = [
        DEVICES.c.id,
        DEVICES.c.site_code,
        DEVICES.c.profile,
        DEVICES.c.state,
        DEVICES.c.state_since,
        DEVICES.c.last_seen_at,
        DEVICES.c.last_reading,
        DEVICES.c.firmware,
        DEVICES.c.retired_at,
    ]
    return list(conn.execute(select(*columns).where(DEVICES.c.id.in_(device_ids))).mappings())


def _site_clocks(engine: Engine) -> dict[str, SiteClock]:
    """Every site's timetable and zone; a site whose timetable or zone cannot be read is
    skipped (and counted): its devices are not judged until it is fixed."""
    with engine.connect() as conn:
        codes = list(conn.execute(select(SITES.c.code)).scalars())

    def read(chunk: list[str]) -> list[tuple[str, SiteClock]]:
        query = select(SITES.c.code, SITES.c.timezone, SITES.c.timetable).where(
            SITES.c.code.in_(chunk)
        )
        with engine.connect() as conn:
            return [
                (code, SiteClock(timetable_from_json(timetable), ZoneInfo(tz)))
                for code, tz, timetable in conn.execute(query)
            ]

    return dict(each(JOB, codes, read, chunk=IN_CHUNK))


def _merge(into: ReconcileResult, result: ReconcileResult) -> None:
    into.opened += result.opened
    into.escalated += result.escalated
    into.resolved += result.resolved


def _log(result: ReconcileResult) -> None:
    if result.opened or result.resolved or result.escalated:
        log.info(
            "alerts: %d opened, %d escalated, %d resolved",
            len(result.opened),
            len(result.escalated),
            len(result.resolved),
        )
