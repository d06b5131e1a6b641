"""When alerts are judged: after each ingest group for the devices it touched, and on the
schedule for everything (the time-based kinds: unreachable for long, site offline, left on
after hours). Both read in bulk, judge with rules.py and write through reconcile.py."""

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
from fleet.alerts.rules import (
    DEVICE_KINDS,
    SITE_KINDS,
    SiteClock,
    evaluate,
    evaluate_site,
    unjudged_kinds,
)
from fleet.devices.liveness import load_agent_facts, load_device_facts
from fleet.devices.profile_book import poll_interval_s, profiles_in
from fleet.devices.registry import timetable_from_json
from fleet.devices.state import DeviceFacts, site_silence_threshold
from fleet.protocol.messages import Reading
from fleet.protocol.profiles import Profile

log = logging.getLogger(__name__)

DEVICES = SQLModel.metadata.tables["device"]
SITES = SQLModel.metadata.tables["site"]
IN_CHUNK = 500

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
    """Judge `device_ids` (every device when None) at `now` and write the alerts in one
    transaction. Raises fleet.protocol.errors.ConfigErrors when a profile does not validate."""
    profiles = profiles_in(rules.profiles_dir)
    with engine.begin() as conn:
        clocks = _site_clocks(conn)
        judgements = []
        for row in _device_rows(conn, device_ids):
            judgements.append(_judge_device(row, profiles, clocks, rules.unreachable_after, now))
        result = reconcile(conn, judgements, now, notify=rules.notify)
    _log(result)
    return result


def evaluate_sites(
    engine: Engine, rules: AlertRules, now: datetime, watching_since: datetime | None = None
) -> ReconcileResult:
    """Judge every site's link at `now` and write the alerts in one transaction.
    `watching_since`: when this controller began running the job (see
    fleet.devices.state.silence_unjudged)."""
    profiles = profiles_in(rules.profiles_dir)
    with engine.begin() as conn:
        agents = load_agent_facts(conn)
        polls: dict[str, list[float]] = {}
        for device in load_device_facts(conn, lambda p: poll_interval_s(profiles, p)):
            polls.setdefault(device.site, []).append(device.poll_interval_s)
        judgements = []
        for site in conn.execute(select(SITES.c.code)).scalars():
            silence = site_silence_threshold(polls.get(site, []))
            findings = evaluate_site(agents.get(site), silence, now, watching_since=watching_since)
            if findings is None:  # not yet judged: its alerts stay as they are
                judgements.append(Judgement(site, None, frozenset(), frozenset()))
            else:
                judgements.append(Judgement(site, None, SITE_KINDS, frozenset(findings)))
        result = reconcile(conn, judgements, now, notify=rules.notify)
    _log(result)
    return result


def update_gauge(conn: Connection) -> None:
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
    unreachable_after: timedelta,
    now: datetime,
) -> Judgement:
    if row["retired_at"] is not None:
        return Judgement(row["site_code"], row["id"], DEVICE_KINDS, frozenset())
    facts = DeviceFacts(
        row["id"],
        row["site_code"],
        row["state"],
        row["state_since"],
        row["last_seen_at"],
        poll_interval_s(profiles, row["profile"]),
    )
    reading = _reading(row)
    clock = clocks.get(row["site_code"]) or SiteClock(timetable_from_json({}), ZoneInfo("UTC"))
    findings = evaluate(
        facts,
        reading,
        profiles.get(row["profile"]),
        clock,
        now,
        unreachable_after=unreachable_after,
    )
    judged = DEVICE_KINDS - unjudged_kinds(facts, reading, now)
    return Judgement(row["site_code"], row["id"], frozenset(judged), frozenset(findings))


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


def _device_rows(conn: Connection, device_ids: list[str] | None) -> list[Any]:
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
    if device_ids is None:
        return list(conn.execute(select(*columns)).mappings())
    unique = sorted(set(device_ids))
    rows: list[Any] = []
    for start in range(0, len(unique), IN_CHUNK):
        chunk = unique[start : start + IN_CHUNK]
        rows += conn.execute(select(*columns).where(DEVICES.c.id.in_(chunk))).mappings()
    return rows


def _site_clocks(conn: Connection) -> dict[str, SiteClock]:
    query = select(SITES.c.code, SITES.c.timezone, SITES.c.timetable)
    return {
        code: SiteClock(timetable_from_json(timetable), ZoneInfo(tz))
        for code, tz, timetable in conn.execute(query)
    }


def _log(result: ReconcileResult) -> None:
    if result.opened or result.resolved or result.escalated:
        log.info(
            "alerts: %d opened, %d escalated, %d resolved",
            len(result.opened),
            len(result.escalated),
            len(result.resolved),
        )
