"""The scheduled job that turns silence into device state: a silent site agent makes its
devices `site_offline`, a device its live agent no longer reports becomes `unreachable`.
The decisions are fleet.devices.state.silence_changes; this module only reads and writes rows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, literal, select
from sqlmodel import SQLModel

from fleet.devices.profile_book import poll_interval_s, profiles_in
from fleet.devices.state import AgentFacts, DeviceFacts, StateChange, silence_changes
from fleet.models import UtcDateTime

log = logging.getLogger(__name__)

DEVICES = SQLModel.metadata.tables["device"]
AGENTS = SQLModel.metadata.tables["agent_status"]

PollOf = Callable[[str], float]  # profile id -> poll interval (s)


def mark_silent_devices(
    engine: Engine, profiles_dir: Path, now: datetime, watching_since: datetime | None = None
) -> None:
    """The scheduled job; `watching_since`: when this controller began running it."""
    apply_silence(engine, profiles_dir, now, watching_since)


def apply_silence(
    engine: Engine, profiles_dir: Path, now: datetime, watching_since: datetime | None = None
) -> list[StateChange]:
    """Judge every device's silence at `now` (each by its profile's poll interval, read from
    `profiles_dir`) and write the state changes; returns them. Raises
    fleet.protocol.errors.ConfigErrors when a profile does not validate."""
    profiles = profiles_in(profiles_dir)
    with engine.begin() as conn:
        agents = load_agent_facts(conn)
        devices = load_device_facts(conn, lambda profile: poll_interval_s(profiles, profile))
        changes = silence_changes(agents, devices, now, watching_since)
        apply_changes(conn, changes, devices, now)
    for change in changes:
        log.info("device %s is now %s: %s", change.device, change.state.value, change.reason)
    return changes


def load_agent_facts(conn: Connection) -> dict[str, AgentFacts]:
    query = select(
        AGENTS.c.site_code,
        AGENTS.c.agent_id,
        AGENTS.c.state,
        AGENTS.c.received_at,
        AGENTS.c.last_message_at,
    )
    return {row[0]: AgentFacts(*row) for row in conn.execute(query)}


def load_device_facts(conn: Connection, poll_of: PollOf) -> list[DeviceFacts]:
    query = select(
        DEVICES.c.id,
        DEVICES.c.site_code,
        DEVICES.c.state,
        DEVICES.c.state_since,
        DEVICES.c.last_seen_at,
        DEVICES.c.profile,
    ).where(DEVICES.c.retired_at.is_(None))
    return [
        DeviceFacts(id_, site, state, since, seen, poll_of(profile))
        for id_, site, state, since, seen, profile in conn.execute(query)
    ]


def apply_changes(
    conn: Connection, changes: Iterable[StateChange], judged: list[DeviceFacts], now: datetime
) -> None:
    seen = {d.id: d.last_seen_at for d in judged}
    rows = [
        {"b_id": c.device, "b_state": c.state.value, "b_reason": c.reason, "b_seen": seen[c.device]}
        for c in changes
    ]
    if not rows:
        return
    # Only if no reading came in between our read and this write: a newer reading wins.
    stmt = (
        DEVICES.update()
        .where(
            DEVICES.c.id == bindparam("b_id"),
            DEVICES.c.last_seen_at.is_not_distinct_from(bindparam("b_seen", type_=UtcDateTime())),
        )
        .values(
            state=bindparam("b_state"),
            state_reason=bindparam("b_reason"),
            state_since=literal(now, UtcDateTime()),
        )
    )
    conn.execute(stmt, rows)
