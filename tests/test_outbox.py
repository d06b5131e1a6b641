"""The agent's on-disk outbox: readings leave only when acknowledged, survive a reopen, and
are dropped oldest-first and counted when the bound is hit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.outbox import Outbox
from fleet.protocol.messages import Power, Reading

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
