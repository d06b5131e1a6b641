"""The agent's on-disk outbox: readings leave only when acknowledged, survive a reopen, and
are dropped oldest-first and counted when the bound is hit; batches are cut by bytes to fit
the cap; refusals are counted for `fleet-agent status`; a drained outbox gives its disk space
back."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.outbox import ENVELOPE_BYTES, Outbox, PendingBatch, batch_payload, read_status
from fleet.protocol.messages import (
    MAX_BATCH_BYTES,
    MAX_PAYLOAD_BYTES,
    ErrorFlags,
    Power,
    Reading,
)

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


def readings(n: int, start: int = 0) -> list[Reading]:
    return [
        Reading(
            device="upm-sc1-panel-1", ts=T0 + timedelta(seconds=i), reachable=True, power=Power.on
        )
        for i in range(start, start + n)
    ]


def test_batch_keeps_its_msg_id_until_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_age=timedelta(days=3650))
    box.add(readings(120))
    first = box.pending_batches(limit=2, batch_size=50)
    assert [len(b.readings) for b in first] == [50, 50]
    # Not acknowledged: asking again gives the very same batches, same ids, same order.
    again = box.pending_batches(limit=2, batch_size=50)
    assert [b.msg_id for b in again] == [b.msg_id for b in first]
    assert box.ack(first[0].msg_id) == 50
    rest = box.pending_batches(limit=5, batch_size=50)
    assert rest[0].msg_id == first[1].msg_id
    assert sum(len(b.readings) for b in rest) == 70
    status = box.status()
    assert (status.readings_taken, status.readings_acked, status.outbox_depth) == (120, 50, 70)
    assert status.last_ack_at is not None


def test_readings_and_batch_ids_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_age=timedelta(days=3650))
    box.add(readings(10))
    sent = box.pending_batches(limit=1, batch_size=10)[0]
    box.close()  # the process dies before the broker's PUBACK
    reopened = Outbox(path, max_age=timedelta(days=3650))
    resent = reopened.pending_batches(limit=1, batch_size=10)[0]
    assert resent.msg_id == sent.msg_id
    assert resent.seq == sent.seq
    assert [r.ts for r in resent.readings] == [r.ts for r in sent.readings]


def test_oldest_dropped_and_counted_when_full(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_readings=100, max_age=timedelta(days=3650))
    box.add(readings(80))
    dropped = box.add(readings(50, start=80))
    assert dropped == 30
    assert box.depth() == 100
    kept = box.pending_batches(limit=10, batch_size=100)[0].readings
    assert kept[0].ts == T0 + timedelta(seconds=30)
    assert box.status().dropped == 30
    assert box.take_dropped_report() == 30
    assert box.take_dropped_report() == 0


def test_readings_past_max_age_are_dropped_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_age=timedelta(days=1))
    old = [r.model_copy(update={"ts": datetime.now(UTC) - timedelta(days=2)}) for r in readings(5)]
    fresh = [r.model_copy(update={"ts": datetime.now(UTC)}) for r in readings(1)]
    box.add(fresh)
    assert box.add(old) == 5
    assert box.depth() == 1
    assert box.status().dropped == 5


# --- batches cut by bytes ---------------------------------------------------------------


def panel_readings(n: int) -> list[Reading]:
    """Readings shaped like a Seewo panel's from the simulator (about 320 bytes each)."""
    return [
        Reading(
            device=f"sim-{i % 500:04d}",
            ts=T0 + timedelta(seconds=i),
            reachable=True,
            power=Power.standby,
            temperature_c=30.1,
            uptime_s=1157809.36,
            firmware="3.2.1",
            errors=ErrorFlags(),
            metrics={"sys_name": "upm-sc1-panel-1", "update_status": "idle", "brightness_pct": 0},
        )
        for i in range(n)
    ]


def reading_bytes(reading: Reading) -> int:
    return len(reading.model_dump_json(exclude_none=True).encode())


def test_batch_is_cut_by_bytes_before_it_passes_the_cap(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_age=timedelta(days=3650))
    readings = panel_readings(1000)
    box.add(readings)
    batches = box.pending_batches(limit=10, batch_size=1000)
    sizes = [len(batch_payload("upm", "upm-agent-1", b)) for b in batches]
    assert len(batches) >= 2, "1,000 readings of ~340 bytes are more than one batch holds"
    assert max(sizes) <= MAX_BATCH_BYTES
    # Filled up to the cap, less the envelope's widest (it is counted at its widest).
    assert sizes[0] > MAX_BATCH_BYTES - ENVELOPE_BYTES - reading_bytes(readings[0]) - 1
    taken = [(r.device, r.ts) for b in batches for r in b.readings]
    assert taken == [(r.device, r.ts) for r in readings], "every reading, once, in order"


def test_batch_too_large_for_a_smaller_limit_is_batched_again(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_age=timedelta(days=3650))
    box.add(panel_readings(200))
    (whole,) = box.pending_batches(limit=1, batch_size=200)
    # The broker's next CONNACK announces 20,000 bytes: the stored batch is taken apart.
    smaller = box.pending_batches(limit=20, batch_size=200, max_bytes=20_000)
    assert whole.msg_id not in {b.msg_id for b in smaller}
    assert all(len(batch_payload("upm", "upm-agent-1", b)) <= 20_000 for b in smaller)
    assert sum(len(b.readings) for b in smaller) == 200


def test_a_reading_larger_than_the_cap_still_goes_alone(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_age=timedelta(days=3650))
    box.add(panel_readings(3))
    batches = box.pending_batches(limit=5, batch_size=50, max_bytes=100)
    assert [len(b.readings) for b in batches] == [1, 1, 1], "the outbox never jams"


def test_the_largest_reading_the_contract_allows_fits_a_batch() -> None:
    """Every text field at its longest, in four-byte characters, 64 metrics of 256 of them:
    alone in a batch, under the cap, so the byte cut never leaves a reading that cannot go."""
    wide = "\U0001f6f0"
    reading = Reading(
        device="d" * 64,
        ts=T0,
        reachable=True,
        power=Power.on,
        input=wide * 64,
        temperature_c=-49.123456789,
        lamp_hours=999_999.123456789,
        filter_hours=999_999.123456789,
        uptime_s=3_000_000_000.123456,
        firmware=wide * 64,
        error=wide * 500,
        metrics={f"{wide * 62}{i:02d}": wide * 256 for i in range(64)},
    )
    batch = PendingBatch("0" * 26, 2**63 - 1, [reading])
    size = len(batch_payload("a" * 32, wide * 64, batch))
    assert size <= ENVELOPE_BYTES + reading_bytes(reading)
    assert size <= MAX_BATCH_BYTES < MAX_PAYLOAD_BYTES


# --- refusals, counted ----------------------------------------------------------------


def test_refusals_are_counted_by_reason_code_for_status(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for _ in range(3):
        box.record_refusal(135, "Not authorized", "fleet/v1/upm/health", "check the ACL")
    box.record_refusal(151, "Quota exceeded", "fleet/v1/upm/health", "check the queue")
    status = read_status(tmp_path / "o.sqlite")  # as `fleet-agent status` reads it
    assert status.batches_refused == 4
    assert [(r["reason_code"], r["count"]) for r in status.refusals] == [(135, 3), (151, 1)]
    assert status.as_dict()["refusals"][0]["fix"] == "check the ACL"  # type: ignore[index]


# --- disk space, given back --------------------------------------------------------------


def drain(box: Outbox) -> None:
    while batches := box.pending_batches(limit=4, batch_size=50):
        for batch in batches:
            box.ack(batch.msg_id)


def test_outbox_files_shrink_after_a_drain(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_age=timedelta(days=3650))
    empty = box.file_bytes()
    readings = panel_readings(20_000)
    for first in range(0, len(readings), 500):  # an outage: one transaction a poll cycle
        box.add(readings[first : first + 500])
    peak = box.file_bytes()
    assert peak > 5_000_000
    drain(box)
    assert box.depth() == 0
    drained = box.file_bytes()
    assert drained <= max(2 * empty, 512 * 1024), (empty, peak, drained)
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir() if p.name.startswith("o.sqlite"))
    assert on_disk < peak / 10


def test_an_outbox_made_before_auto_vacuum_shrinks_too(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute(
        "CREATE TABLE reading (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, "
        "body TEXT NOT NULL, batch TEXT)"
    )
    old.close()
    box = Outbox(path, max_age=timedelta(days=3650))
    readings = panel_readings(10_000)
    for first in range(0, len(readings), 500):
        box.add(readings[first : first + 500])
    peak = box.file_bytes()
    drain(box)
    assert box.file_bytes() < peak / 5
