"""A command's ack counts only from the site whose command it is: command ids can be
guessed (`p<row>-<device>`), and one site's broker login must not settle another site's
power command or rollout device."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from fleet.commands.models import DeviceCommand
from fleet.models import AgentMessage
from fleet.rollouts.agent_reports import apply_reports
from fleet.rollouts.models import TickLease

T = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def _command(session: Session) -> DeviceCommand:
    row = DeviceCommand(
        cmd_id="p1-upm-sc2-projector",
        campaign="power-1",
        device_id="upm-sc2-projector",
        site_code="upm",
        kind="power",
        value="off",
        requested_by="ops",
        reason="left on after class",
        created_at=T,
        expires_at=T + timedelta(minutes=5),
        updated_at=T,
    )
    session.add(row)
    session.commit()
    return row


def _ack(site: str, ok: bool, message: str) -> AgentMessage:
    body = {"cmd_id": "p1-upm-sc2-projector", "ok": ok, "message": message, "site": site}
    return AgentMessage(site_code=site, kind="cmd_ack", ts=T, received_at=T, body=body)


def test_another_sites_ack_settles_nothing_and_the_own_sites_does(registered: Engine) -> None:
    with Session(registered) as session:
        row = _command(session)
        session.add(_ack("usthb", False, "upm-sc2-projector: POWR 0: ERR4"))
        session.commit()
        lease = TickLease(name="test", holder="test", expires_at=T)
        assert apply_reports(session, lease, T + timedelta(seconds=1)) == 0
        session.commit()
        session.refresh(row)
        assert (row.state, row.answer) == ("sent", "")

        session.add(_ack("upm", True, "upm-sc2-projector: POWR 0: OK"))
        session.commit()
        assert apply_reports(session, lease, T + timedelta(seconds=2)) == 1
        session.commit()
        session.refresh(row)
        assert (row.state, row.answer) == ("done", "POWR 0: OK")
