"""Exactly one scheduler, however many controller processes run: the holder of a lock.

- On PostgreSQL, a session advisory lock (`pg_try_advisory_lock`, its key drawn from the
  lock's name and the schema, so two fleets in one database do not block each other) held
  on a connection of its own for as long as the process leads. The server frees it the
  moment that connection ends, so a leader that dies or loses the database is replaced at
  the next try.
- On SQLite, an exclusive `flock` on a file beside the database (`<db>.<name>.lock`), which
  the kernel frees when the process dies. The file names the holder, for a technician
  looking at why a controller does not run the schedule.
- An in-memory SQLite database lives in one process only: the lock is a process-wide one.

`hold()` is cheap and is asked before every scheduled run: the leader checks its lock is
still there, a follower tries to take it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

log = logging.getLogger(__name__)


def holder_id() -> str:
    """An id for this process as lock holder: host name, process id and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key per lock name: the same in every process and release."""
    digest = hashlib.sha256(f"classroom-fleet:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leadership:
    """Who may run the schedule. One instance per process and lock name."""

    def __init__(self, engine: Engine, name: str = "scheduler", holder: str | None = None):
        """The lock is picked by the engine's database: a PostgreSQL advisory lock, a file lock
        beside a SQLite file, or an in-process lock for in-memory SQLite. `holder`: this process's
        id (default `holder_id()`)."""
        self.engine = engine
        self.name = name
        self.holder = holder or holder_id()
        self.leading = False
        self.since: datetime | None = None  # when this process began leading
        # Job threads ask at once; one question at a time is enough.
        self._mutex = threading.Lock()
        backend = engine.url.get_backend_name()
        self._lock: _Lock
        if backend == "postgresql":
            self._lock = _AdvisoryLock(engine, name)
        elif backend == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            path = Path(str(engine.url.database))
            self._lock = _FileLock(path.with_name(f"{path.name}.{name}.lock"), self.holder)
        else:
            self._lock = _ProcessLock(f"{name}:{id(engine)}")

    @property
    def where(self) -> str:
        """The lock in words, for log lines ("file lock /data/fleet.db.scheduler.lock")."""
        return self._lock.where

    def hold(self) -> bool:
        """True while this process holds the lock: kept if held, taken if free."""
        with self._mutex:
            try:
                leading = self._lock.hold()
            except Exception as exc:  # the database went away: not leading until it is back
                log.warning("scheduler lock %s: %s; retrying at the next run", self.where, exc)
                self._lock.drop()
                leading = False
            if leading != self.leading:
                log.info(
                    "scheduler %s: %s (%s)",
                    self.holder,
                    "now leading" if leading else "another process leads",
                    self.where,
                )
            if leading and not self.leading:
                self.since = datetime.now(UTC)
            self.leading = leading
            return leading

    def release(self) -> None:
        """Let the lock go (on shutdown), so another process may lead at its next try."""
        with self._mutex:
            if self.leading:
                log.info("scheduler %s: stepping down (%s)", self.holder, self.where)
            self._lock.drop()
            self.leading = False
            self.since = None


class _Lock(Protocol):
    """What each kind of lock does: `hold` keeps or takes it, `drop` lets it go."""

    where: str

    def hold(self) -> bool: ...

    def drop(self) -> None: ...


class _AdvisoryLock:
    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.where = f"PostgreSQL advisory lock {name}"
        self._conn: Connection | None = None
        self._key: int | None = None  # the key held on _conn

    def hold(self) -> bool:
        if self._conn is not None:
            # Held since an earlier call: the lock lives as long as this connection does.
            self._conn.execute(text("SELECT 1"))
            return True
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            key = advisory_key(f"{schema}.{self.name}")
            self.where = f"PostgreSQL advisory lock {key} ({schema}.{self.name})"
            taken = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
            if taken.scalar_one():
                self._conn, self._key = conn, key
                return True
        except DBAPIError:
            conn.invalidate()
            conn.close()
            raise
        conn.close()
        return False

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            # Unlocked before the connection closes: the server ends a closed connection's
            # backend, and the lock with it, a moment after the client has gone on, so a
            # controller asking right after a step-down could still find it taken. Not on a
            # connection already found broken: nothing would answer.
            if not conn.invalidated:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        except SQLAlchemyError:
            pass  # the connection is gone already, and the lock went with its backend
        finally:
            # Closed for real rather than returned to the pool, so the lock cannot outlive it.
            conn.invalidate()
            conn.close()


class _FileLock:
    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        self.where = f"file lock {path}"
        self._file: IO[str] | None = None

    def hold(self) -> bool:
        import fcntl

        if self._file is not None:
            return True
        file = open(self.path, "a+")  # noqa: SIM115 - kept open for as long as we lead
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        except BaseException:
            file.close()
            raise
        file.seek(0)
        file.truncate()
        file.write(f"{self.holder}\n")
        file.flush()
        self._file = file
        return True

    def drop(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()  # closing the descriptor frees the flock


_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


class _ProcessLock:
    def __init__(self, name: str) -> None:
        with _process_locks_guard:
            self._lock = _process_locks.setdefault(name, threading.Lock())
        self.where = f"in-process lock {name}"
        self._held = False

    def hold(self) -> bool:
        if not self._held:
            self._held = self._lock.acquire(blocking=False)
        return self._held

    def drop(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()
