"""The database fixtures hand each test what it asks for: a test asking for `registered` gets
its own copy of a registry holding every site and device of site_configs/, from a template
synced once, and its writes stay in its own copy."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet.models import Device, Site
from fleet.protocol.messages import utcnow
from fleet.protocol.site_config import LoadedSite


def _registry(engine: Engine) -> tuple[set[str], set[str]]:
    with Session(engine) as session:
        sites = set(session.exec(select(Site.code)).all())
        devices = set(session.exec(select(Device.id).where(col(Device.retired_at).is_(None))).all())
    return sites, devices


def test_a_registered_database_holds_every_site_and_device(
    registered: Engine, loaded_sites: list[LoadedSite]
) -> None:
    sites, devices = _registry(registered)
    assert sites == {s.config.code for s in loaded_sites}
    assert devices == {d.id for s in loaded_sites for _, d in s.config.devices()}


def test_a_database_not_asked_to_be_registered_is_empty(engine: Engine) -> None:
    assert _registry(engine) == (set(), set())


@pytest.mark.parametrize("run", [1, 2])
def test_one_test_s_writes_do_not_reach_the_next_one_s_registry(
    registered: Engine, loaded_sites: list[LoadedSite], run: int
) -> None:
    """Run twice on each engine, one after the other in one worker: each run finds the device
    the other retired still there (a copy, not the template itself), then retires it."""
    first = loaded_sites[0].config.devices()[0][1].id
    assert first in _registry(registered)[1]
    with Session(registered) as session:
        device = session.get(Device, first)
        assert device is not None
        device.retired_at = utcnow()
        session.add(device)
        session.commit()
    assert first not in _registry(registered)[1]
