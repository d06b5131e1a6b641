"""The programme as CSV, and back: one row per phase, per covered classroom, per milestone.

A row with no milestone declares a phase (no room) or a classroom the phase covers (a room).
`import_programme_csv(export_programme_csv(...))` into another database gives the same export.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import date, datetime
from typing import TypeVar

from sqlmodel import Session, col, select

from fleet.exports import UTF8_BOM, csv_text, restore_cell
from fleet.programme.milestones import MilestoneFacts, MilestoneName, position
from fleet.programme.models import PHASE_ITSELF, MilestoneRecord, Phase, PhaseRoom
from fleet.programme.records import (
    MilestoneInput,
    ProgrammeError,
    add_rooms,
    get_site,
    write_milestone,
)
from fleet.programme.schemas import MAX_PHASE_NUMBER
from fleet.protocol.messages import CONTROL_RE
from fleet.time_window import day_in_window, instant_in_window

COLUMNS = (
    "site",
    "phase",
    "phase_name",
    "room",
    "milestone",
    "planned",
    "actual",
    "actual_end",
    "reached",
    "note",
    "evidence",
    "correction",
    "recorded_by",
    "recorded_at",
)

T = TypeVar("T")
MAX_CELL_CHARS = 10_000


def export_programme_csv(
    session: Session, site_code: str | None = None, *, bom: bool = False
) -> str:
    """The programme as CSV, every cell neutralised against formulas (fleet.exports), which
    the import undoes; a UTF-8 BOM first when `bom` (for Excel)."""
    rows: list[dict[str, object]] = []
    _collect(session, site_code, rows)
    return csv_text([list(COLUMNS), *([row.get(c, "") for c in COLUMNS] for row in rows)], bom=bom)


class _Rows:
    """The `writerow` of a DictWriter, into a list."""

    def __init__(self, rows: list[dict[str, object]]) -> None:
        self.rows = rows

    def writerow(self, row: dict[str, object]) -> None:
        self.rows.append(row)


def _collect(session: Session, site_code: str | None, out: list[dict[str, object]]) -> None:
    writer = _Rows(out)
    query = select(Phase).order_by(col(Phase.site_code), col(Phase.number))
    if site_code is not None:
        query = query.where(Phase.site_code == site_code)
    for phase in session.exec(query):
        base = {"site": phase.site_code, "phase": phase.number, "phase_name": phase.name}
        writer.writerow(
            {**base, "recorded_by": phase.recorded_by, "recorded_at": phase.recorded_at.isoformat()}
        )
        rooms = session.exec(select(PhaseRoom.room_id).where(PhaseRoom.phase_id == phase.id))
        for room in sorted(rooms):
            writer.writerow({**base, "room": room})
        records = session.exec(select(MilestoneRecord).where(MilestoneRecord.phase_id == phase.id))
        for r in sorted(records, key=lambda r: (r.room_id, position(MilestoneName(r.milestone)))):
            writer.writerow(
                {
                    **base,
                    "room": r.room_id,
                    "milestone": r.milestone,
                    "planned": _iso_day(r.planned),
                    "actual": _iso_day(r.actual),
                    "actual_end": _iso_day(r.actual_end),
                    "reached": "true" if r.reached else "false",
                    "note": r.note,
                    "evidence": json.dumps(r.evidence, sort_keys=True) if r.evidence else "",
                    "correction": "true" if r.correction else "false",
                    "recorded_by": r.recorded_by,
                    "recorded_at": r.recorded_at.isoformat(),
                }
            )


def import_programme_csv(session: Session, text: str, now: datetime) -> int:
    """Apply an export (create or overwrite); the number of rows applied. Does not commit.

    Every cell is checked before it is used: no control characters, phase numbers 1 to
    MAX_PHASE_NUMBER, dates and times in fleet.time_window's window, evidence a JSON object.
    Raises ProgrammeError naming the line and column at fault; the caller rolls back.
    """
    reader = csv.DictReader(io.StringIO(text.removeprefix(UTF8_BOM)))
    line = 1
    try:
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ProgrammeError(
                "csv", f"missing columns {', '.join(missing)}: export one to see the layout"
            )
        applied = 0
        for row in reader:
            line = reader.line_num  # the file's own line: a quoted cell may span lines
            _apply(session, row, now)
            applied += 1
    except ProgrammeError as exc:
        raise ProgrammeError(exc.field, f"line {line}: {exc.message}", exc.status) from None
    except csv.Error as exc:  # a field past the csv module's size limit, a stray quote
        # Raised while reading the record after the last one read.
        raise ProgrammeError("csv", f"line {line + 1}: not CSV as exported ({exc})") from None
    return applied


def _apply(session: Session, line: dict[str, str | None], now: datetime) -> None:
    row = _checked_cells(line)
    site = get_site(session, row["site"].strip())
    number = _required(row, "phase", _phase_number)
    recorded_at = _parse(row, "recorded_at", _aware) or now
    recorded_by = row["recorded_by"].strip() or "csv_import"
    phase = session.exec(
        select(Phase).where(Phase.site_code == site.code, Phase.number == number)
    ).first()
    if phase is None:
        phase = Phase(
            site_code=site.code, number=number, recorded_by=recorded_by, recorded_at=recorded_at
        )
    phase.name = row["phase_name"]
    if not row["milestone"] and not row["room"]:
        phase.recorded_by, phase.recorded_at = recorded_by, recorded_at
    session.add(phase)
    session.flush()
    room = row["room"].strip()
    if not row["milestone"]:
        if room:
            add_rooms(session, phase, [room])
        return
    facts = MilestoneFacts(
        milestone=_required(row, "milestone", MilestoneName),
        planned=_parse(row, "planned", _day),
        actual=_parse(row, "actual", _day),
        actual_end=_parse(row, "actual_end", _day),
        reached=_parse(row, "reached", _flag) or False,
    )
    given = MilestoneInput(
        facts=facts,
        note=row["note"],
        evidence=_parse(row, "evidence", _evidence),
        correction=_parse(row, "correction", _flag) or False,
    )
    record = write_milestone(
        session,
        site,
        phase,
        room or PHASE_ITSELF,
        given,
        recorded_by=recorded_by,
        now=now,
        mode="upsert",
    )
    record.recorded_at = recorded_at
    session.add(record)


def _checked_cells(row: dict[str, str | None]) -> dict[str, str]:
    """The row's cells of the known columns, as text ("" for one the line left out). Refuses a
    cell holding a control character (PostgreSQL's text holds no NUL) or too long a text."""
    cells = {}
    for column in COLUMNS:
        text = restore_cell(row.get(column) or "")
        found = CONTROL_RE.search(text.replace("\t", " ").replace("\n", " ").replace("\r", " "))
        if found:
            raise ProgrammeError(
                column, f"{column} holds control character U+{ord(found.group()):04X}: remove it"
            )
        if len(text) > MAX_CELL_CHARS:
            raise ProgrammeError(column, f"{column} is longer than {MAX_CELL_CHARS} characters")
        cells[column] = text
    return cells


def _phase_number(text: str) -> int:
    number = int(text)
    if not 1 <= number <= MAX_PHASE_NUMBER:
        raise ValueError(f"a phase is numbered 1 to {MAX_PHASE_NUMBER}")
    return number


def _day(text: str) -> date:
    return day_in_window(date.fromisoformat(text))


def _evidence(text: str) -> dict[str, object]:
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:  # nesting past the json module's limit: a cell holds 10,000 chars
        raise ValueError("it nests deeper than JSON evidence can") from None
    if not isinstance(value, dict):
        raise ValueError('write a JSON object, e.g. {"trained": 25}')
    return value


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON can hold")


def _required(row: dict[str, str], column: str, parse: Callable[[str], T]) -> T:
    value = _parse(row, column, parse)
    if value is None:
        raise ProgrammeError(column, f"{column} is empty: every row needs one")
    return value


def _parse(row: dict[str, str], column: str, parse: Callable[[str], T]) -> T | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        return parse(text)
    except (ValueError, TypeError) as exc:
        raise ProgrammeError(column, f"{column} {text!r} cannot be read: {exc}") from None


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError("write true or false")
    return lowered == "true"


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("give a UTC offset, e.g. 2025-03-03T12:00:00+00:00")
    return instant_in_window(value)


def _iso_day(value: date | None) -> str:
    return value.isoformat() if value else ""
