"""The agent's outbox: every reading is written here first, and leaves only once acknowledged.

SQLite in WAL mode, one file per site under the agent's data directory. paho keeps its
session in memory only, so QoS 1 alone would lose readings across an agent restart; the
outbox is what makes them survive a broker outage, a restart and `kill -9`.

A batch is assigned its msg_id and seq when it is first taken out, and that assignment is
stored: after a crash the very same batch is sent again, so the controller can recognise it.
The outbox is bounded by row count and by age; what falls off is counted, never silent.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ulid import ULID

from fleet.protocol.messages import HealthBatch, Reading

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reading (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    body TEXT NOT NULL,
    batch TEXT
);
CREATE INDEX IF NOT EXISTS reading_batch ON reading(batch);
CREATE TABLE IF NOT EXISTS batch (
    msg_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counter (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

COUNTERS = ("readings_taken", "readings_acked", "dropped", "batches_acked", "seq")


@dataclass(frozen=True)
class PendingBatch:
    msg_id: str
    seq: int
    readings: list[Reading]


@dataclass(frozen=True)
class OutboxStatus:
    readings_taken: int
    readings_acked: int
    outbox_depth: int
    dropped: int
    last_ack_at: str | None
    oldest_pending: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "readings_taken": self.readings_taken,
            "readings_acked": self.readings_acked,
            "outbox_depth": self.outbox_depth,
            "dropped": self.dropped,
            "last_ack_at": self.last_ack_at,
            "oldest_pending": self.oldest_pending,
        }


class Outbox:
    """Thread-safe: the poll loop adds, the publisher takes and acknowledges."""

    def __init__(
        self,
        path: Path,
        *,
        max_readings: int = 500_000,
        max_age: timedelta = timedelta(days=14),
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_readings = max_readings
        self.max_age = max_age
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a reading acknowledged to the poll loop must survive power loss, not just kill -9.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._db.executemany(
            "INSERT OR IGNORE INTO counter(name, value) VALUES (?, 0)", [(c,) for c in COUNTERS]
        )
        self._dropped_unreported = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- the poll loop's side -----------------------------------------------------------

    def add(self, readings: list[Reading]) -> int:
        """Store readings; returns how many old ones had to be dropped to stay in bounds."""
        if not readings:
            return 0
        rows = [(r.ts.isoformat(), r.model_dump_json(exclude_none=True)) for r in readings]
        with self._lock, self._tx():
            self._db.executemany("INSERT INTO reading(ts, body) VALUES (?, ?)", rows)
            self._bump("readings_taken", len(rows))
            return self._enforce_bounds()

    def _enforce_bounds(self) -> int:
        dropped = 0
        cutoff = (datetime.now(UTC) - self.max_age).isoformat()
        dropped += self._drop_where("ts < ?", (cutoff,))
        (depth,) = self._db.execute("SELECT COUNT(*) FROM reading").fetchone()
        excess = depth - self.max_readings
        if excess > 0:
            dropped += self._drop_where(
                "id IN (SELECT id FROM reading ORDER BY id LIMIT ?)", (excess,)
            )
        if dropped:
            self._bump("dropped", dropped)
            self._dropped_unreported += dropped
        return dropped

    def _drop_where(self, where: str, args: tuple[object, ...]) -> int:
        # A batch that loses readings is rebuilt: drop its assignment so the rest go anew.
        batches = [
            b
            for (b,) in self._db.execute(
                f"SELECT DISTINCT batch FROM reading WHERE batch IS NOT NULL AND {where}", args
            )
        ]
        cur = self._db.execute(f"DELETE FROM reading WHERE {where}", args)
        for b in batches:
            self._db.execute("UPDATE reading SET batch = NULL WHERE batch = ?", (b,))
            self._db.execute("DELETE FROM batch WHERE msg_id = ?", (b,))
        return cur.rowcount

    def take_dropped_report(self) -> int:
        """Readings dropped since the last call, for the agent to report as an event."""
        with self._lock:
            n, self._dropped_unreported = self._dropped_unreported, 0
            return n

    # --- the publisher's side -----------------------------------------------------------

    def pending_batches(
        self, limit: int, batch_size: int, partial_before: datetime | None = None
    ) -> list[PendingBatch]:
        """The oldest batches not yet acknowledged, assigning msg_ids to new ones as needed.

        Batches already assigned (sent before a crash or a disconnect) come first and keep
        their msg_id, so a resend is recognised as the same batch. A new batch that would
        not be full is made only if its oldest reading was taken before `partial_before`:
        waiting a few seconds for a whole poll cycle sends one message instead of many.
        """
        out: list[PendingBatch] = []
        with self._lock, self._tx():
            for msg_id, seq in self._db.execute(
                "SELECT msg_id, seq FROM batch ORDER BY seq LIMIT ?", (limit,)
            ).fetchall():
                out.append(PendingBatch(msg_id, seq, self._readings_of(msg_id)))
            while len(out) < limit:
                ids = [
                    i
                    for (i,) in self._db.execute(
                        "SELECT id FROM reading WHERE batch IS NULL ORDER BY id LIMIT ?",
                        (batch_size,),
                    )
                ]
                if not ids:
                    break
                if len(ids) < batch_size and partial_before is not None:
                    (oldest,) = self._db.execute(
                        "SELECT ts FROM reading WHERE id = ?", (ids[0],)
                    ).fetchone()
                    if datetime.fromisoformat(oldest) >= partial_before:
                        break
                msg_id = str(ULID())
                seq = self._bump("seq", 1)
                self._db.execute(
                    "INSERT INTO batch(msg_id, seq, created_at) VALUES (?, ?, ?)",
                    (msg_id, seq, datetime.now(UTC).isoformat()),
                )
                self._db.execute(
                    f"UPDATE reading SET batch = ? WHERE id IN ({','.join('?' * len(ids))})",
                    (msg_id, *ids),
                )
                out.append(PendingBatch(msg_id, seq, self._readings_of(msg_id)))
        return [b for b in out if b.readings]

    def _readings_of(self, msg_id: str) -> list[Reading]:
        return [
            Reading.model_validate_json(body)
            for (body,) in self._db.execute(
                "SELECT body FROM reading WHERE batch = ? ORDER BY id", (msg_id,)
            )
        ]

    def ack(self, msg_id: str) -> int:
        """The broker has the batch: remove it. Returns how many readings left the outbox."""
        with self._lock, self._tx():
            cur = self._db.execute("DELETE FROM reading WHERE batch = ?", (msg_id,))
            gone = self._db.execute("DELETE FROM batch WHERE msg_id = ?", (msg_id,)).rowcount
            if gone:
                self._bump("readings_acked", cur.rowcount)
                self._bump("batches_acked", 1)
                self._db.execute(
                    "INSERT OR REPLACE INTO meta(name, value) VALUES ('last_ack_at', ?)",
                    (datetime.now(UTC).isoformat(),),
                )
            return cur.rowcount

    def depth(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM reading").fetchone()
            return int(n)

    def status(self) -> OutboxStatus:
        with self._lock:
            counters = dict(self._db.execute("SELECT name, value FROM counter").fetchall())
            (depth,) = self._db.execute("SELECT COUNT(*) FROM reading").fetchone()
            last = self._db.execute("SELECT value FROM meta WHERE name='last_ack_at'").fetchone()
            oldest = self._db.execute("SELECT MIN(ts) FROM reading").fetchone()
        return OutboxStatus(
            readings_taken=counters["readings_taken"],
            readings_acked=counters["readings_acked"],
            outbox_depth=int(depth),
            dropped=counters["dropped"],
            last_ack_at=last[0] if last else None,
            oldest_pending=oldest[0] if oldest else None,
        )

    # --- helpers ------------------------------------------------------------------------

    def _bump(self, name: str, by: int) -> int:
        (value,) = self._db.execute(
            "UPDATE counter SET value = value + ? WHERE name = ? RETURNING value", (by, name)
        ).fetchone()
        return int(value)

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def read_status(path: Path) -> OutboxStatus:
    """Status of an outbox file, read without disturbing a running agent."""
    box = Outbox(path)
    try:
        return box.status()
    finally:
        box.close()


def batch_payload(site: str, agent_id: str, batch: PendingBatch) -> bytes:
    return HealthBatch(
        msg_id=batch.msg_id,
        site=site,
        agent_id=agent_id,
        seq=batch.seq,
        sent_at=datetime.now(UTC),
        readings=batch.readings,
    ).to_json()
