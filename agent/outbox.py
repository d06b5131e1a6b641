"""The agent's outbox: every reading is written here first, and leaves only once acknowledged.

SQLite in WAL mode, one file per site under the agent's data directory. paho keeps its
session in memory only, so QoS 1 alone would lose readings across an agent restart; the
outbox is what makes them survive a broker outage, a restart and `kill -9`.

A batch is assigned its msg_id and seq when it is first taken out, and that assignment is
stored: after a crash the very same batch is sent again, so the controller can recognise it.
A batch is cut by bytes as well as by count, to fit the broker's and the controller's size
limits (MAX_BATCH_BYTES, or less when the broker takes less). The outbox is bounded by row
count and by age; what falls off is counted, never silent. A batch the broker refused stays,
and the refusal is counted here, for `fleet-agent status`.

A drained outbox gives its disk space back (auto_vacuum=INCREMENTAL, then a checkpoint that
truncates the WAL): after a long outage the files would otherwise keep their peak size.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ulid import ULID

from fleet.protocol.messages import INT64_MAX, MAX_BATCH_BYTES, HealthBatch, Reading

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
CREATE TABLE IF NOT EXISTS refusal (
    reason_code INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_at TEXT NOT NULL,
    last_topic TEXT NOT NULL,
    fix TEXT NOT NULL
);
"""

COUNTERS = ("readings_taken", "readings_acked", "dropped", "batches_acked", "seq")

# Free pages and WAL worth giving back: below this a drained outbox keeps them for the next
# poll cycle, which would only write them again.
RECLAIM_MIN_BYTES = 256 * 1024
# The WAL is cut back to this after each checkpoint, instead of keeping its largest size.
WAL_KEEP_BYTES = 1024 * 1024


def _envelope_bytes() -> int:
    """The most a batch's JSON adds around its readings, in bytes: the longest site code, an
    agent id of 64 four-byte characters, the largest seq and a sent_at with microseconds."""
    widest = HealthBatch(
        msg_id="0" * 26,
        site="a" * 32,
        agent_id="\U0001f6f0" * 64,
        seq=INT64_MAX,
        sent_at=datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        readings=[],
    )
    return len(widest.to_json())


ENVELOPE_BYTES = _envelope_bytes()


@dataclass(frozen=True)
class PendingBatch:
    """A batch awaiting the broker's acknowledgement: its msg_id (a ULID) and seq, fixed when it was
    first taken out, and its readings in the order they were added."""

    msg_id: str
    seq: int
    readings: list[Reading]


@dataclass(frozen=True)
class OutboxStatus:
    """What `fleet-agent status` prints. `refusals`: one entry per PUBACK reason code the
    broker refused batches with (reason_code, reason, count, last_at, last_topic, fix);
    `file_bytes`: the outbox's database and WAL on disk."""

    readings_taken: int
    readings_acked: int
    outbox_depth: int
    dropped: int
    last_ack_at: str | None
    oldest_pending: str | None
    batches_refused: int = 0
    refusals: list[dict[str, object]] = field(default_factory=list)
    file_bytes: int = 0

    def as_dict(self) -> dict[str, object]:
        """The fields by name, as `fleet-agent status` prints them in JSON."""
        return {
            "readings_taken": self.readings_taken,
            "readings_acked": self.readings_acked,
            "outbox_depth": self.outbox_depth,
            "dropped": self.dropped,
            "last_ack_at": self.last_ack_at,
            "oldest_pending": self.oldest_pending,
            "batches_refused": self.batches_refused,
            "refusals": self.refusals,
            "file_bytes": self.file_bytes,
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
        """Open the outbox at `path`, creating the file and its directory if needed. It keeps at
        most `max_readings` readings, none older than `max_age`: beyond that the oldest are dropped
        and counted."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_readings = max_readings
        self.max_age = max_age
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # Only a new file takes this at once; an older one is converted at its first drain.
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
        # FULL: a reading acknowledged to the poll loop must survive power loss, not just kill -9.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._db.executemany(
            "INSERT OR IGNORE INTO counter(name, value) VALUES (?, 0)", [(c,) for c in COUNTERS]
        )
        self._dropped_unreported = 0

    def close(self) -> None:
        """Close the database; what it holds stays on disk for the next start."""
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
                f"SELECT DISTINCT batch FROM reading WHERE batch IS NOT NULL AND {where}",  # noqa: S608  (fixed SQL text; values bound)
                args,
            )
        ]
        cur = self._db.execute(f"DELETE FROM reading WHERE {where}", args)  # noqa: S608  (fixed SQL text; values bound)
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
        self,
        limit: int,
        batch_size: int,
        partial_before: datetime | None = None,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> list[PendingBatch]:
        """The oldest batches not yet acknowledged, assigning msg_ids to new ones as needed.

        Batches already assigned (sent before a crash or a disconnect) come first and keep
        their msg_id, so a resend is recognised as the same batch. A new batch takes
        readings until `batch_size` of them, or until the next would make its JSON pass
        `max_bytes` (it always takes one, so no reading can stop the outbox). A batch
        assigned earlier that no longer fits `max_bytes` (the broker announced less) is
        taken apart and its readings batched again. A new batch that would not be full is
        made only if its oldest reading was taken before `partial_before`: waiting a few
        seconds for a whole poll cycle sends one message instead of many.
        """
        out: list[PendingBatch] = []
        with self._lock, self._tx():
            for msg_id, seq in self._db.execute(
                "SELECT msg_id, seq FROM batch ORDER BY seq LIMIT ?", (limit,)
            ).fetchall():
                if self._batch_bytes(msg_id) > max_bytes and self._release(msg_id) > 1:
                    continue
                out.append(PendingBatch(msg_id, seq, self._readings_of(msg_id)))
            while len(out) < limit:
                rows = self._db.execute(
                    "SELECT id, length(CAST(body AS BLOB)) FROM reading WHERE batch IS NULL "
                    "ORDER BY id LIMIT ?",
                    (batch_size,),
                ).fetchall()
                if not rows:
                    break
                ids: list[int] = []
                size = ENVELOPE_BYTES - 1  # one comma fewer than readings
                for reading_id, length in rows:
                    size += length + 1
                    if ids and size > max_bytes:
                        break
                    ids.append(reading_id)
                full = len(ids) == batch_size or len(ids) < len(rows)
                if not full and partial_before is not None:
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
                    f"UPDATE reading SET batch = ? WHERE id IN ({','.join('?' * len(ids))})",  # noqa: S608  (placeholders only)
                    (msg_id, *ids),
                )
                out.append(PendingBatch(msg_id, seq, self._readings_of(msg_id)))
        return [b for b in out if b.readings]

    def _batch_bytes(self, msg_id: str) -> int:
        """The most the batch's JSON can be, in bytes (its envelope at its widest)."""
        (size,) = self._db.execute(
            "SELECT COALESCE(SUM(length(CAST(body AS BLOB)) + 1), 0) FROM reading WHERE batch = ?",
            (msg_id,),
        ).fetchone()
        return ENVELOPE_BYTES - 1 + int(size)

    def _release(self, msg_id: str) -> int:
        """Take a batch apart: its readings wait to be batched again, under a new msg_id.
        Returns how many readings it held; a batch of one reading is kept as it is."""
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM reading WHERE batch = ?", (msg_id,)
        ).fetchone()
        if count > 1:
            self._db.execute("UPDATE reading SET batch = NULL WHERE batch = ?", (msg_id,))
            self._db.execute("DELETE FROM batch WHERE msg_id = ?", (msg_id,))
        return int(count)

    def split(self, msg_id: str) -> int:
        """Take a batch apart, for the broker would not take it whole (its readings go again
        in smaller batches). Returns how many readings it held; one alone is not split."""
        with self._lock, self._tx():
            return self._release(msg_id)

    def record_refusal(self, reason_code: int, reason: str, topic: str, fix: str) -> None:
        """Count a batch the broker refused (it stays in the outbox), by reason code."""
        now = datetime.now(UTC).isoformat()
        with self._lock, self._tx():
            self._db.execute(
                "INSERT INTO refusal(reason_code, reason, count, last_at, last_topic, fix) "
                "VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT(reason_code) DO UPDATE SET "
                "count = count + 1, reason = excluded.reason, last_at = excluded.last_at, "
                "last_topic = excluded.last_topic, fix = excluded.fix",
                (reason_code, reason, now, topic, fix),
            )

    def _readings_of(self, msg_id: str) -> list[Reading]:
        return [
            Reading.model_validate_json(body)
            for (body,) in self._db.execute(
                "SELECT body FROM reading WHERE batch = ? ORDER BY id", (msg_id,)
            )
        ]

    def ack(self, msg_id: str) -> int:
        """The broker has the batch: remove it. Returns how many readings left the outbox."""
        with self._lock:
            with self._tx():
                cur = self._db.execute("DELETE FROM reading WHERE batch = ?", (msg_id,))
                gone = self._db.execute("DELETE FROM batch WHERE msg_id = ?", (msg_id,)).rowcount
                if gone:
                    self._bump("readings_acked", cur.rowcount)
                    self._bump("batches_acked", 1)
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta(name, value) VALUES ('last_ack_at', ?)",
                        (datetime.now(UTC).isoformat(),),
                    )
            self._give_back_space()
            return cur.rowcount

    def _give_back_space(self) -> None:
        """Hand free pages back to the file system, and empty the WAL: once the outbox is
        drained, or while a long drain has left at least half the file free. Only when
        there is at least RECLAIM_MIN_BYTES to give, so that an outbox emptied every poll
        cycle does not do it every cycle. Outside any transaction."""
        (free,) = self._db.execute("PRAGMA freelist_count").fetchone()
        (pages,) = self._db.execute("PRAGMA page_count").fetchone()
        (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
        (left,) = self._db.execute("SELECT EXISTS(SELECT 1 FROM reading)").fetchone()
        spare = free * page_size + self._wal_bytes()
        if spare < RECLAIM_MIN_BYTES or (left and free * 2 < pages):
            return
        (mode,) = self._db.execute("PRAGMA auto_vacuum").fetchone()
        if mode == 2:  # incremental
            # executescript steps it to the end; execute() would free a single page.
            self._db.executescript("PRAGMA incremental_vacuum;")
        elif not left or free * 2 >= pages:
            # An outbox made before auto_vacuum: converted now, while at most half is live.
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("VACUUM")
        # The truncation reaches the database file at a checkpoint; TRUNCATE also empties
        # the WAL. A reader holding an old snapshot (fleet-agent status) makes it partial:
        # the next drain finishes it.
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _wal_bytes(self) -> int:
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            return 0

    def file_bytes(self) -> int:
        """The outbox on disk: the database file and its WAL, in bytes."""
        try:
            return self.path.stat().st_size + self._wal_bytes()
        except FileNotFoundError:
            return 0

    def depth(self) -> int:
        """Readings in the outbox, in a batch or not yet: none of them acknowledged."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM reading").fetchone()
            return int(n)

    def status(self) -> OutboxStatus:
        """The counters, depth, last acknowledgement and oldest pending reading (ISO 8601, UTC), the
        refusals and the size on disk."""
        with self._lock:
            counters = dict(self._db.execute("SELECT name, value FROM counter").fetchall())
            (depth,) = self._db.execute("SELECT COUNT(*) FROM reading").fetchone()
            last = self._db.execute("SELECT value FROM meta WHERE name='last_ack_at'").fetchone()
            oldest = self._db.execute("SELECT MIN(ts) FROM reading").fetchone()
            rows = self._db.execute(
                "SELECT reason_code, reason, count, last_at, last_topic, fix FROM refusal "
                "ORDER BY reason_code"
            ).fetchall()
        names = ("reason_code", "reason", "count", "last_at", "last_topic", "fix")
        refusals: list[dict[str, object]] = [dict(zip(names, row, strict=True)) for row in rows]
        return OutboxStatus(
            readings_taken=counters["readings_taken"],
            readings_acked=counters["readings_acked"],
            outbox_depth=int(depth),
            dropped=counters["dropped"],
            last_ack_at=last[0] if last else None,
            oldest_pending=oldest[0] if oldest else None,
            batches_refused=sum(int(row[2]) for row in rows),
            refusals=refusals,
            file_bytes=self.file_bytes(),
        )

    # --- counters and transactions ------------------------------------------------------

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
    """The health topic's payload for `batch`: its HealthBatch JSON, bytes, `sent_at` now (UTC)."""
    return HealthBatch(
        msg_id=batch.msg_id,
        site=site,
        agent_id=agent_id,
        seq=batch.seq,
        sent_at=datetime.now(UTC),
        readings=batch.readings,
    ).to_json()
