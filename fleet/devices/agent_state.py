"""Whether an `agent/state` message is news, judged by its own identity and time (no I/O).

The broker sends a site's retained state again on every subscribe: each time the controller
starts or reconnects it gets the same will, or the same "online", that it has already
stored. Such a replay, like a stale state from an earlier boot or another client, must change
nothing: not the site's state, not when that state began, not its alerts.

An agent sets its will when it connects, so the will carries the boot's start as its `ts`,
older than the boot's own "online" (sent just after connecting). Hence the rules:

- a state from the agent's current boot: "offline" is news only while that boot is online
  (a will repeated is a replay); "online" only if newer than anything heard from the boot;
- a state from another boot of the same agent is news only if newer than anything heard;
- "offline" from an agent other than the one the site's state is about concerns that other
  client (an old install's will, a test tool), not the site; its "online" is news if newer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from fleet.protocol.messages import AgentState, AgentStateValue

# The boot of a state the agent's health, not its own word, brought back online: none of its
# boots' earlier messages can then be mistaken for this one's.
NO_BOOT = ""
# The `ts` of a row no state message has spoken for yet (the agent's health made it): any
# state message is newer.
NEVER_SAID = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class AgentWord:
    """What the controller holds of a site's agent: who it is, the state, and the newest
    `ts` heard from that agent's state messages (its clock, not ours)."""

    agent_id: str
    boot_id: str
    state: AgentStateValue
    ts: datetime


def not_news(stored: AgentWord | None, message: AgentState) -> str | None:
    """None when `message` is news against `stored`; otherwise why it changes nothing."""
    if stored is None:
        return None
    offline = message.state == AgentStateValue.offline
    if message.agent_id != stored.agent_id:
        if offline:
            return (
                f"offline from agent {message.agent_id}, not {stored.agent_id} whose state "
                "the site holds: a will left behind by another client"
            )
        return None if message.ts > stored.ts else _older(message, stored)
    if message.boot_id != stored.boot_id:
        return None if message.ts > stored.ts else _older(message, stored)
    if offline:
        if stored.state == AgentStateValue.online:
            return None  # the boot's will (stamped at its start) or its goodbye
        return f"boot {message.boot_id} is already offline: a replay of its will"
    if message.ts > stored.ts:
        return None
    return f"boot {message.boot_id} said online at {message.ts.isoformat()} already: a replay"


def after(stored: AgentWord | None, message: AgentState) -> AgentWord:
    """The word held once `message`, judged news, is applied."""
    newest = message.ts if stored is None else max(stored.ts, message.ts)
    return AgentWord(message.agent_id, message.boot_id, message.state, newest)


def _older(message: AgentState, stored: AgentWord) -> str:
    return (
        f"{message.state.value} from boot {message.boot_id} stamped {message.ts.isoformat()}, "
        f"not after {stored.ts.isoformat()} already heard: stale"
    )
