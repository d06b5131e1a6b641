"""The controller installed as the README installs it: the built wheel in a fresh venv, then
`fleet serve` from an empty folder, on PostgreSQL, with only the README's settings, answers
/healthz 200; the firmware profiles come from the package itself.

Offline and quick: the wheel is built without build isolation (setuptools from the test venv),
and the fresh venv (`--without-pip`) gets the wheel alone (`pip --python ... --no-deps`);
its dependencies come from the test venv's site-packages through a `.pth` line, which sits
after the fresh venv's own site-packages, so `fleet` itself is the wheel's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

from bench.brokers import OwnMosquitto
from fleet.embedded_broker import free_port
from tests.procs import wait_for

ROOT = Path(__file__).resolve().parents[1]
PIP = (sys.executable, "-m", "pip")
OFFLINE = ("-q", "--no-deps", "--no-index")
SITES_DIR_OF_SETTINGS = "from fleet.settings import Settings; print(Settings().sites_dir)"
SKIP = (".venv", ".git", "data", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel built from this tree; its bin/ folder."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SKIP))
    built = subprocess.run(
        [*PIP, "wheel", *OFFLINE, "--no-build-isolation", "-w", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("classroom_fleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("firmware_profiles/")}
    assert shipped == {p.name for p in (ROOT / "firmware_profiles").glob("*.yaml")}
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "test-venv-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [*PIP, "--python", str(python), "install", *OFFLINE, str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    where = subprocess.run(
        [str(python), "-c", "import fleet; print(fleet.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        check=True,
    ).stdout
    assert where.startswith(purelib), where  # the wheel's fleet, not the checkout's
    return venv / "bin"


def readme_env(**settings: str) -> dict[str, str]:
    """The environment without any FLEET_ setting of the test run's, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return {**env, **settings}


def test_installed_controller_serves_healthz_from_an_empty_folder(
    installed: Path, postgres_url: str, own_mosquitto: OwnMosquitto, tmp_path: Path
) -> None:
    sites = tmp_path / "etc" / "fleet" / "sites"
    sites.mkdir(parents=True)
    shutil.copy(ROOT / "site_configs" / "upm.yaml", sites / "upm.yaml")
    empty = tmp_path / "opt"
    empty.mkdir()
    port = free_port()
    env = readme_env(
        FLEET_DATABASE_URL=postgres_url,
        FLEET_MQTT_URL=own_mosquitto.url,
        FLEET_SITES_DIR=str(sites),
        FLEET_DATA_DIR=str(tmp_path / "var" / "lib" / "fleet"),
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [str(installed / "fleet"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=empty,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def healthy() -> bool:
        assert serve.poll() is None, log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return bool(answer.status == 200)

    try:
        wait_for(healthy, 120, "/healthz 200 from the installed controller")
    finally:
        serve.terminate()
        serve.wait(30)
    output = log.read_text()
    assert f"profiles {installed.parent / 'lib'}" in output, output
    assert "registry: 1 sites synced" in output
    assert "executed successfully" not in output  # APScheduler's per-run lines stay quiet
    assert list(empty.iterdir()) == []  # nothing written where it was started


def test_installed_controller_says_where_site_configs_go(installed: Path, tmp_path: Path) -> None:
    """Without FLEET_SITES_DIR an installed controller reads /etc/fleet/sites, never the
    example sites shipped for the demo; a missing folder is refused with a fix that exists."""
    missing = tmp_path / "no-such-sites"
    result = subprocess.run(
        [str(installed / "fleet"), "serve", "--sites", str(missing)],
        cwd=tmp_path,
        env=readme_env(FLEET_DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "the site configs folder does not exist" in result.stderr
    assert "FLEET_SITES_DIR" in result.stderr
    default = subprocess.run(
        [str(installed / "python"), "-c", SITES_DIR_OF_SETTINGS],
        cwd=tmp_path,
        env=readme_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert default.stdout.strip() == "/etc/fleet/sites", default.stderr


def test_profiles_error_names_a_fix_that_exists(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(installed / "fleet"), "serve", "--profiles", str(tmp_path / "nowhere")],
        cwd=tmp_path,
        env=readme_env(FLEET_SITES_DIR=str(ROOT / "site_configs")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "the firmware profiles folder does not exist" in result.stderr
    assert "--profiles" in result.stderr and "FLEET_PROFILES_DIR" in result.stderr
    helptext = subprocess.run(
        [str(installed / "fleet"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**readme_env(), "COLUMNS": "200"},
    ).stdout
    assert "--profiles" in helptext and "--sites" in helptext


def test_installed_agent_reads_a_site_config_with_the_packaged_profiles(
    installed: Path, tmp_path: Path
) -> None:
    """The agent installed from the same wheel finds the firmware profiles in the package,
    for a site config where `fleet-agent enroll` puts it (no firmware_profiles/ beside it)."""
    etc = tmp_path / "etc" / "fleet-agent"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "site_configs" / "upm.yaml", etc / "upm.yaml")
    result = subprocess.run(
        [
            str(installed / "fleet-agent"),
            "status",
            "--config",
            str(etc / "upm.yaml"),
            "--data-dir",
            str(tmp_path / "var"),
        ],
        cwd=tmp_path,
        env=readme_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The config loaded (profiles found); there is just no outbox yet.
    assert "no outbox at" in result.stderr, result.stderr
    assert "profiles folder" not in result.stderr
