"""The scheduled job that turns silence into device state: a silent site agent makes its
devices `site_offline`, a device its live agent no longer reports becomes `unreachable`.
The decisions are fleet.devices.state.silence_changes; this module only reads and writes rows,
each a chunk at a time with a per-row fallback (fleet.job_rows): a device or agent row that
cannot be read is skipped, and every other site is still judged."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, literal, select
from sqlmodel import SQLModel

from fleet.devices.profile_book import poll_interval_s, profiles_in
from fleet.devices.state import AgentFacts, DeviceFacts, StateChange, silence_changes
from fleet.job_rows import each
from fleet.models import UtcDateTime

log = logging.getLogger(__name__)

DEVICES = SQLModel.metadata.tables["device"]
AGENTS = SQLModel.metadata.tables["agent_status"]

PollOf = Callable[[str], float]  # profile id -> poll interval (s)
JOB = "liveness"


def mark_silent_devices(
    engine: Engine, profiles_dir: Path, now: datetime, watching_since: datetime | None = None
) -> None:
    """The scheduled job; `watching_since`: when this controller began running it."""
    apply_silence(engine, profiles_dir, now, watching_since)


def apply_silence(
    engine: Engine, profiles_dir: Path, now: datetime, watching_since: datetime | None = None
) -> list[StateChange]:
    """Judge every device's silence at `now` (each by its profile's poll interval, read from
    `profiles_dir`) and write the state changes; returns them. A row that cannot be read or
    written is logged, counted and skipped (fleet.job_rows). Raises
    fleet.protocol.errors.ConfigErrors when a profile does not validate."""
    profiles = profiles_in(profiles_dir)
    agents = read_agent_facts(engine, JOB)
    devices = read_device_facts(engine, JOB, lambda profile: poll_interval_s(profiles, profile))
    by_site: dict[str, list[DeviceFacts]] = {}
    for device in devices:
        by_site.setdefault(device.site, []).append(device)

    def judge(sites: list[str]) -> list[StateChange]:
        members = [d for site in sites for d in by_site[site]]
        return silence_changes(agents, members, now, watching_since)

    changes = each(JOB, sorted(by_site), judge, chunk=100)
    judged = {d.id: d for d in devices}

    def write(chunk: list[StateChange]) -> list[StateChange]:
        with engine.begin() as conn:
            apply_changes(conn, chunk, [judged[c.device] for c in chunk], now)
        return chunk

    written = each(JOB, changes, write, chunk=500)
    for change in written:
        log.info("device %s is now %s: %s", change.device, change.state.value, change.reason)
    return written


def read_agent_facts(engine: Engine, job: str) -> dict[str, AgentFacts]:
    """Every site's agent facts by site code; an agent row that cannot be read is skipped
    (its site is then judged as never heard) and counted under `job`."""
    with engine.connect() as conn:
        sites = list(conn.execute(select(AGENTS.c.site_code)).scalars())

    def read(chunk: list[str]) -> list[AgentFacts]:
        with engine.connect() as conn:
            return list(load_agent_facts(conn, chunk).values())

    return {facts.site: facts for facts in each(job, sites, read, chunk=1000)}


def read_device_facts(engine: Engine, job: str, poll_of: PollOf) -> list[DeviceFacts]:
    """Every device in service; a device row that cannot be read is skipped and counted
    under `job`."""
    with engine.connect() as conn:
        ids = list(
            conn.execute(select(DEVICES.c.id).where(DEVICES.c.retired_at.is_(None))).scalars()
        )

    def read(chunk: list[str]) -> list[DeviceFacts]:
        with engine.connect() as conn:
            return load_device_facts(conn, poll_of, chunk)

    return each(job, ids, read, chunk=1000)


def load_agent_facts(conn: Connection, sites: list[str] | None = None) -> dict[str, AgentFacts]:
    """The agents of `sites` (every site when None), by site code."""
    query = select(
        AGENTS.c.site_code,
        AGENTS.c.agent_id,
        AGENTS.c.state,
        AGENTS.c.received_at,
        AGENTS.c.last_message_at,
    )
    if sites is not None:
        query = query.where(AGENTS.c.site_code.in_(sites))
    return {row[0]: AgentFacts(*row) for row in conn.execute(query)}


def load_device_facts(
    conn: Connection, poll_of: PollOf, ids: list[str] | None = None
) -> list[DeviceFacts]:
    """The devices `ids` (every device in service when None)."""
    query = select(
        DEVICES.c.id,
        DEVICES.c.site_code,
        DEVICES.c.state,
        DEVICES.c.state_since,
        DEVICES.c.last_seen_at,
        DEVICES.c.profile,
    ).where(DEVICES.c.retired_at.is_(None))
    if ids is not None:
        query = query.where(DEVICES.c.id.in_(ids))
    return [
        DeviceFacts(id_, site, state, since, seen, poll_of(profile))
        for id_, site, state, since, seen, profile in conn.execute(query)
    ]


def apply_changes(
    conn: Connection, changes: Iterable[StateChange], judged: list[DeviceFacts], now: datetime
) -> None:
    """Write state changes from silence to the devices' rows in the caller's transaction,
    `state_since` set to `now`; a device that got a reading since `judged` was read is left to that
    reading."""
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
