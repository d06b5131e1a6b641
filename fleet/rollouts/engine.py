"""The rollout tick: read the agents' reports, ask `plan.next_actions` what to do for each
live rollout, write that down, then publish the commands.

Only the controller holding the scheduler lock calls `tick` (fleet.leader). Each tick is
one transaction that starts by claiming the tick's row (an UPDATE: SQLite's write lock, or
PostgreSQL's row lock, held until commit), so even a leader that lost its lock while a tick
ran cannot overlap a tick of the next leader.
Commands go out after the commit; one that cannot be published puts its device back to
pending, so nothing is marked sent that was not.

The agents' reports are applied by agent_reports.py; snapshot.py reads a rollout's rows
into the views plan.py judges and writes its marks back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, SQLModel, col, select

from fleet.commands.sending import settle as settle_commands
from fleet.devices.profile_book import profiles_in
from fleet.protocol.commands import campaign_of_rollout
from fleet.protocol.messages import Command, CommandKind, Topics
from fleet.protocol.profiles import Profile
from fleet.rollouts.agent_reports import apply_reports
from fleet.rollouts.artifacts import ArtifactError, ArtifactStore, agent_download_url
from fleet.rollouts.campaigns import policy_from_json
from fleet.rollouts.models import Rollout, RolloutDevice, TickLease
from fleet.rollouts.plan import (
    FINAL,
    DeviceUpdateState,
    MarkDevice,
    MoveRollout,
    Policy,
    RolloutState,
    Send,
    next_actions,
)
from fleet.rollouts.snapshot import apply_mark, next_window, read_rollout, site_calendar
from fleet.rollouts.windows import window_open
from fleet.rollouts.word import publish_words, unsettled_ended, words_due

log = logging.getLogger(__name__)

LEASE = "rollouts"
Publish = Callable[[str, bytes], None]
LIVE = (RolloutState.running.value, RolloutState.scheduled.value, RolloutState.paused.value)


@dataclass(frozen=True)
class FirmwareDelivery:
    """How the tick gets firmware to the sites: each release as its profile describes it,
    its file from the artifact store, the command under the MQTT topic root."""

    profiles_dir: Path
    artifacts: ArtifactStore
    topic_root: str


@dataclass
class TickResult:
    """What one rollout tick did, by `holder`: how many agents' reports changed a device, the
    commands sent, and the rollouts moved (id, new state, reason)."""

    holder: str
    reports: int = 0
    commands: list[Command] = field(default_factory=list)
    moves: list[tuple[int, str, str]] = field(default_factory=list)  # (rollout, state, reason)


def claim_tick(session: Session, holder: str, now: datetime) -> None:
    """Write who runs this tick and when, first thing in the tick's transaction: the row (or
    on SQLite the whole database) stays locked until commit, so ticks never overlap."""
    table = SQLModel.metadata.tables[TickLease.__tablename__]
    conn = session.connection()
    stmt = update(table).where(table.c.name == LEASE).values(holder=holder, expires_at=now)
    if conn.execute(stmt).rowcount == 1:
        return
    # The first tick ever: create the row; if another tick just did, this waits for its
    # lock and does nothing, and the UPDATE then claims the row.
    upsert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    first = upsert(table).values(name=LEASE, holder=holder, expires_at=now, cursor=0)
    conn.execute(first.on_conflict_do_nothing(index_elements=["name"]))
    conn.execute(stmt)


def tick(
    engine: Engine,
    delivery: FirmwareDelivery,
    now: datetime,
    publish: Publish | None,
    holder: str,
    publish_word: Publish | None = None,
) -> TickResult:
    """One tick at `now`, by `holder` (the controller holding the scheduler lock); `publish`
    (topic, payload) sends the commands, None when this controller has no MQTT link (the
    devices go back to pending). `publish_word` (retained) sends the controller's word to
    each site with commands in flight, before this tick's commands: the agents start a
    command only on a word issued after it (fleet.rollouts.word). Raises
    fleet.protocol.errors.ConfigErrors when a profile does not validate."""
    result = TickResult(holder)
    with Session(engine) as session:
        claim_tick(session, holder, now)
        profiles = profiles_in(delivery.profiles_dir)
        lease = session.get(TickLease, LEASE)
        assert lease is not None
        result.reports = apply_reports(session, lease, now)
        result.reports += settle_commands(session, now)
        for rollout in session.exec(select(Rollout).where(col(Rollout.state).in_(LIVE))).all():
            _advance(session, delivery.artifacts, profiles, rollout, now, result)
        for rollout in unsettled_ended(session):
            _advance(session, delivery.artifacts, profiles, rollout, now, result)
        session.commit()
        words = words_due(session, now)
    if publish_word is not None:
        publish_words(publish_word, delivery.topic_root, words)
    if result.commands:
        _publish(engine, delivery.topic_root, publish, result.commands, now)
    return result


def _advance(
    session: Session,
    store: ArtifactStore,
    profiles: dict[str, Profile],
    rollout: Rollout,
    now: datetime,
    result: TickResult,
) -> None:
    policy = policy_from_json(rollout.policy)
    rows, view = read_rollout(session, rollout, policy)
    open_cache: dict[str, bool] = {}
    next_cache: dict[str, datetime | None] = {}

    def is_open(site: str) -> bool:
        if site not in open_cache:
            timetable, tz = site_calendar(session, site)
            open_cache[site] = window_open(now, timetable, tz, policy.window)
        return open_cache[site]

    def opens(site: str) -> datetime | None:
        if site not in next_cache:
            next_cache[site] = next_window(session, rollout, site, now, policy=policy)
        return next_cache[site]

    actions = next_actions(view, now, is_open, opens)
    by_id = {r.device_id: r for r in rows}
    sends = [a for a in actions if isinstance(a, Send)]
    artifact: tuple[str, int] = ("", 0)
    if any(s.push for s in sends):
        found = _artifact_url(store, profiles, rollout, now, result, session)
        if found is None:
            return
        artifact = found
    for action in actions:
        if isinstance(action, MarkDevice):
            apply_mark(by_id[action.device_id], action, now)
            session.add(by_id[action.device_id])
        elif isinstance(action, MoveRollout):
            _move(rollout, action, now, result)
        else:
            row = by_id[action.device_id]
            _send(row, rollout, action, policy, artifact, now, result)
            session.add(row)
    session.add(rollout)


def _artifact_url(
    store: ArtifactStore,
    profiles: dict[str, Profile],
    rollout: Rollout,
    now: datetime,
    result: TickResult,
    session: Session,
) -> tuple[str, int] | None:
    """The artifact's URL for agents (the controller's endpoint, or the release's own http(s)
    URL) and its size, or None (and the rollout paused) when the file on disk is not the
    release's: a mismatched artifact is never pushed."""
    profile = profiles.get(rollout.profile)
    release = profile.release(rollout.release_version) if profile else None
    try:
        if release is None or release.sha256 != rollout.release_sha256:
            raise ArtifactError(
                f"release {rollout.release_version} of {rollout.profile} is gone from the "
                "profiles, or its SHA-256 changed since the rollout was made: start a new rollout"
            )
        url = agent_download_url(store, release)
    except ArtifactError as exc:
        _move(
            rollout, MoveRollout(RolloutState.paused, rollout.current_wave, str(exc)), now, result
        )
        rollout.pause_kind = "operator"
        session.add(rollout)
        return None
    return url, release.size


def _send(
    row: RolloutDevice,
    rollout: Rollout,
    action: Send,
    policy: Policy,
    artifact: tuple[str, int],
    now: datetime,
    result: TickResult,
) -> None:
    url, size = artifact
    row.attempts += 1
    row.cmd_id = f"r{rollout.id}-{row.device_id}-{row.attempts}"
    row.sent_at, row.next_try_at, row.updated_at = now, None, now
    row.state = DeviceUpdateState.sent.value
    if not action.push:
        row.message = f"watching for {row.method} to install {rollout.release_version}"
        return
    row.message = f"command {row.cmd_id} sent"
    assert rollout.id is not None
    result.commands.append(
        Command(
            cmd_id=row.cmd_id,
            kind=CommandKind.firmware_update,
            site=row.site_code,
            issued_at=now,
            campaign=campaign_of_rollout(rollout.id),
            # An agent away longer than the device timeout starts it no more: by then the
            # controller has timed the device out (and may have sent a new command).
            expires_at=now + timedelta(seconds=policy.device_timeout_s),
            devices=[row.device_id],
            args={
                "rollout_id": rollout.id,
                "profile": rollout.profile,
                "version": rollout.release_version,
                "sha256": rollout.release_sha256,
                "size": size,
                "url": url,
                "timeout_s": policy.device_timeout_s,
            },
        )
    )


def _move(rollout: Rollout, move: MoveRollout, now: datetime, result: TickResult) -> None:
    if move.state == RolloutState.paused:
        rollout.pause_kind = (
            "approval" if move.current_wave != rollout.current_wave else "threshold"
        )
    if move.state == RolloutState.running and rollout.started_at is None:
        rollout.started_at = now
    if move.state in (RolloutState.aborted, RolloutState.completed):
        rollout.finished_at = now
    rollout.state, rollout.current_wave, rollout.reason = (
        move.state.value,
        move.current_wave,
        move.reason,
    )
    rollout.updated_at = now
    assert rollout.id is not None
    result.moves.append((rollout.id, move.state.value, move.reason))
    log.info("rollout %s: %s (%s)", rollout.id, move.state.value, move.reason)


def _publish(
    engine: Engine,
    topic_root: str,
    publish: Publish | None,
    commands: list[Command],
    now: datetime,
) -> None:
    topics = Topics(topic_root)
    unsent = []
    for command in commands:
        try:
            if publish is None:
                raise ConnectionError("this controller has no MQTT link")
            publish(topics.cmd(command.site), command.to_json())
        except Exception as exc:  # the broker is down: the device goes back to pending
            log.warning(
                "could not publish %s (%s); it is sent again next tick", command.cmd_id, exc
            )
            unsent.append(command.cmd_id)
    if not unsent:
        return
    with Session(engine) as session:
        for row in session.exec(select(RolloutDevice).where(col(RolloutDevice.cmd_id).in_(unsent))):
            if row.state == DeviceUpdateState.sent.value:
                row.state, row.attempts, row.updated_at = (
                    DeviceUpdateState.pending.value,
                    row.attempts - 1,
                    now,
                )
                row.message = "the controller could not reach the broker; sent again next tick"
                session.add(row)
        session.commit()


def final_counts(rows: list[RolloutDevice]) -> dict[str, int]:
    """Devices by update state, plus `done`: how many reached a final state."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    counts["done"] = sum(counts.get(s.value, 0) for s in FINAL)
    return counts
