"""Silence into state: a silent site goes `site_offline` as a whole, never `unreachable`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.devices.liveness import apply_silence
from fleet.devices.state import AgentFacts, DeviceFacts, DeviceState, StateChange, silence_changes
from fleet.ingest.pipeline import Ingest
from fleet.models import Device
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.fixtures_db import RECEIVED, health, reading

UPM = ["upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc1-pc", "upm-sc2-panel-1", "upm-sc2-projector"]
TUIT = ["tuit-sc1-projector", "tuit-sc1-pc"]
T0 = RECEIVED


def states(engine: Engine, site: str) -> dict[str, tuple[str, str]]:
    with Session(engine) as session:
        rows = session.exec(select(Device).where(Device.site_code == site)).all()
    return {d.id: (d.state, d.state_reason) for d in rows}


def test_silent_site_goes_site_offline_while_another_site_stays_online(
    ingest: Ingest, registered: Engine
) -> None:
    ingest.handle([health("upm", [reading(d, T0) for d in UPM], received_at=T0)])
    ingest.handle([health("tuit", [reading(d, T0) for d in TUIT], received_at=T0)])
    later = T0 + timedelta(minutes=10)
    ingest.handle([health("tuit", [reading(d, later) for d in TUIT], received_at=later)])

    # upm's slowest poll is the projector's 120 s: silent after 6 min; 10 min have passed.
    changes = apply_silence(registered, DEFAULT_PROFILES_DIR, later + timedelta(seconds=30))

    assert {c.device for c in changes} == set(UPM)
    upm = states(registered, "upm")
    assert {state for state, _ in upm.values()} == {"site_offline"}
    assert all(
        reason.startswith("site agent upm-agent-1 silent for 10 min") for _, reason in upm.values()
    )
    assert {state for state, _ in states(registered, "tuit").values()} == {"online"}

    # Running again changes nothing; the agent's next readings bring the derived state back.
    assert apply_silence(registered, DEFAULT_PROFILES_DIR, later + timedelta(seconds=60)) == []
    back = later + timedelta(minutes=1)
    ingest.handle(
        [health("upm", [reading("upm-sc1-panel-1", back, power="standby")], received_at=back)]
    )
    upm = states(registered, "upm")
    assert upm["upm-sc1-panel-1"][0] == "standby"
    assert upm["upm-sc1-panel-2"][0] == "site_offline"


def test_device_left_behind_by_a_live_agent_becomes_unreachable(
    ingest: Ingest, registered: Engine
) -> None:
    ingest.handle([health("tuit", [reading(d, T0) for d in TUIT], received_at=T0)])
    later = T0 + timedelta(minutes=7)
    ingest.handle(
        [health("tuit", [reading("tuit-sc1-pc", later)], received_at=later)]
    )  # the projector (120 s poll) has not been read for 7 min > 6 min

    changes = apply_silence(registered, DEFAULT_PROFILES_DIR, later)

    assert [(c.device, c.state) for c in changes] == [
        ("tuit-sc1-projector", DeviceState.unreachable)
    ]
    tuit = states(registered, "tuit")
    assert tuit["tuit-sc1-projector"] == (
        "unreachable",
        "no reading for 7 min while its site agent reports other devices",
    )
    assert tuit["tuit-sc1-pc"][0] == "online"


NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


def facts(device: str, seen: datetime, state: str = "online", poll: float = 60) -> DeviceFacts:
    return DeviceFacts(device, "upm", state, seen, seen, poll)


def test_an_agent_draining_its_outbox_makes_nobody_unreachable() -> None:
    # Every reading is 20 min old (the backlog), but none lags behind the others.
    agent = AgentFacts("upm", "upm-agent-1", "online", NOW, NOW)
    old = NOW - timedelta(minutes=20)
    devices = [facts("a", old), facts("b", old - timedelta(seconds=30))]
    assert silence_changes({"upm": agent}, devices, NOW) == []


def test_site_silence_threshold_has_a_floor_of_three_minutes() -> None:
    heard = NOW - timedelta(minutes=2, seconds=59)
    agent = AgentFacts("upm", "upm-agent-1", "online", heard, heard)
    devices = [facts("a", heard, poll=10)]  # 3 x 10 s would be 30 s
    assert silence_changes({"upm": agent}, devices, NOW) == []
    later = NOW + timedelta(seconds=2)
    [change] = silence_changes({"upm": agent}, devices, later)
    assert change.state == DeviceState.site_offline


def test_never_heard_site_keeps_its_devices_unknown() -> None:
    devices = [DeviceFacts("a", "upm", "unknown", None, None, 60)]
    assert silence_changes({}, devices, NOW) == []


def test_a_controller_back_from_its_own_outage_waits_before_calling_sites_offline(
    ingest: Ingest, registered: Engine
) -> None:
    """The controller was down for 30 min: every agent looks silent only because nobody was
    listening. It judges silence again once it has itself listened for the threshold."""
    ingest.handle([health("upm", [reading(d, T0) for d in UPM], received_at=T0)])
    restarted = T0 + timedelta(minutes=30)
    # Without the restart taken into account, its first run would call upm offline at once.
    assert {c.device for c in silence_changes_at(registered, restarted)} == set(UPM)

    # upm's threshold is 6 min (the projector's 120 s poll): not yet judged 5 min after.
    assert apply_silence(registered, DEFAULT_PROFILES_DIR, restarted, restarted) == []
    assert (
        apply_silence(registered, DEFAULT_PROFILES_DIR, restarted + timedelta(minutes=5), restarted)
        == []
    )
    assert {s for s, _ in states(registered, "upm").values()} == {"online"}

    # The agent's queued readings would have arrived by now; none did: it is offline, and
    # the reason gives the whole silence, not just the part this controller saw.
    later = restarted + timedelta(minutes=6, seconds=1)
    changes = apply_silence(registered, DEFAULT_PROFILES_DIR, later, restarted)
    assert {c.device for c in changes} == set(UPM)
    assert all("silent for 36 min" in c.reason for c in changes)


def test_an_agent_heard_after_the_restart_is_judged_as_usual() -> None:
    restarted = NOW - timedelta(minutes=1)
    heard = NOW - timedelta(seconds=30)
    agent = AgentFacts("upm", "upm-agent-1", "online", heard, heard)
    assert silence_changes({"upm": agent}, [facts("a", heard)], NOW, restarted) == []
    # Heard after the restart, then silent for longer than the threshold: offline.
    much_later = heard + timedelta(minutes=3, seconds=1)
    [change] = silence_changes({"upm": agent}, [facts("a", heard)], much_later, restarted)
    assert change.state == DeviceState.site_offline


def silence_changes_at(engine: Engine, now: datetime) -> list[StateChange]:
    from fleet.devices.liveness import load_agent_facts, load_device_facts

    with engine.connect() as conn:
        agents = load_agent_facts(conn)
        devices = load_device_facts(conn, lambda profile: 120 if "projector" in profile else 60)
    return silence_changes(agents, devices, now)
