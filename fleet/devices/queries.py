"""Read-side questions about devices that the API and the pages share: the fleet's devices,
filtered, in pages by id.

The caller's scope is applied here, in `find_devices`: a technician sees their sites' devices,
a vendor its own make's, ops every device.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, func
from sqlmodel import Session, col, select

from fleet.auth.permissions import Caller
from fleet.devices.schemas import DeviceOut
from fleet.devices.state import DeviceState
from fleet.models import Device
from fleet.paging import Order, Page, SortKey

LIST_COLUMNS = [getattr(Device, name) for name in DeviceOut.model_fields]
# By id: unique and never changed, so a device changing state between two pages neither moves
# nor hides another.
ORDER = Order("devices", SortKey(col(Device.id), "str"))


def find_devices(
    session: Session,
    caller: Caller | None,
    *,
    site: str | None = None,
    vendor: str | None = None,
    kind: str | None = None,
    state: DeviceState | None = None,
    include_retired: bool = False,
    limit: int = 100,
    after: str | None = None,
) -> Page[DeviceOut]:
    """The devices the caller may see (None: every device) that match every filter given, by
    id: one page of up to `limit` after the cursor `after`, and how many match in all.
    `vendor` matches in any case. Raises fleet.paging.BadCursor."""
    conditions: list[ColumnElement[bool]] = []
    if caller is not None and caller.sites is not None:
        conditions.append(col(Device.site_code).in_(sorted(caller.sites)))
    if caller is not None and caller.vendor is not None:
        conditions.append(func.lower(col(Device.vendor)) == caller.vendor.lower())
    if site is not None:
        conditions.append(col(Device.site_code) == site)
    if vendor is not None:
        # Vendors are written "MAXHUB" or "Seewo" in profiles: match whatever case was typed.
        conditions.append(func.lower(col(Device.vendor)) == vendor.lower())
    if kind is not None:
        conditions.append(col(Device.kind) == kind)
    if state is not None:
        conditions.append(col(Device.state) == state.value)
    if not include_retired:
        conditions.append(col(Device.retired_at).is_(None))
    conn = session.connection()  # plain rows: no ORM result machinery per row
    total = conn.execute(select(func.count()).select_from(Device).where(*conditions)).scalar_one()
    query = select(*LIST_COLUMNS).where(*conditions)
    if after is not None:
        query = query.where(ORDER.after(after))
    # Only the listed columns: loading whole Device rows would parse every last_reading's JSON
    # and build ORM objects only to copy them out again.
    rows = conn.execute(query.order_by(*ORDER.order_by()).limit(limit + 1)).mappings().all()
    return ORDER.page([DeviceOut.model_validate(dict(r)) for r in rows], limit, _key, total)


def _key(device: DeviceOut) -> tuple[str]:
    return (device.id,)
