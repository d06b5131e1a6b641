"""The site agents' rows (`agent_status`) as one group of messages changes them.

A group's messages are taken in order of arrival against each site's row as it stands: an
`agent/state` message changes it only if it is news (fleet.devices.agent_state), so a retained
state the broker replays on every subscribe changes nothing, not even when the agent was last
heard from. A health batch is the agent alive: it is heard, and a site its row holds offline
is online again, whatever state another client left retained.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, case, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from fleet.devices.agent_state import NEVER_SAID, NO_BOOT, AgentWord, after, not_news
from fleet.devices.state import DeviceState, site_offline_reason
from fleet.models import UtcDateTime
from fleet.protocol.messages import AgentState, AgentStateValue

AGENTS: Table = SQLModel.metadata.tables["agent_status"]
DEVICES: Table = SQLModel.metadata.tables["device"]
IN_CHUNK = 500
# Order of arrival: (received_at, index in group); rows from earlier groups use index -1.
Arrival = tuple[datetime, int]


@dataclass
class _Row:
    word: AgentWord
    version: str
    received_at: datetime  # when its current state began, as the controller heard it
    last_message_at: datetime | None
    new: bool = False
    # Columns this group changed: only those are written, so that two ingest workers on the
    # same site (a shared subscription) do not undo each other's word with a stale copy.
    changed: set[str] = field(default_factory=set)

    def values(self, site: str) -> dict[str, Any]:
        return {
            "site_code": site,
            "agent_id": self.word.agent_id,
            "boot_id": self.word.boot_id,
            "state": self.word.state.value,
            "ts": self.word.ts,
            "version": self.version,
            "received_at": self.received_at,
            "last_message_at": self.last_message_at,
        }


class AgentRows:
    """The agents' rows of the sites a group touches, read once, changed message by message,
    written once. `offline` holds, for each site whose agent is offline, when that began (in
    arrival order): a reading that arrived before it does not bring a device back."""

    def __init__(self, conn: Connection, sites: set[str]) -> None:
        """Read the agent rows of `sites` (site codes) on `conn`, the group's connection."""
        self.conn = conn
        self.rows: dict[str, _Row] = {}
        for chunk in _chunks(sorted(sites)):
            query = select(
                AGENTS.c.site_code,
                AGENTS.c.agent_id,
                AGENTS.c.boot_id,
                AGENTS.c.state,
                AGENTS.c.ts,
                AGENTS.c.version,
                AGENTS.c.received_at,
                AGENTS.c.last_message_at,
            ).where(AGENTS.c.site_code.in_(chunk))
            for site, agent, boot, state, ts, version, received, last in conn.execute(query):
                word = AgentWord(agent, boot, AgentStateValue(state), ts)
                self.rows[site] = _Row(word, version, received, last)
        self.offline: dict[str, Arrival] = {
            site: (row.received_at, -1)
            for site, row in self.rows.items()
            if row.word.state == AgentStateValue.offline
        }
        self._went_offline: set[str] = set()

    def said(self, site: str, message: AgentState, arrival: Arrival) -> str | None:
        """Apply an `agent/state` message; returns why it changed nothing, or None."""
        row = self.rows.get(site)
        why = not_news(row.word if row else None, message)
        if why is not None:
            return why
        word = after(row.word if row else None, message)
        received_at = arrival[0]
        if row is None:
            row = self.rows[site] = _Row(word, message.version, received_at, None, new=True)
        changed = row.word.state != word.state
        row.word, row.version = word, message.version
        row.changed |= {"agent_id", "boot_id", "state", "ts", "version"}
        if changed or row.new:
            row.received_at = received_at
            row.changed.add("received_at")
        self._heard(row, received_at)
        if word.state == AgentStateValue.offline and (changed or row.new):
            self.offline[site] = arrival
            self._went_offline.add(site)
        elif word.state == AgentStateValue.online:
            self._online(site)
        return None

    def health(self, site: str, agent_id: str, arrival: Arrival) -> None:
        """A health batch from `agent_id` arrived: the agent is alive."""
        received_at = arrival[0]
        row = self.rows.get(site)
        if row is None:
            word = AgentWord(agent_id, NO_BOOT, AgentStateValue.online, NEVER_SAID)
            row = self.rows[site] = _Row(word, "", received_at, None, new=True)
        elif row.word.state == AgentStateValue.offline and arrival > self.offline.get(
            site, arrival
        ):
            # Sent after the offline: it is the agent's health that vouches now, no boot's
            # word, so no earlier boot's replayed will can take the site offline again.
            row.word = AgentWord(agent_id, NO_BOOT, AgentStateValue.online, row.word.ts)
            row.received_at = received_at
            row.changed |= {"agent_id", "boot_id", "state", "received_at"}
            self._online(site)
        self._heard(row, received_at)

    def write(self) -> None:
        """Write the rows the group changed, and put the devices of every site whose agent
        went offline (and stayed so) in `site_offline`."""
        insert = postgresql.insert if self.conn.dialect.name == "postgresql" else sqlite.insert
        for site, row in self.rows.items():
            if not (row.new or row.changed):
                continue
            values = row.values(site)
            stmt = insert(AGENTS).values(values)
            update = {k: v for k, v in values.items() if k in row.changed}
            self.conn.execute(stmt.on_conflict_do_update(index_elements=["site_code"], set_=update))
        for site in sorted(self._went_offline):
            row = self.rows[site]
            # The link is down, not the devices: never flap them all to unreachable.
            self.conn.execute(
                DEVICES.update()
                .where(DEVICES.c.site_code == site, DEVICES.c.retired_at.is_(None))
                .values(
                    state=DeviceState.site_offline.value,
                    state_reason=site_offline_reason(row.word.agent_id, row.received_at),
                    state_since=case(
                        (
                            DEVICES.c.state == DeviceState.site_offline.value,
                            DEVICES.c.state_since,
                        ),
                        else_=literal(row.received_at, UtcDateTime()),
                    ),
                )
            )

    def _heard(self, row: _Row, received_at: datetime) -> None:
        if row.last_message_at is None or received_at > row.last_message_at:
            row.last_message_at = received_at
            row.changed.add("last_message_at")

    def _online(self, site: str) -> None:
        self.offline.pop(site, None)
        self._went_offline.discard(site)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]
