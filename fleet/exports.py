"""Every exported cell and file name, made safe in one place: CSV through defusedcsv, XLSX text
cells written as text, and download names by RFC 6266.

A text cell that a spreadsheet would read as a formula (`=HYPERLINK(...)`, `+`, `-`, `@`, `|`,
`%`; OWASP's CSV injection list) gets a leading `'`, which spreadsheets show as nothing more
than "this is text". defusedcsv makes that prefix (and escapes `|` after it); this module adds
it also to cells that begin with a tab, a carriage return or a `'` of their own, so that the
transformation is exactly undone by `restore_cell` (the programme's CSV goes back in). Numbers
and numeric text (`-12.5`) are left as they are.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

from defusedcsv import csv as defused

UTF8_BOM = "\ufeff"
# What defusedcsv prefixes, and what it leaves to us.
FORMULA_STARTS = frozenset("=+-@|%")
OUR_STARTS = frozenset("\t\r'")


def neutral_cell(value: Any) -> Any:
    """The cell as a CSV export writes it (defusedcsv's escape, plus tab, CR and `'`)."""
    if isinstance(value, str) and value[:1] in OUR_STARTS:
        return "'" + value
    return value


def restore_cell(text: str) -> str:
    """Undo `neutral_cell` and defusedcsv's escape on a cell read back from an export."""
    if not text.startswith("'"):
        return text
    rest = text[1:]
    # A cell that began with `|` now begins with `\|`.
    if rest[:1] in FORMULA_STARTS or rest.startswith("\\|"):
        return rest.replace("\\|", "|")  # defusedcsv escaped every `|` after its prefix
    return rest


def csv_rows(rows: Iterable[Sequence[Any]], *, bom: bool = False) -> Iterator[str]:
    """Each row as one CSV line (CRLF), every cell neutralised; the first preceded by a UTF-8
    BOM when `bom` (Excel then reads the file as UTF-8)."""
    buffer = io.StringIO()
    # CRLF, as RFC 4180 has it: the csv module quotes a cell holding a character of the line
    # terminator, so only with both in it does a cell's own CR or LF stay inside its row.
    writer = defused.writer(buffer, lineterminator="\r\n")
    if bom:
        buffer.write(UTF8_BOM)
    for row in rows:
        writer.writerow([neutral_cell("" if v is None else v) for v in row])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def csv_text(rows: Iterable[Sequence[Any]], *, bom: bool = False) -> str:
    """`rows` as one CSV text (see `csv_rows`: CRLF line ends, cells neutralised, UTF-8 BOM first
    when `bom`)."""
    return "".join(csv_rows(rows, bom=bom))


# What XML 1.0 cannot hold (its Char production, https://www.w3.org/TR/xml/#charsets), so an
# XLSX cannot either: the C0 controls but tab and line breaks, lone surrogates, U+FFFE and
# U+FFFF. openpyxl refuses the first (IllegalCharacterError) and writes the others into XML
# no parser reads: not even openpyxl's own load_workbook opens the file it saved.
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xlsx_append(sheet: Any, row: Sequence[Any]) -> None:
    """Append a row to an openpyxl worksheet with every text cell stored as text: openpyxl
    would store a string beginning with `=` as a formula. The cell is also marked
    quote-prefixed, so Excel keeps it text when someone edits it. A character XML cannot hold
    (NOT_XML) is shown as U+FFFD."""
    sheet.append([NOT_XML.sub("\ufffd", v) if isinstance(v, str) else v for v in row])
    for cell in sheet[sheet.max_row]:
        if isinstance(cell.value, str):
            cell.data_type = "s"
            if cell.value[:1] in FORMULA_STARTS | OUR_STARTS:
                cell.quotePrefix = True


def content_disposition(filename: str, inline: bool = False) -> str:
    """`attachment` (or `inline`, shown in the browser) with the name for every client: an
    ASCII `filename` (other characters as `_`) and the exact UTF-8 name in `filename*`
    (RFC 6266, RFC 8187)."""
    ascii_name = (
        "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename) or "download"
    )
    how = "inline" if inline else "attachment"
    return f"{how}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
