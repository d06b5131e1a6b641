"""Read-side questions about devices that the API and the pages share: the fleet's devices,
filtered, in pages by id.

The caller's scope is applied here, in `device_rows` (which `find_devices` calls): a
technician sees their sites' devices, a vendor its own make's, ops every device.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, bindparam, func
from sqlmodel import Session, col, select

from fleet.auth.permissions import Caller
from fleet.devices.schemas import DeviceOut
from fleet.devices.state import DeviceState
from fleet.models import Device
from fleet.paging import Order, Page, SortKey

DEVICE_FIELDS = tuple(DeviceOut.model_fields)
LIST_COLUMNS = [getattr(Device, name) for name in DEVICE_FIELDS]
# By id: unique and never changed, so a device changing state between two pages neither moves
# nor hides another.
ORDER = Order("devices", SortKey(col(Device.id), "str"))


class _Filters(NamedTuple):
    """Which of the list's conditions a request has: its statements are built once for each
    such shape and then run with the request's values as parameters."""

    sites_scope: bool
    vendor_scope: bool
    site: bool
    vendor: bool
    kind: bool
    state: bool
    include_retired: bool
    after: bool


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
    page = device_rows(
        session,
        caller,
        site=site,
        vendor=vendor,
        kind=kind,
        state=state,
        include_retired=include_retired,
        limit=limit,
        after=after,
    )
    return Page([DeviceOut.model_validate(r) for r in page.items], page.next, page.total)


def device_rows(
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
) -> Page[dict[str, Any]]:
    """As `find_devices`, each device a plain dict of DeviceOut's fields (in its order) as the
    database gave them: for a caller that writes them out as they are (the API's list, dumped
    through `fleet.devices.schemas.DEVICE_ROW`) and need not validate each into a model."""
    sites_scope = caller is not None and caller.sites is not None
    vendor_scope = caller is not None and caller.vendor is not None
    params: dict[str, Any] = {"page_rows": limit + 1}
    if caller is not None and caller.sites is not None:
        params["scope_sites"] = sorted(caller.sites)
    if caller is not None and caller.vendor is not None:
        params["scope_vendor"] = caller.vendor.lower()
    if site is not None:
        params["site"] = site
    if vendor is not None:
        # Vendors are written "MAXHUB" or "Seewo" in profiles: match whatever case was typed.
        params["vendor"] = vendor.lower()
    if kind is not None:
        params["kind"] = kind
    if state is not None:
        params["state"] = state.value
    if after is not None:
        params.update(ORDER.bound_values(after))
    count, rows = _statements(
        _Filters(
            sites_scope,
            vendor_scope,
            site is not None,
            vendor is not None,
            kind is not None,
            state is not None,
            include_retired,
            after is not None,
        )
    )
    conn = session.connection()  # plain rows: no ORM result machinery per row
    total: int = conn.execute(count, params).scalar_one()
    found = [dict(zip(DEVICE_FIELDS, r, strict=True)) for r in conn.execute(rows, params).all()]
    return ORDER.page(found, limit, _key, total)


@functools.cache
def _statements(filters: _Filters) -> tuple[Select[Any], Select[Any]]:
    """The count and the page of one shape of request, with its values as bound parameters:
    built once, so that a request neither builds them nor has SQLAlchemy match a new
    statement's columns to its cached compilation again (together more than the query itself
    for a small page)."""
    conditions: list[ColumnElement[bool]] = []
    if filters.sites_scope:
        conditions.append(col(Device.site_code).in_(bindparam("scope_sites", expanding=True)))
    if filters.vendor_scope:
        conditions.append(func.lower(col(Device.vendor)) == bindparam("scope_vendor"))
    if filters.site:
        conditions.append(col(Device.site_code) == bindparam("site"))
    if filters.vendor:
        conditions.append(func.lower(col(Device.vendor)) == bindparam("vendor"))
    if filters.kind:
        conditions.append(col(Device.kind) == bindparam("kind"))
    if filters.state:
        conditions.append(col(Device.state) == bindparam("state"))
    if not filters.include_retired:
        conditions.append(col(Device.retired_at).is_(None))
    count = select(func.count()).select_from(Device).where(*conditions)
    # Only the listed columns: loading whole Device rows would parse every last_reading's JSON
    # and build ORM objects only to copy them out again.
    page = select(*LIST_COLUMNS).where(*conditions)
    if filters.after:
        page = page.where(ORDER.after_bound())
    return count, page.order_by(*ORDER.order_by()).limit(bindparam("page_rows"))


def _key(device: dict[str, Any]) -> tuple[str]:
    return (device["id"],)
