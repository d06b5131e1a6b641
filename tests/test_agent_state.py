"""Agent-state messages judged by their own identity and time: a retained replay, a stale will
of an earlier boot or another client's leftover changes nothing; health arriving keeps a site
online; silence counts from the later of the agent's last message and the controller's start.

The rules as plain functions first, then through ingest into the real database.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.alerts.evaluation import AlertRules, evaluate_alerts
from fleet.alerts.models import Alert
from fleet.devices.agent_state import NO_BOOT, AgentWord, after, not_news
from fleet.devices.liveness import apply_silence
from fleet.ingest.pipeline import Ingest, OutcomeStatus
from fleet.models import AgentStatus, Device
from fleet.protocol.messages import AgentState, AgentStateValue
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.fixtures_db import RECEIVED, health, message, reading

T0 = RECEIVED
UPM = ["upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc1-pc", "upm-sc2-panel-1", "upm-sc2-projector"]
RULES = AlertRules(DEFAULT_PROFILES_DIR, unreachable_after=timedelta(minutes=10), notify=True)


def said(
    state: str, ts: datetime, *, boot: str = "boot-1", agent: str = "upm-agent-1"
) -> AgentState:
    return AgentState(
        state=AgentStateValue(state), agent_id=agent, version="1.0", boot_id=boot, ts=ts
    )


def word(
    state: str, ts: datetime, *, boot: str = "boot-1", agent: str = "upm-agent-1"
) -> AgentWord:
    return AgentWord(agent, boot, AgentStateValue(state), ts)


# --- the rules ------------------------------------------------------------------------------

# An agent's boot: its will is stamped when it connects, its "online" just after.
WILL = said("offline", T0)
ONLINE = said("online", T0 + timedelta(seconds=1))


def test_a_will_after_its_boots_online_is_news_though_stamped_earlier() -> None:
    assert not_news(None, ONLINE) is None
    online = after(None, ONLINE)
    assert not_news(online, WILL) is None
    offline = after(online, WILL)
    assert offline == word("offline", ONLINE.ts)  # the newest time heard is kept


def test_the_same_will_again_is_a_replay() -> None:
    offline = after(after(None, ONLINE), WILL)
    why = not_news(offline, WILL)
    assert why is not None and "replay of its will" in why


def test_the_same_online_again_is_a_replay_and_a_reconnect_is_news() -> None:
    online = after(None, ONLINE)
    assert "replay" in (not_news(online, ONLINE) or "")
    reconnect = said("online", T0 + timedelta(minutes=5))
    assert not_news(after(online, WILL), ONLINE) is not None  # redelivered after its will
    assert not_news(after(online, WILL), reconnect) is None
    # The link dropped again: the boot's will, byte for byte the first one, is news again.
    assert not_news(after(after(online, WILL), reconnect), WILL) is None


def test_an_earlier_boots_late_will_is_stale_and_a_later_boots_word_is_news() -> None:
    second = said("online", T0 + timedelta(minutes=2), boot="boot-2")
    online = after(after(None, ONLINE), second)
    why = not_news(online, WILL)
    assert why is not None and "stale" in why
    # A later boot that died before its "online" reached us: its will is news.
    later_boot = said("offline", T0 + timedelta(minutes=2), boot="boot-3")
    assert not_news(after(None, ONLINE), later_boot) is None
    assert not_news(after(after(None, ONLINE), WILL), second) is None


def test_another_clients_offline_is_not_the_sites() -> None:
    online = after(None, ONLINE)
    leftover = said("offline", T0 + timedelta(days=1), boot="x", agent="upm-agent-old")
    why = not_news(online, leftover)
    assert why is not None and "another client" in why


def test_a_state_brought_back_by_health_is_not_taken_offline_by_an_old_will() -> None:
    revived = AgentWord("upm-agent-1", NO_BOOT, AgentStateValue.online, ONLINE.ts)
    assert not_news(revived, WILL) is not None
    assert not_news(revived, said("online", T0 + timedelta(minutes=3))) is None


# --- through ingest -------------------------------------------------------------------------


def state_message(state: AgentState, received_at: datetime) -> Any:
    return message("fleet/v1/upm/agent/state", state.model_dump(mode="json"), received_at)


def agent_row(engine: Engine) -> AgentStatus:
    with Session(engine) as session:
        row = session.get(AgentStatus, "upm")
    assert row is not None
    return row


def devices(engine: Engine) -> dict[str, tuple[str, datetime | None, str]]:
    with Session(engine) as session:
        rows = session.exec(select(Device).where(Device.site_code == "upm")).all()
    return {d.id: (d.state, d.state_since, d.state_reason) for d in rows}


def alerts(engine: Engine) -> list[tuple[str, str]]:
    with Session(engine) as session:
        return [(a.kind, a.state) for a in session.exec(select(Alert).order_by(Alert.id))]


def test_a_replayed_will_moves_neither_offline_since_nor_the_alert(
    ingest: Ingest, registered: Engine
) -> None:
    """The field's example, in the database: the will stands retained, the controller
    restarts and gets it again. Nothing changes: the devices' "offline since", the agent's row,
    the open `site_offline` alert, and no second alert five minutes on."""
    ingest.handle(
        [
            state_message(ONLINE, T0),
            health("upm", [reading(d, T0) for d in UPM], received_at=T0),
        ]
    )
    died = T0 + timedelta(minutes=1)
    [stored] = ingest.handle([state_message(WILL, died)])
    assert stored.status == OutcomeStatus.stored
    evaluate_alerts(registered, RULES, died + timedelta(minutes=6))
    assert alerts(registered) == [("site_offline", "open")]
    before, row = devices(registered), agent_row(registered)
    assert {state for state, _, _ in before.values()} == {"site_offline"}

    restarted = died + timedelta(minutes=30)
    [replay] = ingest.handle([state_message(WILL, restarted)])
    assert replay.status == OutcomeStatus.duplicate and "replay of its will" in replay.detail
    assert devices(registered) == before
    assert agent_row(registered) == row
    for minutes in (0, 1, 6, 12):
        evaluate_alerts(
            registered, RULES, restarted + timedelta(minutes=minutes), watching_since=restarted
        )
    assert alerts(registered) == [("site_offline", "open")]


def test_health_keeps_a_site_online_whatever_another_client_left_retained(
    ingest: Ingest, registered: Engine
) -> None:
    ingest.handle([state_message(ONLINE, T0), health("upm", [reading(d, T0) for d in UPM])])
    leftover = said("offline", T0 + timedelta(hours=1), boot="x", agent="upm-agent-old")
    t = T0 + timedelta(minutes=1)
    [outcome] = ingest.handle([state_message(leftover, t)])
    assert outcome.status == OutcomeStatus.duplicate
    assert {state for state, _, _ in devices(registered).values()} == {"online"}

    # A will of the site's own agent whose health then keeps coming: the health wins.
    stray = said("offline", T0 + timedelta(hours=2), boot="boot-9")
    t2 = t + timedelta(minutes=1)
    ingest.handle(
        [
            state_message(stray, t2),
            health("upm", [reading(d, t2) for d in UPM], received_at=t2 + timedelta(seconds=1)),
        ]
    )
    assert agent_row(registered).state == "online"
    assert {state for state, _, _ in devices(registered).values()} == {"online"}
    for minutes in (1, 6):
        evaluate_alerts(registered, RULES, t2 + timedelta(minutes=minutes))
    assert [kind for kind, _ in alerts(registered) if kind == "site_offline"] == []
    # ...and that stray will, replayed, does not take the site offline again.
    [replay] = ingest.handle([state_message(stray, t2 + timedelta(minutes=2))])
    assert replay.status == OutcomeStatus.duplicate
    assert agent_row(registered).state == "online"


@pytest.mark.parametrize("dead_for", [timedelta(minutes=0), timedelta(hours=2)])
def test_silence_counts_from_the_later_of_the_last_message_and_the_restart(
    ingest: Ingest, registered: Engine, dead_for: timedelta
) -> None:
    """The agent died with no will fired (the broker lost it): its retained "online" stands.
    A restarted controller gets it again; it is no sign of life, so the site is called
    offline one silence threshold after the restart (upm's: 6 min), not one after the replay
    nor at once."""
    ingest.handle(
        [state_message(ONLINE, T0), health("upm", [reading(d, T0) for d in UPM], received_at=T0)]
    )
    restarted = T0 + timedelta(minutes=1) + dead_for
    [replay] = ingest.handle([state_message(ONLINE, restarted + timedelta(seconds=20))])
    assert replay.status == OutcomeStatus.duplicate
    assert agent_row(registered).last_message_at == T0

    quiet = restarted + timedelta(minutes=6)
    assert apply_silence(registered, DEFAULT_PROFILES_DIR, quiet, restarted) == []
    later = quiet + timedelta(seconds=30)
    changes = apply_silence(registered, DEFAULT_PROFILES_DIR, later, restarted)
    assert {c.device for c in changes} == set(UPM)
    assert all("last heard at 2025-03-03 12:00:00Z" in c.reason for c in changes)
