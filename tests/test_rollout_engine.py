"""The rollout tick against the real database (SQLite and PostgreSQL), with a fake clock and a
fake agent that answers commands through the real ingest path."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from agent.simulator.firmware_image import write_image
from fleet.api.app import create_app
from fleet.db import make_engine
from fleet.devices.profile_book import profiles_in
from fleet.ingest.pipeline import Ingest
from fleet.leader import Leadership
from fleet.models import AgentStatus, Device
from fleet.protocol.messages import Command
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from fleet.rollouts import engine as rollout_engine
from fleet.rollouts.artifacts import ArtifactStore
from fleet.rollouts.campaigns import RolloutRefused, RolloutRequest, TargetFilter, create_rollout
from fleet.rollouts.engine import FirmwareDelivery
from fleet.rollouts.models import Rollout, RolloutDevice, TickLease
from fleet.rollouts.schedule import add_tick_job
from fleet.settings import Settings
from tests.fixtures_auth import ops_headers
from tests.fixtures_db import message
from tests.procs import wait_for

# Saturday 20:00 UTC: Sunday small hours in Kuala Lumpur and Kathmandu, no classes.
NOW = datetime(2025, 3, 1, 20, 0, tzinfo=UTC)
SEEWO = [
    "tu-sc1-panel-1",
    "tu-sc1-panel-2",
    "upm-sc1-panel-1",
    "upm-sc1-panel-2",
    "upm-sc2-panel-1",
]


@pytest.fixture
def delivery(tmp_path: Path) -> FirmwareDelivery:
    """The repository's profiles, seewo-panel 3.3.0's file in the store, commands under
    fleet/v1."""
    artifacts = tmp_path / "artifacts"
    write_image(artifacts, "seewo-panel", "3.3.0")
    store = ArtifactStore(artifacts, base_url="http://127.0.0.1:8000")
    return FirmwareDelivery(DEFAULT_PROFILES_DIR, store, topic_root="fleet/v1")


@pytest.fixture
def fleet_db(registered: Engine) -> Engine:
    """Seewo panels on 3.2.1, reachable, in standby; both sites' agents online."""
    with Session(registered) as session:
        for device in session.exec(select(Device).where(Device.profile == "seewo-panel")):
            device.firmware, device.reachable, device.power = "3.2.1", True, "standby"
            device.last_seen_at = NOW - timedelta(minutes=1)
            session.add(device)
        for site in ("upm", "tribhuvan"):
            session.add(
                AgentStatus(
                    site_code=site,
                    agent_id=f"{site}-agent-1",
                    state="online",
                    ts=NOW,
                    received_at=NOW,
                )
            )
        session.commit()
    return registered


def request(**kw: Any) -> RolloutRequest:
    base: dict[str, Any] = {
        "name": "seewo 3.3.0",
        "release_version": "3.3.0",
        "targets": TargetFilter(profile="seewo-panel"),
        "waves": [{"count": 1}, {"percent": 100}],
        "abort_min_done": 3,
        "start": True,
    }
    return RolloutRequest.model_validate(base | kw)


class FakeAgents:
    """Answers each command as an agent would: progress then the result, via ingest; a
    device that succeeds then reports the new firmware in its health."""

    def __init__(self, engine: Engine, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.ingest = Ingest(engine)
        self.fail = fail
        self.published: list[Command] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.published.append(Command.model_validate_json(payload))

    def answer(self, at: datetime) -> None:
        out = []
        for cmd in self.published:
            device = cmd.devices[0]
            ok = device not in self.fail
            for state in ("downloading", "installing", "succeeded" if ok else "failed"):
                body = {
                    "kind": "update_progress",
                    "site": cmd.site,
                    "agent_id": f"{cmd.site}-agent-1",
                    "ts": at.isoformat(),
                    "device": device,
                    "message": state,
                    "data": {
                        "cmd_id": cmd.cmd_id,
                        "state": state,
                        "firmware": "3.3.0" if ok else "3.2.1",
                    },
                }
                out.append(message(f"fleet/v1/{cmd.site}/events", body, at))
        self.published.clear()
        self.ingest.handle(out)


def states(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {r.device_id: r.state for r in session.exec(select(RolloutDevice))}


def rollout_state(engine: Engine) -> tuple[str, int, str]:
    with Session(engine) as session:
        r = session.exec(select(Rollout)).one()
        return r.state, r.current_wave, r.reason


def test_bad_rollouts_are_refused_with_the_reason(
    fleet_db: Engine, delivery: FirmwareDelivery
) -> None:
    profiles = profiles_in(delivery.profiles_dir)
    with Session(fleet_db) as session:
        cases = [
            (request(targets=TargetFilter(vendor="nobody")), "no device matches"),
            (request(targets=TargetFilter(profile="snmp-projector")), "does not apply to model"),
            (request(success_threshold_pct=0), "success threshold"),
            (
                request(targets=TargetFilter(profile="seewo-panel", current_versions=["9.9"])),
                "no device",
            ),
        ]
        for bad, reason in cases:
            with pytest.raises(RolloutRefused) as refused:
                create_rollout(session, profiles, delivery.artifacts, bad, NOW)
            assert reason in str(refused.value)
        # An artifact whose SHA-256 is not the release's is never offered.
        (delivery.artifacts.directory / "seewo-panel-3.3.0.bin").write_bytes(b"x" * 262144)
        with pytest.raises(RolloutRefused, match="SHA-256"):
            create_rollout(session, profiles, delivery.artifacts, request(), NOW)
        assert session.exec(select(Rollout)).all() == []


def test_rollout_runs_wave_by_wave_to_completion(
    fleet_db: Engine, delivery: FirmwareDelivery, tmp_path: Path
) -> None:
    agents = FakeAgents(fleet_db)
    with Session(fleet_db) as session:
        create_rollout(
            session, profiles_in(delivery.profiles_dir), delivery.artifacts, request(), NOW
        )
    rollout_engine.tick(fleet_db, delivery, NOW, agents.publish, "a")
    assert len(agents.published) == 1  # the canary alone
    assert (
        agents.published[0]
        .args["url"]
        .endswith("/api/v1/firmware/artifacts/" + agents.published[0].args["sha256"])
    )
    rollout_engine.tick(fleet_db, delivery, NOW + timedelta(seconds=10), agents.publish, "a")
    assert len(agents.published) == 1  # nothing more until the canary succeeded
    agents.answer(NOW + timedelta(seconds=15))
    rollout_engine.tick(fleet_db, delivery, NOW + timedelta(seconds=20), agents.publish, "a")
    assert len(agents.published) == 4  # wave 2, everything else
    agents.answer(NOW + timedelta(seconds=25))
    rollout_engine.tick(fleet_db, delivery, NOW + timedelta(seconds=30), agents.publish, "a")
    assert set(states(fleet_db).values()) == {"succeeded"}
    assert rollout_state(fleet_db)[0] == "completed"
    settings = Settings(data_dir=tmp_path, artifacts_dir=delivery.artifacts.directory)
    client = TestClient(create_app(settings, fleet_db), headers=ops_headers(fleet_db))
    body = client.get("/api/v1/rollouts/1").json()
    assert body["counts"]["succeeded"] == 5 and {s["site_code"] for s in body["sites"]} == {
        "upm",
        "tribhuvan",
    }


def test_failing_canary_aborts_and_nothing_more_is_sent(
    fleet_db: Engine, delivery: FirmwareDelivery
) -> None:
    agents = FakeAgents(fleet_db, fail={"tu-sc1-panel-1"})
    with Session(fleet_db) as session:
        req = request(
            waves=[{"count": 2}, {"percent": 100}],
            abort_min_done=2,
            abort_failure_pct=25,
            max_retries=0,
        )
        create_rollout(session, profiles_in(delivery.profiles_dir), delivery.artifacts, req, NOW)
    rollout_engine.tick(fleet_db, delivery, NOW, agents.publish, "a")
    assert len(agents.published) == 2
    agents.answer(NOW + timedelta(seconds=5))
    rollout_engine.tick(fleet_db, delivery, NOW + timedelta(seconds=10), agents.publish, "a")
    state, _, reason = rollout_state(fleet_db)
    assert state == "aborted" and "1 of 2" in reason
    assert agents.published == []
    # Every device ends in a final state: the three never sent are cancelled, not pending.
    assert list(states(fleet_db).values()).count("cancelled") == 3


def test_controller_restart_resumes_the_rollout(
    fleet_db: Engine, delivery: FirmwareDelivery, db_url: str
) -> None:
    agents = FakeAgents(fleet_db)
    with Session(fleet_db) as session:
        create_rollout(
            session, profiles_in(delivery.profiles_dir), delivery.artifacts, request(), NOW
        )
    # The first controller: its tick job goes into the database's job store.
    scheduler = BackgroundScheduler(timezone=UTC)
    add_tick_job(scheduler, fleet_db, delivery, agents.publish, Leadership(fleet_db), every_s=10.0)
    scheduler.start(paused=True)
    rollout_engine.tick(fleet_db, delivery, NOW, agents.publish, "first")
    scheduler.shutdown(wait=True)
    assert len(agents.published) == 1
    agents.answer(NOW + timedelta(seconds=5))

    # The second: a new engine, a new holder.
    engine2 = make_engine(db_url)
    try:
        with engine2.connect() as conn:
            assert conn.execute(text("SELECT id FROM apscheduler_jobs")).scalars().all() == [
                "rollout_tick"
            ]
        scheduler2 = BackgroundScheduler(timezone=UTC)
        add_tick_job(
            scheduler2, engine2, delivery, agents.publish, Leadership(engine2), every_s=10.0
        )
        scheduler2.start(paused=True)
        assert scheduler2.get_job("rollout_tick") is not None
        scheduler2.shutdown(wait=False)
        later = NOW + timedelta(seconds=61)
        rollout_engine.tick(engine2, delivery, later, agents.publish, "second")
        assert len(agents.published) == 4  # it carried on with wave 2
        agents.answer(later + timedelta(seconds=5))
        rollout_engine.tick(
            engine2, delivery, later + timedelta(seconds=10), agents.publish, "second"
        )
        assert rollout_state(engine2)[0] == "completed"
    finally:
        engine2.dispose()


def test_two_controllers_never_both_run_the_tick(
    fleet_db: Engine, delivery: FirmwareDelivery, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two controllers, each running the tick as fast as it can whenever it holds the
    scheduler lock: only the holder ticks, and once it steps down the other takes over."""
    runs: list[tuple[str, float, float]] = []
    real = rollout_engine.apply_reports

    def slow_body(session: Session, lease: TickLease, now: datetime) -> int:
        started = time.monotonic()
        time.sleep(0.02)  # long enough for the other controller to try meanwhile
        result = real(session, lease, now)
        runs.append((threading.current_thread().name, started, time.monotonic()))
        return result

    monkeypatch.setattr(rollout_engine, "apply_reports", slow_body)
    stop = {"A": threading.Event(), "B": threading.Event()}
    a_leads = threading.Event()

    def controller(name: str) -> None:
        engine = make_engine(db_url)
        leadership = Leadership(engine, holder=name)
        try:
            while not stop[name].is_set():
                if leadership.hold():
                    a_leads.set()
                    rollout_engine.tick(engine, delivery, datetime.now(UTC), None, name)
                else:
                    time.sleep(0.005)
        finally:
            leadership.release()
            engine.dispose()

    threads = {n: threading.Thread(target=controller, args=(n,), name=n) for n in ("A", "B")}
    threads["A"].start()
    assert a_leads.wait(10)
    threads["B"].start()
    time.sleep(1.0)  # B keeps trying all this while
    assert runs and {name for name, _, _ in runs} == {"A"}, "B ran while A held the lock"
    # A's process ends: B takes over.
    stop["A"].set()
    threads["A"].join(10)
    ran_by_a = len(runs)
    wait_for(lambda: len(runs) > ran_by_a + 3, 10, "B to run ticks")
    stop["B"].set()
    threads["B"].join(10)
    assert {name for name, _, _ in runs[ran_by_a:]} == {"B"}
    ordered = sorted(runs, key=lambda r: r[1])
    for (_, _, end), (_, start, _) in itertools.pairwise(ordered):
        assert start >= end, "two ticks overlapped"


def test_ticks_never_overlap_even_without_the_lock(
    fleet_db: Engine, delivery: FirmwareDelivery, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader that lost its lock mid-tick and the next leader: each tick claims the tick's
    row first, so their bodies still run one after the other."""
    runs: list[tuple[float, float]] = []
    real = rollout_engine.apply_reports

    def slow_body(session: Session, lease: TickLease, now: datetime) -> int:
        started = time.monotonic()
        time.sleep(0.02)
        result = real(session, lease, now)
        runs.append((started, time.monotonic()))
        return result

    monkeypatch.setattr(rollout_engine, "apply_reports", slow_body)

    def controller(name: str) -> None:
        engine = make_engine(db_url)
        try:
            for _ in range(10):
                rollout_engine.tick(engine, delivery, datetime.now(UTC), None, name)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=controller, args=(n,)) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(runs) == 20
    ordered = sorted(runs)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert start >= end, "two ticks overlapped"
