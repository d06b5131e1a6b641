"""Read-side questions about alerts that the API and the dashboard share.

The caller's scope is applied here, in `_in_scope`, and nowhere else: ops see every alert, a
technician those of their sites, a vendor only those about its own devices (never a site's
alerts, nor another make's).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from fleet.alerts.models import Alert, AlertKind, AlertState, Severity
from fleet.alerts.schemas import AlertOut, AlertPage
from fleet.auth.permissions import Caller
from fleet.models import Device
from fleet.paging import Order, SortKey


class AlertNotFound(LookupError):
    """No alert has that id; the message says where to list them."""

    def __init__(self, alert_id: int) -> None:
        """`alert_id`: the id asked for, kept on the error."""
        super().__init__(f"no alert {alert_id}: GET /api/v1/alerts lists them")
        self.alert_id = alert_id


@dataclass(frozen=True)
class OpenAlerts:
    """Alerts nobody has acknowledged yet, at one site or about one device."""

    total: int = 0
    critical: int = 0
    kinds: frozenset[str] = frozenset()  # AlertKind values among them

    @property
    def warning(self) -> int:
        """How many of them are warnings (not critical)."""
        return self.total - self.critical

    @property
    def severity(self) -> str | None:
        """The worst severity among them ("critical", "warning"), None when there is none."""
        if self.critical:
            return Severity.critical.value
        return Severity.warning.value if self.total else None

    def plus(self, severity: str, kind: str, count: int) -> OpenAlerts:
        """These counts with `count` more alerts of `severity` and `kind` added."""
        critical = count if severity == Severity.critical.value else 0
        return OpenAlerts(self.total + count, self.critical + critical, self.kinds | {kind})


def _devices_of(vendor: str) -> SelectOfScalar[str]:
    return select(Device.id).where(func.lower(col(Device.vendor)) == vendor.lower())


def _in_scope(caller: Caller | None) -> list[ColumnElement[bool]]:
    """The conditions that keep a query to the alerts the caller may see; None: every alert."""
    conditions: list[ColumnElement[bool]] = []
    if caller is not None and caller.sites is not None:
        conditions.append(col(Alert.site_code).in_(sorted(caller.sites)))
    if caller is not None and caller.vendor is not None:
        conditions.append(col(Alert.device_id).in_(_devices_of(caller.vendor)))
    return conditions


# Newest first; the id, unique, orders alerts opened in the same instant. An alert opened
# between two pages sorts before the cursor and so moves no row of the pages after it.
ORDER = Order(
    "alerts",
    SortKey(col(Alert.opened_at), "datetime", descending=True),
    SortKey(col(Alert.id), "int", descending=True),
)


def find_alerts(
    session: Session,
    caller: Caller | None,
    *,
    states: Collection[AlertState] = (),
    kind: AlertKind | None = None,
    site: str | None = None,
    device: str | None = None,
    severity: Severity | None = None,
    since: datetime | None = None,
    limit: int = 100,
    after: str | None = None,
) -> AlertPage:
    """The alerts the caller may see that match every filter given (`states`: any of them;
    empty, every state), newest first: one page of up to `limit` after the cursor `after`,
    with the total that match. `since` (opened at or after) must be timezone-aware.
    Raises fleet.paging.BadCursor."""
    conditions = _in_scope(caller)
    if states:
        conditions.append(col(Alert.state).in_(sorted(s.value for s in states)))
    if kind is not None:
        conditions.append(col(Alert.kind) == kind.value)
    if site is not None:
        conditions.append(col(Alert.site_code) == site)
    if device is not None:
        conditions.append(col(Alert.device_id) == device)
    if severity is not None:
        conditions.append(col(Alert.severity) == severity.value)
    if since is not None:
        conditions.append(col(Alert.opened_at) >= since)
    total = session.exec(select(func.count()).select_from(Alert).where(*conditions)).one()
    query = select(Alert).where(*conditions)
    if after is not None:
        query = query.where(ORDER.after(after))
    rows = session.exec(query.order_by(*ORDER.order_by()).limit(limit + 1)).all()
    page = ORDER.page([AlertOut.model_validate(a) for a in rows], limit, _key)
    return AlertPage(items=page.items, total=total, limit=limit, next=page.next)


def _key(alert: AlertOut) -> tuple[datetime, int]:
    return (alert.opened_at, alert.id)


def alert_row(session: Session, alert_id: int) -> Alert:
    """The alert's row. Raises AlertNotFound."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise AlertNotFound(alert_id)
    return alert


def get_alert(session: Session, alert_id: int) -> AlertOut:
    """One alert, history included. Raises AlertNotFound. Whether the caller may see it is
    checked before, by the permission (fleet.auth.permissions), on the id in the path."""
    return AlertOut.model_validate(alert_row(session, alert_id))


def sites_with_alerts(session: Session, caller: Caller | None) -> list[str]:
    """Codes of the sites with any alert (history included) the caller may see, sorted."""
    query = (
        select(Alert.site_code).distinct().where(*_in_scope(caller)).order_by(col(Alert.site_code))
    )
    return list(session.exec(query))


def unacknowledged_alerts_by_site(session: Session, caller: Caller | None) -> dict[str, OpenAlerts]:
    """Per site code, the alerts in state open that the caller may see; sites without any are
    absent."""
    query = (
        select(Alert.site_code, Alert.severity, Alert.kind, func.count())
        .where(Alert.state == AlertState.open.value, *_in_scope(caller))
        .group_by(col(Alert.site_code), col(Alert.severity), col(Alert.kind))
    )
    counts: dict[str, OpenAlerts] = {}
    for site, severity, kind, count in session.exec(query):
        counts[site] = counts.get(site, OpenAlerts()).plus(severity, kind, count)
    return counts


def unacknowledged_alerts_by_device(
    session: Session, caller: Caller | None, site_code: str | None = None
) -> dict[str, OpenAlerts]:
    """Per device id, the alerts in state open that the caller may see (at one site, if
    given); devices without any, and site-wide alerts, are absent."""
    conditions: list[ColumnElement[bool]] = [
        col(Alert.state) == AlertState.open.value,
        col(Alert.device_id).is_not(None),
    ]
    if site_code is not None:
        conditions.append(col(Alert.site_code) == site_code)
    query = (
        select(Alert.device_id, Alert.severity, Alert.kind, func.count())
        .where(*conditions, *_in_scope(caller))
        .group_by(col(Alert.device_id), col(Alert.severity), col(Alert.kind))
    )
    counts: dict[str, OpenAlerts] = {}
    for device, severity, kind, count in session.exec(query):
        if device is not None:
            counts[device] = counts.get(device, OpenAlerts()).plus(severity, kind, count)
    return counts


# Built once, and run through the connection: the overview and `GET /api/v1/sites` ask on
# every load, and building it and the ORM's handling cost more than the query.
OPEN_BY_SITE = (
    select(Alert.site_code, func.count())
    .where(col(Alert.state) != AlertState.resolved.value)
    .group_by(col(Alert.site_code))
)


def open_alerts_by_site(session: Session) -> dict[str, int]:
    """Unresolved (open or acknowledged) alerts per site code; sites without any are absent."""
    return {site: count for site, count in session.connection().execute(OPEN_BY_SITE).all()}


def recent_alerts_of_device(session: Session, device_id: str, limit: int = 20) -> list[Alert]:
    """The device's newest alerts, history included."""
    query = (
        select(Alert)
        .where(Alert.device_id == device_id)
        .order_by(col(Alert.opened_at).desc())
        .limit(limit)
    )
    return list(session.exec(query))
