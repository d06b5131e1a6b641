"""The registry of sites, rooms and devices, kept in step with site_configs/.

A device dropped from its site's config is retired (`retired_at` set), never deleted: its
samples stay, it leaves the lists, and readings for it are rejected. Listed again, it returns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, SQLModel, select

from fleet.models import Device, Room, Site
from fleet.programme.seed import seed_programme
from fleet.protocol.messages import utcnow
from fleet.protocol.site_config import LoadedSite
from fleet.protocol.timetable import Timetable


class RegistryError(ValueError):
    """The site configs cannot go into the registry as they are (an id in two sites, a bad programme
    section); the message says what to fix."""

    pass


@dataclass
class SyncResult:
    """What one registry sync did, as tagged keys ("site:upm", "device:...", "phase:upm/1"): rows
    created, updated, retired, and programme rows seeded."""

    created: list[str] = field(default_factory=list)  # "site:upm", "room:..", "device:.."
    updated: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    programme: list[str] = field(default_factory=list)  # "phase:upm/1", "milestone:upm/1/.."

    @property
    def changed(self) -> bool:
        """True when the sync changed anything."""
        return bool(self.created or self.updated or self.retired or self.programme)


def config_hash(site: LoadedSite) -> str:
    """SHA-256 (hex) of the site's validated config, kept on its site row (`Site.config_hash`)."""
    return hashlib.sha256(site.config.model_dump_json().encode()).hexdigest()


def timetable_to_json(timetable: Timetable) -> dict[str, Any]:
    """The YAML's own shape ("08:00:00-10:00:00"), which Timetable.model_validate reads back."""
    return {
        "weekly": {
            day: [f"{p.start.isoformat()}-{p.end.isoformat()}" for p in periods]
            for day, periods in timetable.weekly.items()
        },
        "closed": [day.isoformat() for day in timetable.closed],
    }


def timetable_from_json(data: dict[str, Any]) -> Timetable:
    """The timetable stored on a site row (as `timetable_to_json` wrote it); empty or None gives an
    empty timetable."""
    return Timetable.model_validate(data or {})


def sync_registry(engine: Engine, sites: list[LoadedSite]) -> SyncResult:
    """Upsert the given sites' rows; retire devices no longer in their site's config.

    Sites missing from `sites` are left alone (a partial list never retires anything of theirs).
    """
    _check_unique_across_sites(sites)
    now = utcnow()
    result = SyncResult()
    with Session(engine) as session:
        for site in sites:
            _sync_site(session, site, now, result)
        session.commit()
    return result


def _sync_site(session: Session, loaded: LoadedSite, now: datetime, result: SyncResult) -> None:
    cfg = loaded.config
    info = cfg.site
    site_values: dict[str, Any] = {
        "name": info.name,
        "institution": info.institution,
        "country": info.country,
        "timezone": info.timezone,
        "vendor": info.vendor,
        "timetable": timetable_to_json(cfg.timetable),
        "config_path": str(loaded.path),
        "config_hash": config_hash(loaded),
    }
    site = session.get(Site, info.code)
    if site is None:
        session.add(Site(code=info.code, synced_at=now, **site_values))
        result.created.append(f"site:{info.code}")
    elif _assign(site, site_values):
        site.synced_at = now
        result.updated.append(f"site:{info.code}")
    session.flush()  # rooms and devices refer to the site

    for room_cfg in cfg.rooms:
        room_values = {"site_code": info.code, "name": room_cfg.name, "building": room_cfg.building}
        _upsert(session, Room, room_cfg.id, room_values, result, f"room:{room_cfg.id}")
    session.flush()

    listed: set[str] = set()
    for room_cfg, device_cfg in cfg.devices():
        profile = loaded.profile_of(device_cfg)
        listed.add(device_cfg.id)
        values: dict[str, Any] = {
            "site_code": info.code,
            "room_id": room_cfg.id,
            "name": device_cfg.name,
            "vendor": profile.vendor,
            "model": profile.model,
            "kind": profile.kind,
            "profile": profile.id,
            "protocol": profile.protocol,
            "address": device_cfg.address,
            "port": device_cfg.port,
            "retired_at": None,
        }
        _upsert(session, Device, device_cfg.id, values, result, f"device:{device_cfg.id}")

    active = select(Device).where(Device.site_code == info.code, Device.retired_at.is_(None))  # type: ignore[union-attr]
    for device in session.exec(active):
        if device.id not in listed:
            device.retired_at = now
            result.retired.append(f"device:{device.id}")
    session.flush()
    result.programme.extend(seed_programme(session, loaded, now))


def _upsert(
    session: Session,
    model: type[Room] | type[Device],
    key: str,
    values: dict[str, Any],
    result: SyncResult,
    label: str,
) -> None:
    row: SQLModel | None = session.get(model, key)
    if row is None:
        session.add(model(id=key, **values))
        result.created.append(label)
    elif _assign(row, values):
        result.updated.append(label)


def _assign(row: SQLModel, values: dict[str, Any]) -> bool:
    changed = False
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed


def _check_unique_across_sites(sites: list[LoadedSite]) -> None:
    # Room and device ids are primary keys fleet-wide; each config only checks its own.
    owners: dict[tuple[str, str], str] = {}
    problems = []
    for site in sites:
        ids = [("room", r.id) for r in site.config.rooms]
        ids += [("device", d.id) for _, d in site.config.devices()]
        for key in ids:
            other = owners.setdefault(key, site.config.code)
            if other != site.config.code:
                problems.append(
                    f"{key[0]} {key[1]!r} is in both {other} and {site.config.code} ({site.path})"
                )
    if problems:
        raise RegistryError(
            "; ".join(problems) + ". Fix: room and device ids must be unique across all sites: "
            "prefix them with the site code"
        )
