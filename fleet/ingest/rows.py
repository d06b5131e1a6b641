"""Rows and statements of the ingest's writes, as each database driver is given them.

The statements are compiled once at import; rows are plain tuples with each value in the form
the driver binds fastest (SQLite: text timestamps and JSON; psycopg: aware datetimes, JSON as
text cast in the statement).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from itertools import repeat
from operator import is_not, itemgetter
from typing import Any

from pydantic_core import to_json
from sqlalchemy import JSON, BindParameter, String, bindparam, case, func, or_
from sqlalchemy.dialects import sqlite
from sqlmodel import SQLModel

from fleet.ingest.parse import AgentNoteMessage
from fleet.models import UtcDateTime
from fleet.protocol.messages import Reading

SAMPLES = SQLModel.metadata.tables["sample"]
DEVICES = SQLModel.metadata.tables["device"]


def _device_update() -> Any:
    ts = bindparam("b_ts", type_=UtcDateTime())
    state: BindParameter[str] = bindparam("b_state", type_=String())
    return (
        DEVICES.update()
        .where(
            DEVICES.c.id == bindparam("b_id"),
            or_(DEVICES.c.last_seen_at.is_(None), DEVICES.c.last_seen_at <= ts),
        )
        .values(
            state=state,
            state_reason=bindparam("b_reason"),
            state_since=case(
                (DEVICES.c.state == state, func.coalesce(DEVICES.c.state_since, ts)), else_=ts
            ),
            last_seen_at=ts,
            last_reading=bindparam("b_reading", type_=JSON(none_as_null=True)),
            firmware=func.coalesce(bindparam("b_firmware"), DEVICES.c.firmware),
            power=bindparam("b_power"),
            reachable=bindparam("b_reachable"),
        )
    )


DEVICE_UPDATE = _device_update()
# The same statements as SQLite runs them, with :name parameters for the driver.
_SQLITE_NAMED = sqlite.dialect(paramstyle="named")
SQLITE_DEVICE_UPDATE = str(DEVICE_UPDATE.compile(dialect=_SQLITE_NAMED))
_SAMPLE_COLUMNS = [
    "device_id",
    "ts",
    "received_at",
    "msg_id",
    "reachable",
    "power",
    "input",
    "temperature_c",
    "lamp_hours",
    "filter_hours",
    "uptime_s",
    "firmware",
    "errors",
    "error",
    "metrics",
]
SAMPLE_COLUMNS = tuple(_SAMPLE_COLUMNS)
_COLUMN_LIST = ", ".join(SAMPLE_COLUMNS)
# Positional parameters: rows go as plain tuples in SAMPLE_COLUMNS order. (The statements
# below are built from the fixed column names above, never from input: S608 does not apply.)
SQLITE_SAMPLE_INSERT = (
    f"INSERT INTO sample ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(SAMPLE_COLUMNS))}) "  # noqa: S608
    "ON CONFLICT (device_id, ts) DO NOTHING"
)
# The columns a sample may leave empty (NULL), by their place in SAMPLE_COLUMNS.
_OPTIONAL = tuple(
    index
    for index, name in enumerate(SAMPLE_COLUMNS)
    if name not in ("device_id", "ts", "received_at", "reachable", "power")
)


def sqlite_sample_insert(rows: list[tuple[Any, ...]]) -> tuple[str, list[tuple[Any, ...]]]:
    """The insert of a group's samples (`SAMPLE_COLUMNS` tuples) and the rows it is given:
    a column no row of the group has a value in is left out of both, the database filling
    it with NULL all the same. Python's sqlite3 spends more binding a None than SQLite
    spends storing it: the four columns a panel never reports were a fifth of the insert."""
    empty = {
        index
        for index in _OPTIONAL
        if not any(map(is_not, map(itemgetter(index), rows), repeat(None)))
    }
    if not empty:
        return SQLITE_SAMPLE_INSERT, rows
    kept = tuple(index for index in range(len(SAMPLE_COLUMNS)) if index not in empty)
    return _sqlite_sample_insert_of(kept), list(map(itemgetter(*kept), rows))


@lru_cache(maxsize=64)
def _sqlite_sample_insert_of(kept: tuple[int, ...]) -> str:
    columns = ", ".join(SAMPLE_COLUMNS[index] for index in kept)
    return (
        f"INSERT INTO sample ({columns}) VALUES ({', '.join('?' * len(kept))}) "  # noqa: S608
        "ON CONFLICT (device_id, ts) DO NOTHING"
    )


# A group's new batches (the idempotency record), as each raw driver takes them: named
# parameters for SQLite; one JSON array on PostgreSQL, as for the device updates below (one
# statement where executemany made a round of the pipeline a batch). The same rows and the
# same ON CONFLICT as the Core insert the other drivers are given.
INGESTED_COLUMNS = ("msg_id", "site_code", "agent_id", "seq", "received_at", "readings")
SQLITE_INGESTED_INSERT = (
    f"INSERT INTO ingested_message ({', '.join(INGESTED_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(':' + c for c in INGESTED_COLUMNS)}) ON CONFLICT (msg_id) DO NOTHING"
)
POSTGRES_INGESTED_INSERT_JSON = (
    f"INSERT INTO ingested_message ({', '.join(INGESTED_COLUMNS)}) "  # noqa: S608
    f"SELECT {', '.join(INGESTED_COLUMNS)} FROM json_to_recordset(%s::json)"
    " AS b(msg_id varchar, site_code varchar, agent_id varchar, seq bigint,"
    " received_at timestamptz, readings integer)"
    " ON CONFLICT (msg_id) DO NOTHING"
)

# A group's device updates as one statement on PostgreSQL: the rows go as one JSON array
# (pydantic-core writes it, far cheaper than psycopg adapting each row's parameters) and
# json_to_recordset turns it back into rows. The same update as DEVICE_UPDATE, row for row (the
# newest reading wins by the same last_seen_at test); a device is in a group's array at most
# once, so no row is updated twice.
POSTGRES_DEVICE_UPDATE_JSON = (
    "UPDATE device SET state = b.b_state, state_reason = b.b_reason,"
    " state_since = CASE WHEN device.state = b.b_state"
    " THEN coalesce(device.state_since, b.b_ts) ELSE b.b_ts END,"
    " last_seen_at = b.b_ts, last_reading = b.b_reading::json,"
    " firmware = coalesce(b.b_firmware, device.firmware), power = b.b_power,"
    " reachable = b.b_reachable"
    " FROM json_to_recordset(%s::json) AS b(b_id varchar, b_ts timestamptz, b_state varchar,"
    " b_reason varchar, b_reading text, b_firmware varchar, b_power varchar, b_reachable boolean)"
    " WHERE device.id = b.b_id"
    " AND (device.last_seen_at IS NULL OR device.last_seen_at <= b.b_ts)"
)
# PostgreSQL takes bulk rows fastest by COPY, which has no ON CONFLICT: a group's samples are
# copied straight into `sample`, or, when one is stored already, into a temporary table of this
# connection (emptied at each commit) and merged with ON CONFLICT DO NOTHING (GroupWriter).
POSTGRES_SAMPLE_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS fleet_sample_stage ON COMMIT DELETE ROWS AS "  # noqa: S608
    f"SELECT {_COLUMN_LIST} FROM sample WITH NO DATA"
)
# COPY's binary format: each value goes as the server keeps it, nothing parsed from text on
# either side (a timestamp, a float), with the column types given once rather than looked up
# for every value (psycopg's `Copy.set_types`). A JSON text goes as "text": json's binary
# form is its text.
POSTGRES_SAMPLE_COPY = f"COPY fleet_sample_stage ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
POSTGRES_SAMPLE_COPY_DIRECT = f"COPY sample ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
SAMPLE_COPY_TYPES = {
    "device_id": "text",
    "ts": "timestamptz",
    "received_at": "timestamptz",
    "msg_id": "text",
    "reachable": "bool",
    "power": "text",
    "input": "text",
    "temperature_c": "float8",
    "lamp_hours": "float8",
    "filter_hours": "float8",
    "uptime_s": "float8",
    "firmware": "text",
    "errors": "text",
    "error": "text",
    "metrics": "text",
}
POSTGRES_SAMPLE_COPY_TYPES = [SAMPLE_COPY_TYPES[name] for name in SAMPLE_COLUMNS]
POSTGRES_SAMPLE_MERGE = (
    f"INSERT INTO sample ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM fleet_sample_stage "  # noqa: S608
    "ON CONFLICT (device_id, ts) DO NOTHING"
)


def sqlite_ts(value: datetime) -> str:
    """What UtcDateTime and SQLite's DATETIME binding store: naive UTC, microseconds, no T.
    Raises ValueError for a naive datetime."""
    text = value.isoformat(" ", "microseconds")
    # Stamped in UTC (`datetime.UTC` or pydantic-core's zone of offset 0), as parsing leaves
    # every reading: the short way, the "+00:00" cut.
    if text.endswith("+00:00"):
        return text[:26]
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
    return (value - offset).replace(tzinfo=None).isoformat(" ", "microseconds")


def sample_rows(
    readings: list[Reading], received_at: datetime, msg_id: str | None
) -> list[dict[str, Any]]:
    """One message's samples as dicts for SQLAlchemy (a driver without a raw path below)."""
    return [
        {
            "device_id": reading.device,
            "ts": reading.ts,
            "received_at": received_at,
            "msg_id": msg_id,
            "reachable": reading.reachable,
            "power": reading.power.value,
            "input": reading.input,
            "temperature_c": reading.temperature_c,
            "lamp_hours": reading.lamp_hours,
            "filter_hours": reading.filter_hours,
            "uptime_s": reading.uptime_s,
            "firmware": reading.firmware,
            "errors": (
                {name: flag.value for name, flag in reading.errors}
                if reading.errors is not None
                else None
            ),
            "error": reading.error,
            "metrics": reading.metrics or None,
        }
        for reading in readings
    ]


# The rows of a message are built in one comprehension, with no call a reading but what a value
# needs: at tens of thousands of readings a second, a function call a row was a tenth of the
# rows' cost. `str(power)` is the enum's text (a StrEnum's str is its value) without the
# enum's property lookup. JSON is written by pydantic's serialiser, a sixth of json.dumps'
# time on these small dicts (and, like it, NaN as NaN: PostgreSQL refuses that, and the group
# falls back to storing one by one, dead-lettering just that reading).


def sample_tuples(
    readings: list[Reading],
    received_at: str | datetime,
    msg_id: str | None,
    *,
    text_stamps: bool,
) -> list[tuple[Any, ...]]:
    """One message's samples as the driver is given them, in `SAMPLE_COLUMNS` order: plain
    tuples (a dict per row cost more than the insert), JSON as text. `text_stamps` (SQLite):
    the reading's stamp as `sqlite_ts` text, and `received_at` already such text, one per
    message; otherwise (PostgreSQL's COPY) aware datetimes as they are, since timestamptz
    keeps the instant whatever the zone."""
    return [
        (
            reading.device,
            # sqlite_ts, its short way inline (no call a row, as said above).
            (
                text[:26]
                if (text := reading.ts.isoformat(" ", "microseconds")).endswith("+00:00")
                else sqlite_ts(reading.ts)
            )
            if text_stamps
            else reading.ts,
            received_at,
            msg_id,
            reading.reachable,
            str(reading.power),
            reading.input,
            reading.temperature_c,
            reading.lamp_hours,
            reading.filter_hours,
            reading.uptime_s,
            reading.firmware,
            errors.model_dump_json() if (errors := reading.errors) is not None else None,
            reading.error,
            to_json(metrics).decode() if (metrics := reading.metrics) else None,
        )
        for reading in readings
    ]


def note_row(item: AgentNoteMessage, received_at: datetime) -> dict[str, Any]:
    """The `agent_message` row of an agent event or command ack received at `received_at`."""
    return {
        "site_code": item.site,
        "kind": item.kind,
        "ts": item.ts,
        "received_at": received_at,
        "body": item.body,
    }
