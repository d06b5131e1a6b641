"""A PJLink projector end to end, as real processes: `fleet-agent simulate` serves it on
loopback TCP with password auth, `fleet-agent run` polls it over PJLink, a real broker carries
the batch, `fleet serve` stores it, and its lamp hours and error flags come out of the API."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.fixtures_broker import MOSQUITTO_ONLY, TestBroker
from tests.procs import Stack, wait_for

SITE = "dzv-uz"  # its Smart Classroom has a PJLink projector beside two SNMP panels
PROJECTOR = "dzv-uz-sc1-projector"

# The PJLink collector and what the API shows of it are what this pins, not the broker.
pytestmark = MOSQUITTO_ONLY


@pytest.fixture
def stack(tmp_path: Path, broker: TestBroker) -> Iterator[Stack]:
    # The shipped profiles, with the projector reporting a lamp warning and a filter error
    # from the start, so that non-ok flags have something to show.
    profiles = tmp_path / "firmware_profiles"
    shutil.copytree(DEFAULT_PROFILES_DIR, profiles)
    path = profiles / "pjlink-projector.yaml"
    data = yaml.safe_load(path.read_text())
    data["simulation"]["faults"] = {"lamp": "warning", "filter": "error"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    s = Stack(
        tmp_path,
        broker.url,
        broker.topic_root,
        f"sqlite:///{tmp_path / 'fleet.db'}",
        site=SITE,
        profiles_dir=profiles,
    )
    yield s
    s.stop_all()


def projector_read(stack: Stack) -> dict[str, Any] | None:
    detail = stack.get(f"/api/v1/devices/{PROJECTOR}")
    last = detail.get("last_reading")
    if last and last.get("reachable") and last.get("lamp_hours") is not None:
        return dict(detail)
    return None


def test_projector_lamp_hours_and_error_flags_reach_the_api(stack: Stack) -> None:
    stack.simulate()
    stack.controller()
    agent = stack.agent()
    try:
        detail = wait_for(lambda: projector_read(stack), 45, "the projector's PJLink reading")
    except TimeoutError:
        pytest.fail(f"the projector's reading never arrived:\n{stack.logs()}")
    assert agent.alive()
    last = detail["last_reading"]
    assert last["lamp_hours"] >= 1800  # the profile's starting hours, ageing while on
    assert last["filter_hours"] >= 450
    assert last["errors"] == {
        "fan": "ok",
        "lamp": "warning",
        "temperature": "ok",
        "cover": "ok",
        "filter": "error",
        "other": "ok",
    }
    assert last["firmware"] == "2.1.0"  # SVER, a class 2 query
    assert last["metrics"]["pjlink_class"] == 2
    assert last["metrics"]["manufacturer"] == "Generic"
    assert last["power"] in ("off", "on", "warming", "cooling")

    row = next(
        d
        for d in stack.get(f"/api/v1/devices?site={SITE}&limit=100")["items"]
        if d["id"] == PROJECTOR
    )
    assert row["state"] == "faulty"  # the filter error flag
    assert "filter=error" in row["state_reason"]
