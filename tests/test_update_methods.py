"""How a model takes firmware decides who may push it: PJLink has no firmware update command,
so the agent never pushes to a PJLink projector: its profile says so, a profile that claims
otherwise does not load, and a rollout that would push to one is refused when it is made."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlmodel import Session, select

from fleet.db import make_engine, migrate
from fleet.devices.profile_book import profiles_in
from fleet.devices.registry import sync_registry
from fleet.models import Device
from fleet.protocol.errors import ConfigErrors
from fleet.protocol.profiles import Profile, load_profile
from fleet.protocol.releases import Release, UpdateMethodName, UpdateSettings
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, load_sites
from fleet.rollouts.artifacts import ArtifactStore
from fleet.rollouts.campaigns import RolloutRefused, RolloutRequest, TargetFilter, create_rollout
from fleet.rollouts.models import RolloutDevice

PJLINK = "pjlink-projector"
NOW = datetime(2025, 3, 1, 20, 0, tzinfo=UTC)


def test_shipped_pjlink_profile_is_updated_by_a_technician() -> None:
    profile = profiles_in(DEFAULT_PROFILES_DIR)[PJLINK]
    assert profile.update.method == "technician"
    assert all(profile.method_of(r) != "agent" for r in profile.releases)
    problem = profile.agent_push_problem()
    assert problem is not None and "no firmware update command" in problem


def test_pjlink_release_pushed_by_the_agent_does_not_load(tmp_path: Path) -> None:
    data = yaml.safe_load((DEFAULT_PROFILES_DIR / f"{PJLINK}.yaml").read_text())
    data["releases"] = [
        {"version": "2.2.0", "sha256": "0" * 64, "size": 1024, "artifact": "p.bin"},
    ]
    data["update"] = {"method": "agent"}
    path = tmp_path / f"{PJLINK}.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigErrors) as caught:
        load_profile(path)
    text = str(caught.value)
    assert "release 2.2.0 has method agent" in text
    assert "PJLink, which has no firmware update command" in text


def _pjlink_with_release(method: UpdateMethodName, sha256: str, size: int) -> Profile:
    """The shipped PJLink profile with one release, made in code (not through the loader,
    which refuses method agent), as a caller of create_rollout could."""
    shipped = profiles_in(DEFAULT_PROFILES_DIR)[PJLINK]
    release = Release(version="2.2.0", sha256=sha256, size=size, artifact="pjlink-2.2.0.bin")
    return shipped.model_copy(
        update={"update": UpdateSettings(method=method), "releases": (release,)}
    )


def test_rollout_pushing_to_pjlink_projectors_is_refused_at_creation(tmp_path: Path) -> None:
    # The artifact is there and matches: the only thing wrong is the method.
    image = b"illustrative projector image\n" * 64
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "pjlink-2.2.0.bin").write_bytes(image)
    sha256 = hashlib.sha256(image).hexdigest()
    store = ArtifactStore(artifacts, base_url="http://127.0.0.1:8000")
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    sync_registry(engine, load_sites())
    with Session(engine) as session:
        projectors = set()
        for device in session.exec(select(Device).where(Device.profile == PJLINK)):
            device.firmware = "2.1.0"
            session.add(device)
            projectors.add(device.id)
        session.commit()
    assert projectors, "the site configs hold no PJLink projector"

    request = RolloutRequest.model_validate(
        {
            "name": "projectors 2.2.0",
            "release_version": "2.2.0",
            "targets": TargetFilter(profile=PJLINK),
            "waves": [{"percent": 100}],
            "start": True,
        }
    )
    profiles = profiles_in(DEFAULT_PROFILES_DIR)
    pushed = {**profiles, PJLINK: _pjlink_with_release("agent", sha256, len(image))}
    with Session(engine) as session, pytest.raises(RolloutRefused) as caught:
        create_rollout(session, pushed, store, request, NOW)
    assert any(
        "PJLink, which has no firmware update command" in r and "technician" in r
        for r in caught.value.reasons
    ), caught.value.reasons

    watched = {**profiles, PJLINK: _pjlink_with_release("technician", sha256, len(image))}
    with Session(engine) as session:
        rollout = create_rollout(session, watched, store, request, NOW)
        rows = list(
            session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id))
        )
    engine.dispose()
    assert {r.device_id for r in rows} == projectors
    assert {r.method for r in rows} == {"technician"}
