"""Exported cells that would run: every text cell of every export is neutralised in one place
(fleet.exports), CSV can start with a UTF-8 BOM, and a download's file name outside Latin-1
goes in RFC 6266's filename*. Through the real app and database, and as properties."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from fleet.api.app import create_app
from fleet.exports import (
    FORMULA_STARTS,
    content_disposition,
    csv_text,
    neutral_cell,
    restore_cell,
    xlsx_append,
)
from fleet.models import Device, Room
from fleet.programme.csv_records import import_programme_csv
from fleet.protocol.messages import utcnow
from fleet.settings import Settings
from tests.fixtures_auth import Tokens

HOSTILE = '=HYPERLINK("http://x.example/","f")'
DANGEROUS = FORMULA_STARTS | {"\t", "\r"}
USAGE = "/api/v1/reports/usage?from=2025-03-01&to=2025-03-02"


@pytest.fixture
def client(registered: Engine) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=str(registered.url)), engine=registered)
    with TestClient(app) as client:
        yield client


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


@given(
    st.lists(st.lists(st.text(max_size=40) | st.integers() | st.floats(), max_size=5), max_size=5)
)
def test_no_csv_cell_starts_as_a_formula_and_each_is_restored_exactly(
    rows: list[list[object]],
) -> None:
    parsed = list(csv.reader(io.StringIO(csv_text(rows), newline="")))
    assert len(parsed) == len(rows)
    for given_row, read_row in zip(rows, parsed, strict=True):
        for original, cell in zip(given_row, read_row, strict=True):
            if isinstance(original, str):
                assert cell[:1] not in DANGEROUS or _is_number(cell), (original, cell)
                assert restore_cell(cell) == original


@given(st.text(max_size=60))
def test_neutral_then_restore_is_the_identity(text: str) -> None:
    assert restore_cell(neutral_cell(text)) in (text, text.replace("\\|", "|"))
    assert neutral_cell(text)[:1] not in {"\t", "\r"}


@settings(deadline=None)  # a workbook a case: its time is openpyxl's, and a loaded machine's
@given(st.lists(st.text(max_size=30), min_size=1, max_size=6))
def test_no_xlsx_text_cell_is_a_formula(row: list[str]) -> None:
    from openpyxl import Workbook

    sheet = Workbook().active
    xlsx_append(sheet, row)
    assert all(cell.data_type != "f" for cell in sheet[1])


# Joined by hand: st.text() draws no surrogate, and here drew no U+FFFF even from an
# alphabet naming it.
HOSTILE_CELL = st.lists(
    st.one_of(
        st.sampled_from(["\ufffe", "\uffff", "\U0010ffff", "\ud800", "\udfff", "\x0b", "a"]),
        st.characters(codec="utf-8", categories=["Cc", "Co", "Cn"]),
    ),
    max_size=20,
).map("".join)


@settings(deadline=None)
@given(st.lists(HOSTILE_CELL, min_size=1, max_size=4))
def test_any_text_makes_a_workbook_that_opens(row: list[str]) -> None:
    """XML 1.0 holds no C0 control but tab and line breaks, no U+FFFE or U+FFFF and no lone
    surrogate: a cell with one made a workbook no XML parser reads, openpyxl's own included.
    Each is shown as U+FFFD, the rest of the cell kept."""
    from xml.etree import ElementTree

    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    xlsx_append(sheet, row)
    raw = io.BytesIO()
    book.save(raw)
    with zipfile.ZipFile(raw) as archive:
        ElementTree.fromstring(archive.read("xl/worksheets/sheet1.xml"))  # well-formed
        shared = (
            archive.read("xl/sharedStrings.xml")
            if "xl/sharedStrings.xml" in archive.namelist()
            else b"<x/>"
        )
        ElementTree.fromstring(shared)
    read = [c.value or "" for c in load_workbook(raw)["Sheet"][1]]
    assert [len(v) for v in read] == [len(v) for v in row]


@given(st.text(min_size=1, max_size=80))
def test_any_file_name_gives_a_latin1_header_that_names_it_exactly(name: str) -> None:
    header = content_disposition(name)
    header.encode("latin-1")  # what Starlette needs: no 500
    assert "\n" not in header and "\r" not in header
    star = header.split("filename*=UTF-8''", 1)[1]
    assert unquote(star) == name


def _rename_room(engine: Engine, name: str) -> str:
    with Session(engine) as session:
        room = session.exec(select(Room).where(Room.site_code == "upm")).first()
        assert room is not None
        room.name = name
        session.add(room)
        session.commit()
        return room.id


def test_a_hostile_room_name_is_text_in_the_usage_xlsx_and_csv(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    _rename_room(registered, HOSTILE)
    ops = tokens.headers("ops")
    xlsx = client.get(f"{USAGE}&format=xlsx", headers=ops)
    assert xlsx.status_code == 200, xlsx.text
    book = load_workbook(io.BytesIO(xlsx.content))
    cells = [c for sheet in book.worksheets for row in sheet.iter_rows() for c in row]
    assert any(c.value == HOSTILE and c.data_type == "s" for c in cells)
    assert not [c.coordinate for c in cells if c.data_type == "f"]
    text = client.get(f"{USAGE}&format=csv", headers=ops).text
    cells_read = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    assert "'" + HOSTILE in cells_read and HOSTILE not in cells_read
    assert not [c for c in cells_read if c[:1] in DANGEROUS and not _is_number(c)]


def test_csv_can_start_with_a_bom_for_excel(client: TestClient, tokens: Tokens) -> None:
    ops = tokens.headers("ops")
    plain = client.get(f"{USAGE}&format=csv", headers=ops).content
    with_bom = client.get(f"{USAGE}&format=csv&bom=true", headers=ops).content
    assert not plain.startswith(b"\xef\xbb\xbf")
    assert with_bom == b"\xef\xbb\xbf" + plain
    programme = client.get("/api/v1/programme.csv?bom=true", headers=ops).content
    assert programme.startswith(b"\xef\xbb\xbfsite,phase,")


def test_a_vendor_name_outside_latin1_downloads_under_its_own_name(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    vendor = "Dazzleview (达智)"
    with Session(registered) as session:
        session.execute(update(Device).where(Device.vendor == "Dazzleview").values(vendor=vendor))  # type: ignore[arg-type]
        session.commit()
    answer = client.get(f"{USAGE}&format=csv&vendor={vendor}", headers=tokens.headers("ops"))
    assert answer.status_code == 200, answer.text
    disposition = answer.headers["content-disposition"]
    assert "filename*=UTF-8''" in disposition
    assert vendor.lower().replace(" ", "_") in unquote(disposition.split("''", 1)[1])


def test_milestone_notes_starting_with_a_formula_are_text_and_go_back_in_unchanged(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    ops = tokens.headers("ops")
    notes = [HOSTILE, "+cmd|' /C calc'!A0", "@SUM(1+1)", "'=already quoted", "-a|b"]
    milestones = ["agreement_signed", "equipment_delivered", "installed", "training_done", "in_use"]
    for milestone, note in zip(milestones, notes, strict=True):
        answer = client.post(
            "/api/v1/sites/upm/phases/1/milestones",
            json={"milestone": milestone, "reached": True, "note": note, "correction": True},
            headers=ops,
        )
        if answer.status_code == 409:  # recorded by the seed: change its note instead
            answer = client.patch(
                f"/api/v1/sites/upm/phases/1/milestones/{milestone}",
                json={"note": note, "correction": True},
                headers=ops,
            )
        assert answer.status_code in (200, 201), answer.text
    exported = client.get("/api/v1/programme.csv", headers=ops).text
    cells = [cell for row in csv.reader(io.StringIO(exported)) for cell in row]
    assert not [c for c in cells if c[:1] in DANGEROUS and not _is_number(c)]
    assert "'" + HOSTILE in cells
    assert [restore_cell(c) for c in cells if restore_cell(c) in notes] == notes
    # The import undoes the escape: the note comes back as written.
    with Session(registered) as session:
        import_programme_csv(session, "\ufeff" + exported, utcnow())
        session.commit()
    again = client.get("/api/v1/programme.csv", headers=ops).text
    assert again == exported
