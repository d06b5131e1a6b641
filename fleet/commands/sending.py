"""Power and input commands: sent to the site agents, one command per device so that each
has its own state and answer, then judged by what comes back.

- `send`: a row per device (state `sent`), each command published on its site's cmd topic,
  then the site's word (fleet/rollouts/word.py) issued after them, so the agent starts them
  at once (a command reaches an agent only with the controller's word behind it).
- `apply_ack`: the agent's ack gives the device's own answer: `done` or `failed` (or
  `expired`, when the agent got it too late).
- `settle`: a `done` command is confirmed by the first reading after the answer that shows
  the device as asked; a `sent` one the agent never answered is `expired` past its expiry.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from fleet.commands.models import DeviceCommand
from fleet.models import Device
from fleet.protocol.commands import InputArgs, PowerArgs
from fleet.protocol.messages import Command, CommandKind, Topics, utcnow
from fleet.rollouts.word import word_for

log = logging.getLogger(__name__)

Publish = Callable[..., None]
# A power or input command not started within this long is not wanted any more.
EXPIRES_AFTER = timedelta(minutes=5)
# What a reading's power says, for each power command.
CONFIRMS = {"on": {"on", "warming"}, "off": {"off", "standby", "cooling"}}


class NotSent(RuntimeError):
    """The controller has no link to the broker: nothing was sent."""


def send(
    session: Session,
    publish: Publish | None,
    topic_root: str,
    devices: list[Device],
    kind: CommandKind,
    value: str,
    requested_by: str,
    reason: str,
    now: datetime,
) -> list[DeviceCommand]:
    """Send `kind` (power or input) with `value` to each device; returns the rows, each
    `sent`, or `failed` with the reason when it could not be published (`publish` None: this
    controller has no MQTT link)."""
    args = PowerArgs(power=value) if kind == CommandKind.power else InputArgs(input=value)
    rows = [
        DeviceCommand(
            # Named after its row id once flushed; until then unique all the same.
            cmd_id=f"new-{uuid.uuid4().hex}",
            campaign="pending",
            device_id=d.id,
            site_code=d.site_code,
            kind=kind.value,
            value=value,
            requested_by=requested_by,
            reason=reason,
            created_at=now,
            expires_at=now + EXPIRES_AFTER,
            updated_at=now,
        )
        for d in devices
    ]
    session.add_all(rows)
    session.flush()
    campaign = f"{kind.value}-{rows[0].id}"
    for row in rows:
        row.cmd_id, row.campaign = f"{kind.value[0]}{row.id}-{row.device_id}", campaign
    session.commit()
    topics = Topics(topic_root)
    for row in rows:
        command = Command(
            cmd_id=row.cmd_id,
            kind=kind,
            site=row.site_code,
            issued_at=now,
            campaign=campaign,
            expires_at=row.expires_at,
            devices=[row.device_id],
            args=args.model_dump(),
        )
        try:
            if publish is None:
                raise NotSent("this controller has no MQTT link: send it from one with ingest")
            publish(topics.cmd(row.site_code), command.to_json())
        except Exception as exc:
            row.state, row.answer = "failed", f"not sent: {exc}"
            row.updated_at = now
            session.add(row)
    # The word after the commands: issued after them, so each agent starts its own at once.
    for site in sorted({r.site_code for r in rows if r.state == "sent"}):
        word = word_for(session, site, max(utcnow(), now + timedelta(milliseconds=1)))
        try:
            assert publish is not None  # a row is sent only through it
            publish(topics.cmd(site), word.to_json(), retain=True)
        except Exception as exc:
            log.warning("could not publish the word to %s (%s): next rollout tick", site, exc)
    session.commit()
    return rows


def apply_ack(session: Session, site: str, body: dict[str, Any], now: datetime) -> int:
    """An agent's ack, from `site`, of a power or input command; returns 1 if it changed a
    row. An ack of another site's command changes nothing: command ids can be guessed, and a
    site speaks for its own devices only."""
    row = session.exec(
        select(DeviceCommand).where(DeviceCommand.cmd_id == body.get("cmd_id"))
    ).first()
    if row is None or row.state != "sent" or row.site_code != site:
        return 0
    message = str(body.get("message") or "")
    answer = message.split(": ", 1)[1] if message.startswith(f"{row.device_id}: ") else message
    if body.get("ok"):
        row.state = "done"
    elif message.startswith(("expired", "cancelled")):
        row.state = "expired"
    else:
        row.state = "failed"
    row.answer, row.answered_at, row.updated_at = answer[:2000], now, now
    session.add(row)
    return 1


def settle(session: Session, now: datetime) -> int:
    """Expire what no agent answered in time; confirm what a reading taken after the command
    shows done (a power command: the power state; an input command: the input)."""
    changed = 0
    for row in session.exec(
        select(DeviceCommand).where(
            DeviceCommand.state == "sent", col(DeviceCommand.expires_at) < now
        )
    ):
        row.state, row.updated_at = "expired", now
        row.answer = row.answer or "no answer from the site agent before the command expired"
        session.add(row)
        changed += 1
    open_rows = session.exec(
        select(DeviceCommand).where(
            DeviceCommand.state == "done", col(DeviceCommand.confirmed_at).is_(None)
        )
    ).all()
    devices = {
        d.id: d
        for d in session.exec(
            select(Device).where(col(Device.id).in_({r.device_id for r in open_rows}))
        )
    }
    for row in open_rows:
        device = devices.get(row.device_id)
        if device is None or device.last_seen_at is None:
            continue
        if device.last_seen_at <= row.created_at:
            continue  # a reading from before the command
        if row.kind == "power":
            shown = device.power in CONFIRMS.get(row.value, set())
        else:
            shown = (device.last_reading or {}).get("input") == row.value
        if shown:
            row.confirmed_at, row.updated_at = device.last_seen_at, now
            session.add(row)
            changed += 1
    return changed
