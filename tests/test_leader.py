"""Exactly one scheduler: a PostgreSQL advisory lock, a file lock on SQLite. The faults are
real: a killed process, a terminated database connection."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from fleet.db import make_engine
from fleet.leader import Leadership, advisory_key
from tests.procs import wait_for


def test_one_process_leads_until_it_steps_down(engine: Engine, db_url: str) -> None:
    other_engine = make_engine(db_url)  # another controller: its own pool, its own lock
    first = Leadership(engine, holder="controller-a")
    second = Leadership(other_engine, holder="controller-b")
    try:
        assert first.hold()
        assert not second.hold()
        assert first.hold()  # kept, not taken twice
        assert not second.hold()
        first.release()
        assert second.hold()
        assert not first.hold()
    finally:
        first.release()
        second.release()
        other_engine.dispose()


@pytest.mark.postgres
def test_a_step_down_frees_the_lock_at_once(migrated_postgres_url: str) -> None:
    """The server ends a closed connection's backend, and its locks, only after the client has
    gone on: the other controller must not find the lock still taken right after a step-down."""
    engines = [make_engine(migrated_postgres_url) for _ in range(2)]
    a = Leadership(engines[0], holder="controller-a")
    b = Leadership(engines[1], holder="controller-b")
    try:
        for turn in range(40):
            leader, follower = (a, b) if turn % 2 == 0 else (b, a)
            assert leader.hold(), turn
            leader.release()
            assert follower.hold(), f"turn {turn}: the lock was still held after the step-down"
            follower.release()
    finally:
        a.release()
        b.release()
        for engine in engines:
            engine.dispose()


def test_sqlite_lock_file_names_its_holder(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    leader = Leadership(engine, holder="upm-controller:1234:abcd")
    try:
        assert leader.hold()
        lock_file = tmp_path / "fleet.db.scheduler.lock"
        assert lock_file.read_text() == "upm-controller:1234:abcd\n"
        assert str(lock_file) in leader.where
    finally:
        leader.release()
        engine.dispose()


def test_two_fleets_in_one_postgres_database_do_not_block_each_other(
    postgres_url: str,
) -> None:
    # Two schemas of one database: each has its own scheduler leader.
    schema_a = make_engine(postgres_url)
    public = make_engine(postgres_url.split("?")[0])
    a, b = Leadership(schema_a), Leadership(public)
    try:
        assert a.hold() and b.hold()
        assert a.where != b.where
    finally:
        a.release()
        b.release()
        schema_a.dispose()
        public.dispose()


HOLD_AND_WAIT = textwrap.dedent(
    """
    import sys, time
    from fleet.db import make_engine
    from fleet.leader import Leadership, advisory_key
    leader = Leadership(make_engine(sys.argv[1]), holder="doomed")
    assert leader.hold()
    print("leading", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_leader_is_replaced_at_once(db_url: str, engine: Engine) -> None:
    doomed = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_WAIT, db_url], stdout=subprocess.PIPE, text=True
    )
    survivor = Leadership(engine, holder="survivor")
    try:
        assert doomed.stdout is not None
        assert doomed.stdout.readline().strip() == "leading"
        assert not survivor.hold()
        doomed.kill()  # SIGKILL: no clean-up runs; the OS or the server frees the lock
        doomed.wait(10)
        # PostgreSQL notices the closed connection within moments; flock is freed at exit.
        wait_for(survivor.hold, 10, "the survivor to take the freed lock")
    finally:
        doomed.kill()
        survivor.release()


@pytest.mark.postgres
def test_a_leader_whose_connection_dies_steps_down(postgres_url: str) -> None:
    engine, other_engine = make_engine(postgres_url), make_engine(postgres_url)
    leader, follower = Leadership(engine, holder="a"), Leadership(other_engine, holder="b")
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        assert leader.hold()
        assert not follower.hold()
        # The database ends the leader's lock connection (a restart, a network cut).
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        with admin.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND objsubid = 1 "
                    "AND ((classid::bigint << 32) | objid::bigint) = :key"
                ),
                {"key": advisory_key(f"{schema}.scheduler")},
            ).all()
        assert ended == [(True,)], "the leader's advisory lock was not found"
        assert not leader.hold()  # it finds out at its next run, and stops leading
        assert follower.hold()
        assert not leader.hold()
    finally:
        leader.release()
        follower.release()
        for e in (engine, other_engine, admin):
            e.dispose()


def test_jobs_that_judge_silence_learn_since_when_this_process_leads(engine: Engine) -> None:
    from fleet.scheduler import Job, _guarded

    seen: list[object] = []

    def judge(engine: Engine, now: object, **kw: object) -> None:
        seen.append(kw.get("watching_since"))

    def plain(engine: Engine, now: object, **kw: object) -> None:
        seen.append(kw)

    leader = Leadership(engine)
    try:
        _guarded(Job("liveness", judge, 30, judges_silence=True), engine, leader)()
        _guarded(Job("reports", plain, 30), engine, leader)()
        assert leader.since is not None
        assert seen == [leader.since, {}]
    finally:
        leader.release()
    assert leader.since is None
