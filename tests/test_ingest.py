from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, func, text
from sqlmodel import Session, col, select

from fleet.ingest.pipeline import Ingest, OutcomeStatus, RejectReason
from fleet.ingest.store import DEAD_LETTER_PAYLOAD_MAX
from fleet.models import AgentMessage, AgentStatus, DeadLetter, Device, IngestedMessage, Sample
from fleet.protocol.messages import MAX_PAYLOAD_BYTES
from tests.fixtures_db import RECEIVED, agent_state, batch, health, message, reading

T0 = RECEIVED - timedelta(minutes=5)
UPM = ["upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc1-pc"]


def count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def device(engine: Engine, device_id: str) -> Device:
    with Session(engine) as session:
        found = session.get(Device, device_id)
        assert found is not None
        return found


def test_valid_batch_is_stored_and_sets_device_state(ingest: Ingest, registered: Engine) -> None:
    readings = [reading(d, T0, power="on", input="hdmi1", firmware="3.2.1") for d in UPM]
    outcomes = ingest.handle([health("upm", readings)])

    assert [o.status for o in outcomes] == [OutcomeStatus.stored]
    assert outcomes[0].readings == 3
    assert count(registered, Sample) == 3
    panel = device(registered, "upm-sc1-panel-1")
    assert panel.state == "online"
    assert panel.state_reason == "reachable, power on, input hdmi1"
    assert panel.last_seen_at == T0  # aware UTC back from the database
    assert panel.state_since == T0
    assert panel.firmware == "3.2.1"
    assert panel.last_reading is not None and panel.last_reading["input"] == "hdmi1"
    assert ingest.readings == 3


def test_batch_stored_once_when_redelivered(ingest: Ingest, registered: Engine) -> None:
    msg = health("upm", [reading(d, T0) for d in UPM])
    first = ingest.handle([msg])
    again = ingest.handle([msg, msg])

    assert first[0].status == OutcomeStatus.stored
    assert [o.status for o in again] == [OutcomeStatus.duplicate, OutcomeStatus.duplicate]
    assert count(registered, Sample) == 3
    assert count(registered, IngestedMessage) == 1


def test_batch_stamped_in_another_zone_is_stored_at_its_utc_instants(
    ingest: Ingest, registered: Engine
) -> None:
    # A batch is checked whole for stamps in UTC; one stamped in another zone is judged
    # reading by reading, each stamp converted: the same instants, stored and shown alike.
    kathmandu = timezone(timedelta(hours=5, minutes=45))
    outcomes = ingest.handle(
        [
            health("upm", [reading("upm-sc1-panel-1", T0.astimezone(kathmandu))]),
            health("upm", [reading("upm-sc1-panel-2", T0)]),
        ]
    )

    assert [(o.status, o.readings) for o in outcomes] == [(OutcomeStatus.stored, 1)] * 2
    with Session(registered) as session:
        assert session.exec(select(Sample.ts)).all() == [T0, T0]
    shown = [device(registered, d) for d in ("upm-sc1-panel-1", "upm-sc1-panel-2")]
    assert [d.last_seen_at for d in shown] == [T0, T0]
    assert [d.last_reading["ts"] for d in shown if d.last_reading] == [
        T0.isoformat().replace("+00:00", "Z")
    ] * 2


def test_a_value_only_some_readings_of_a_group_carry_is_stored_with_them(
    ingest: Ingest, registered: Engine
) -> None:
    # SQLite's insert leaves out a column no reading of the group has a value in.
    later = T0 + timedelta(minutes=1)
    ingest.handle([health("upm", [reading(d, T0) for d in UPM])])
    ingest.handle(
        [
            health("upm", [reading(UPM[0], later, lamp_hours=1200.5, error="lamp cover open")]),
            health("upm", [reading(UPM[1], later, input="hdmi2")]),
        ]
    )

    with Session(registered) as session:
        stored = session.exec(
            select(
                Sample.device_id, Sample.ts, Sample.lamp_hours, Sample.error, Sample.input
            ).order_by(col(Sample.ts), col(Sample.device_id))
        ).all()
    assert [tuple(row) for row in stored] == [
        *[(d, T0, None, None, None) for d in sorted(UPM)],
        (UPM[0], later, 1200.5, "lamp cover open", None),
        (UPM[1], later, None, None, "hdmi2"),
    ]


def test_same_reading_in_two_batches_is_stored_once(ingest: Ingest, registered: Engine) -> None:
    same = reading("upm-sc1-panel-1", T0)
    outcomes = ingest.handle([health("upm", [same]), health("upm", [same])])
    ingest.handle([health("upm", [same])])

    assert [o.status for o in outcomes] == [OutcomeStatus.stored, OutcomeStatus.stored]
    assert count(registered, Sample) == 1
    assert count(registered, IngestedMessage) == 3


def test_group_with_a_stored_reading_stores_its_new_ones(
    ingest: Ingest, registered: Engine
) -> None:
    # PostgreSQL copies a group's samples straight in and falls back to a merge when one is
    # there already: the new readings beside it must still be stored, the old one not twice.
    old = reading("upm-sc1-panel-1", T0)
    ingest.handle([health("upm", [old])])
    new = [reading("upm-sc1-panel-2", T0), reading("upm-sc1-panel-1", T0 + timedelta(minutes=1))]
    outcomes = ingest.handle([health("upm", [old, *new]), health("upm", [new[0]])])

    assert [o.status for o in outcomes] == [OutcomeStatus.stored, OutcomeStatus.stored]
    assert count(registered, Sample) == 3
    assert device(registered, "upm-sc1-panel-1").last_seen_at == T0 + timedelta(minutes=1)


def test_device_topic_reading_is_idempotent_on_device_and_ts(
    ingest: Ingest, registered: Engine
) -> None:
    msg = message("fleet/v1/upm/devices/upm-sc1-pc/health", reading("upm-sc1-pc", T0))
    assert ingest.handle([msg, msg])[0].status == OutcomeStatus.stored
    ingest.handle([msg])
    assert count(registered, Sample) == 1
    assert device(registered, "upm-sc1-pc").state == "online"


def bad_inputs() -> list[tuple[RejectReason, object]]:
    good = batch("upm", [reading("upm-sc1-panel-1", T0)])
    return [
        (RejectReason.not_json, message("fleet/v1/upm/health", b"{not json")),
        # The contract's JSON is UTF-8: the same batch in UTF-16 is not taken.
        (RejectReason.not_json, message("fleet/v1/upm/health", json.dumps(good).encode("utf-16"))),
        (RejectReason.oversize, message("fleet/v1/upm/health", b" " * (MAX_PAYLOAD_BYTES + 1))),
        (RejectReason.invalid, message("fleet/v1/upm/health", {**good, "seq": -1})),
        (RejectReason.topic, message("fleet/v1/upm/nonsense", good)),
        (RejectReason.topic, message("other/v1/upm/health", good)),
        (RejectReason.site_mismatch, message("fleet/v1/tuit/health", good)),
        (RejectReason.unknown_site, message("fleet/v1/nowhere/health", good)),
        (
            RejectReason.device_mismatch,
            message("fleet/v1/upm/devices/upm-sc1-pc/health", reading("upm-sc1-panel-1", T0)),
        ),
        (RejectReason.invalid, message("fleet/v1/upm/agent/state", {"state": "dozing"})),
        (RejectReason.invalid, message("fleet/v1/upm/events", {"kind": "party"})),
    ]


def test_each_bad_input_is_dead_lettered_and_the_rest_stored(
    ingest: Ingest, registered: Engine
) -> None:
    cases = bad_inputs()
    good_before = health("upm", [reading("upm-sc1-panel-1", T0)])
    good_after = health("upm", [reading("upm-sc1-panel-2", T0)])
    group = [good_before, *(msg for _, msg in cases), good_after]

    outcomes = ingest.handle(group)  # type: ignore[arg-type]

    assert outcomes[0].status == outcomes[-1].status == OutcomeStatus.stored
    for (expected, _), outcome in zip(cases, outcomes[1:-1], strict=True):
        assert outcome.status == OutcomeStatus.rejected
        assert outcome.reason == expected, outcome.detail
        assert outcome.detail
    assert count(registered, Sample) == 2
    with Session(registered) as session:
        dead = session.exec(select(DeadLetter).order_by(col(DeadLetter.id))).all()
    assert [d.reason for d in dead] == [reason.value for reason, _ in cases]
    oversize = dead[2]
    assert oversize.size == MAX_PAYLOAD_BYTES + 1
    assert oversize.truncated and len(oversize.payload) == DEAD_LETTER_PAYLOAD_MAX
    assert ingest.rejected[RejectReason.invalid] == 3
    assert sum(ingest.rejected.values()) == len(cases)


def test_reading_for_another_sites_device_is_refused_alone(
    ingest: Ingest, registered: Engine
) -> None:
    mixed = health("upm", [reading("upm-sc1-panel-1", T0), reading("tuit-sc1-projector", T0)])
    [outcome] = ingest.handle([mixed])

    assert outcome.status == OutcomeStatus.stored and outcome.readings == 1
    assert outcome.refused_readings == (RejectReason.unknown_device,)
    assert "tuit-sc1-projector belongs to site tuit" in outcome.detail
    assert count(registered, Sample) == 1
    assert count(registered, IngestedMessage) == 1
    with Session(registered) as session:
        [dead] = session.exec(select(DeadLetter)).all()
    assert dead.reason == "unknown_device"
    assert json.loads(dead.payload)["device"] == "tuit-sc1-projector"
    assert ingest.refused_readings == {"unknown_device": 1}


def test_message_checked_before_the_registry_was_reloaded_is_checked_again(
    ingest: Ingest, registered: Engine
) -> None:
    msg = health("upm", [reading("upm-sc1-panel-1", T0), reading("upm-sc1-panel-2", T0)])
    checked = ingest.check(msg)  # as the subscriber checks it while gathering its group
    assert checked is not None and checked.registry is ingest.registry
    with registered.begin() as conn:
        conn.execute(
            text("UPDATE device SET retired_at = :at WHERE id = 'upm-sc1-panel-1'"),
            {"at": RECEIVED},
        )
    ingest.refresh_registry()  # as after a sync that retired the device
    [outcome] = ingest.handle([msg], [checked])

    assert outcome.status == OutcomeStatus.stored and outcome.readings == 1
    assert outcome.refused_readings == (RejectReason.unknown_device,)
    assert "upm-sc1-panel-1 is retired" in outcome.detail
    assert count(registered, Sample) == 1


def test_bad_readings_are_refused_one_by_one_and_the_rest_of_the_batch_stored(
    ingest: Ingest, registered: Engine
) -> None:
    """A site of five devices where one answers with a NUL in its name, one with a lamp-hours
    of Infinity, one from the far future: the other readings are stored, each bad one is
    dead-lettered with its own reason, and a redelivery stores nothing twice."""
    good = [reading(d, T0) for d in UPM]
    bad = [
        {**reading("upm-sc1-panel-1", T0 + timedelta(seconds=1)), "input": "hdmi1\x00"},
        {**reading("upm-sc1-panel-2", T0 + timedelta(seconds=1)), "lamp_hours": float("inf")},
        reading("upm-sc1-pc", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        reading("upm-sc1-pc", RECEIVED + timedelta(days=2)),
        {"device": "upm-sc1-pc"},
        "not even an object",
    ]
    payload = {**batch("upm", []), "readings": [good[0], *bad[:3], good[1], *bad[3:], good[2]]}
    msg = message("fleet/v1/upm/health", json.dumps(payload).encode())

    [outcome] = ingest.handle([msg])
    again = ingest.handle([msg])

    assert outcome.status == OutcomeStatus.stored and outcome.readings == 3
    assert outcome.refused_readings == (
        RejectReason.invalid,
        RejectReason.invalid,
        RejectReason.invalid,
        RejectReason.clock,
        RejectReason.invalid,
        RejectReason.invalid,
    )
    assert again[0].status == OutcomeStatus.duplicate
    assert count(registered, Sample) == 3
    with Session(registered) as session:
        dead = session.exec(select(DeadLetter).order_by(col(DeadLetter.id))).all()
    assert [d.reason for d in dead] == [r.value for r in outcome.refused_readings]
    assert "reading 1 ('upm-sc1-panel-1')" in dead[0].detail and "input" in dead[0].detail
    assert "lamp_hours" in dead[1].detail
    assert "outside 2000-2100" in dead[2].detail
    assert "ahead of the controller's clock" in dead[3].detail
    assert json.loads(dead[0].payload)["input"] == "hdmi1\x00"
    assert {device(registered, d).state for d in UPM} == {"online"}


def test_agent_offline_marks_site_offline_not_unreachable(
    ingest: Ingest, registered: Engine
) -> None:
    ingest.handle([health("upm", [reading(d, T0) for d in UPM])])
    went = RECEIVED + timedelta(minutes=1)
    ingest.handle([agent_state("upm", "offline", T0, went)])

    with Session(registered) as session:
        devices = session.exec(select(Device).where(Device.site_code == "upm")).all()
        status = session.get(AgentStatus, "upm")
    assert {d.state for d in devices} == {"site_offline"}
    assert all(d.state_reason.startswith("site agent upm-agent-1 offline since") for d in devices)
    assert all(d.state_since == went for d in devices)
    assert status is not None and status.state == "offline"
    assert device(registered, "tuit-sc1-projector").state == "unknown"  # other sites untouched

    # Back online: each device takes its derived state again with its next reading.
    later = went + timedelta(minutes=1)
    ingest.handle(
        [
            agent_state("upm", "online", later, later),
            health("upm", [reading("upm-sc1-panel-1", later, power="standby")], received_at=later),
        ]
    )
    assert device(registered, "upm-sc1-panel-1").state == "standby"
    assert device(registered, "upm-sc1-panel-2").state == "site_offline"


def test_batch_received_before_the_will_does_not_undo_site_offline(
    ingest: Ingest, registered: Engine
) -> None:
    last = health("upm", [reading("upm-sc1-panel-1", T0)], received_at=RECEIVED)
    will = agent_state("upm", "offline", T0 - timedelta(hours=1), RECEIVED)
    ingest.handle([last, will])
    assert device(registered, "upm-sc1-panel-1").state == "site_offline"
    assert count(registered, Sample) == 1


def test_older_reading_does_not_overwrite_newer_state(ingest: Ingest, registered: Engine) -> None:
    ingest.handle([health("upm", [reading("upm-sc1-panel-1", T0, power="on")])])
    old = T0 - timedelta(hours=1)
    ingest.handle([health("upm", [reading("upm-sc1-panel-1", old, reachable=False)])])
    panel = device(registered, "upm-sc1-panel-1")
    assert panel.state == "online" and panel.last_seen_at == T0
    assert count(registered, Sample) == 2


def test_events_and_acks_are_kept(ingest: Ingest, registered: Engine) -> None:
    event = {"kind": "agent_error", "site": "upm", "agent_id": "a", "ts": T0.isoformat()}
    ack = {"cmd_id": "c1", "site": "upm", "agent_id": "a", "ok": True, "ts": T0.isoformat()}
    outcomes = ingest.handle(
        [message("fleet/v1/upm/events", event), message("fleet/v1/upm/cmd/ack", ack)]
    )
    assert [o.status for o in outcomes] == [OutcomeStatus.stored] * 2
    assert count(registered, AgentMessage) == 2


def test_seq_beyond_64_bits_is_rejected_not_retried(ingest: Ingest, registered: Engine) -> None:
    huge_seq = {**batch("upm", [reading("upm-sc1-panel-1", T0)]), "seq": 2**70}
    group = [message("fleet/v1/upm/health", huge_seq), health("upm", [reading(UPM[1], T0)])]
    outcomes = ingest.handle(group)
    assert outcomes[0].reason == RejectReason.invalid
    assert outcomes[1].status == OutcomeStatus.stored


def test_values_the_database_refuses_are_dead_lettered_alone(
    ingest: Ingest, registered: Engine
) -> None:
    # A device deleted behind the registry cache's back: its sample breaks the foreign key.
    with registered.begin() as conn:
        conn.execute(text("DELETE FROM device WHERE id = 'upm-sc1-pc'"))
    group = [health("upm", [reading("upm-sc1-pc", T0)]), health("upm", [reading(UPM[1], T0)])]
    outcomes = ingest.handle(group)
    assert outcomes[0].reason == RejectReason.db_rejected
    assert outcomes[1].status == OutcomeStatus.stored
    assert count(registered, Sample) == 1
    assert count(registered, DeadLetter) == 1


def test_database_failure_raises_so_the_group_is_not_acked(
    ingest: Ingest, registered: Engine
) -> None:
    with registered.begin() as conn:
        conn.execute(text("DROP TABLE ingested_message"))
    with pytest.raises(Exception, match="ingested_message"):
        ingest.handle([health("upm", [reading("upm-sc1-panel-1", T0)])])
    assert ingest.readings == 0
