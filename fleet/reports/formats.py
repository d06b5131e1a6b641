"""A computed report rendered as bytes: JSON, CSV, XLSX (HTML is in fleet.reports.html).

Every renderer is deterministic: the same report gives the same bytes, so a stored report of
a closed period can be regenerated and checked against its SHA-256. Nothing here writes the
time of generation.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime
from enum import StrEnum
from typing import Any

from fleet.exports import csv_rows, xlsx_append
from fleet.reports.rows import COLUMNS, public

INPUT_PREFIX = "input_share:"
# Fixed document dates: the XLSX of a closed period must not change when made again.
FIXED_XLSX_DATE = datetime(2000, 1, 1)  # noqa: DTZ001  (openpyxl writes naive as UTC)
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class ReportFormat(StrEnum):
    """The formats a usage report is rendered in (FLEET_REPORT_FORMATS picks the scheduled ones)."""

    json = "json"
    csv = "csv"
    xlsx = "xlsx"
    html = "html"


MEDIA_TYPES = {
    ReportFormat.json: "application/json",
    ReportFormat.csv: "text/csv; charset=utf-8",
    ReportFormat.xlsx: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ReportFormat.html: "text/html; charset=utf-8",
}


def filename(report: dict[str, Any], fmt: ReportFormat) -> str:
    """The download name of a report: usage-<vendor-site-device, or all>-<from>-<to>.<format>."""
    scope = "-".join(
        str(report[k]).lower().replace(" ", "_") for k in ("vendor", "site", "device") if report[k]
    )
    return f"usage-{scope or 'all'}-{report['from']}-{report['to']}.{fmt.value}"


def table(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows shared by CSV and XLSX: the total, then vendors, sites, rooms, devices."""
    rows = [report["totals"], *report["vendors"], *report["sites"], *report["rooms"]]
    rows += report["devices"]
    inputs = sorted({name for row in rows for name in row.get("inputs", {})})
    header = COLUMNS + [INPUT_PREFIX + name for name in inputs]
    body = [
        [row.get(c) for c in COLUMNS] + [row.get("inputs", {}).get(name, 0.0) for name in inputs]
        for row in rows
    ]
    return header, body


def render_json(report: dict[str, Any]) -> bytes:
    """The report as indented UTF-8 JSON, without its working fields."""
    return (json.dumps(public(report), indent=1, ensure_ascii=False) + "\n").encode()


def render_csv(report: dict[str, Any], *, bom: bool = False) -> bytes:
    """The report as CSV bytes (see `iter_csv`), a UTF-8 BOM first when `bom`."""
    return b"".join(iter_csv(report, bom=bom))


def iter_csv(report: dict[str, Any], *, bom: bool = False) -> Iterator[bytes]:
    """Row by row, for a streamed download; every cell neutralised (fleet.exports)."""
    header, body = table(report)
    for line in csv_rows([header, *body], bom=bom):
        yield line.encode()


def render_xlsx(report: dict[str, Any]) -> bytes:
    """The report as an XLSX workbook (Summary, Figures and Charts sheets), the same bytes every
    time it is made."""
    # Only the controller extra installs openpyxl.
    from openpyxl import Workbook
    from openpyxl.writer.excel import ExcelWriter

    workbook = Workbook()
    summary = workbook.active
    assert summary is not None
    summary.title = "Summary"
    # Every row through xlsx_append: a name such as `=HYPERLINK(...)` stays text.
    for key in ("report", "vendor", "site", "device", "from", "to", "days"):
        xlsx_append(summary, [key, report[key]])
    summary.append([])
    summary.append(["definitions"])
    for key, text in report["definitions"].items():
        xlsx_append(summary, [key, text])
    figures = workbook.create_sheet("Figures")
    header, body = table(report)
    xlsx_append(figures, header)
    for row in body:
        xlsx_append(figures, row)
    figures.freeze_panes = "D2"
    charts = workbook.create_sheet("Charts")
    charts.append(["local hour", "hours on"])
    for hour, value in enumerate(report["charts"]["hours_on_by_local_hour"]):
        charts.append([hour, value])
    charts.append([])
    charts.append(["weekday", "hours on"])
    for day, value in zip(WEEKDAYS, report["charts"]["hours_on_by_weekday"], strict=True):
        xlsx_append(charts, [day, value])
    props = workbook.properties
    props.creator = "classroom-fleet"
    props.title = f"Usage report {report['from']}..{report['to']}"
    props.created = props.modified = FIXED_XLSX_DATE
    raw = io.BytesIO()
    # Not workbook.save(): it stamps the document's `modified` with the current time.
    ExcelWriter(workbook, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED)).save()
    return _fixed_zip_dates(raw.getvalue())


WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def _fixed_zip_dates(data: bytes) -> bytes:
    """openpyxl stamps each zip entry with the current time: rewrite them with a fixed one."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = info.external_attr
            target.writestr(entry, source.read(info.filename))
    return out.getvalue()


def renderer(fmt: ReportFormat) -> Callable[[dict[str, Any]], bytes]:
    """The function that renders a report in `fmt`."""
    from fleet.reports.html import render_html

    return {
        ReportFormat.json: render_json,
        ReportFormat.csv: render_csv,
        ReportFormat.xlsx: render_xlsx,
        ReportFormat.html: render_html,
    }[fmt]
