"""The controller's profile book: a profile file edited into one that does not validate leaves
the last good profiles in force (said once in the log), so commands, rollouts and reports go
on; a folder never read good refuses with the reasons."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from fleet.devices.profile_book import profiles_in
from fleet.protocol.errors import ConfigErrors
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR


def _break(path: Path) -> None:
    path.write_text("id: [unclosed\n")
    stat = path.stat()  # a new mtime even within the file system's clock grain
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_profile_broken_after_a_good_read_leaves_the_good_ones_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "profiles"
    shutil.copytree(DEFAULT_PROFILES_DIR, folder)
    good = profiles_in(folder)
    assert "pjlink-projector" in good
    _break(folder / "pjlink-projector.yaml")
    with caplog.at_level(logging.ERROR, logger="fleet.devices.profile_book"):
        assert profiles_in(folder) == good
        assert profiles_in(folder) == good
    said = [r for r in caplog.records if "last good ones stay in force" in r.getMessage()]
    assert len(said) == 1, "said once, not at every call"
    shutil.copy(DEFAULT_PROFILES_DIR / "pjlink-projector.yaml", folder / "pjlink-projector.yaml")
    os.utime(folder / "pjlink-projector.yaml")
    assert set(profiles_in(folder)) == set(good)  # fixed: read again


def test_a_folder_never_read_good_refuses_with_the_reasons(tmp_path: Path) -> None:
    folder = tmp_path / "profiles"
    shutil.copytree(DEFAULT_PROFILES_DIR, folder)
    _break(folder / "seewo-panel.yaml")
    with pytest.raises(ConfigErrors):
        profiles_in(folder)
