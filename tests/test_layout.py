"""The tree's import rules, read off the import graph with `ast`.

- agent -> fleet.protocol <- the rest of fleet: the agent imports only the contract package,
  and the controller imports nothing of the agent but in `fleet/demo.py`, which runs agents and
  simulated devices by design.
- The contract package depends on pydantic (with its core), PyYAML and tzdata only.
- Pages never call route handlers: both call the domain's query functions.
- Domain code takes values, never the controller's Settings: only the edges read them.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# pydantic_core is pydantic's own core, installed and pinned by pydantic itself: its schema
# builders are what a batch check inside the core is written with (fleet/protocol/messages.py).
CONTRACT_DEPENDENCIES = {"pydantic", "pydantic_core", "yaml", "tzdata"}
# The controller's modules that may import the agent: the demo runs agents by design.
FLEET_MAY_IMPORT_AGENT = {"fleet/demo.py"}
# Extras an agent install must not pull (DESIGN.md: the agent stays small).
CONTROLLER_ONLY = {"fastapi", "sqlmodel", "sqlalchemy", "apscheduler", "uvicorn", "alembic"}
DOMAIN_PACKAGES = (
    "fleet/alerts",
    "fleet/devices",
    "fleet/ingest",
    "fleet/programme",
    "fleet/reports",
    "fleet/rollouts",
)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from fleet import protocol` imports fleet.protocol: name the submodule.
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def agent_rule_breaks(path: Path) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for line, module in imported_modules(path)
        if is_under(module, "fleet") and not is_under(module, "fleet.protocol")
    ]


def fleet_rule_breaks(path: Path) -> list[str]:
    if str(path.relative_to(ROOT)) in FLEET_MAY_IMPORT_AGENT:
        return []
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for line, module in imported_modules(path)
        if is_under(module, "agent")
    ]


def test_agent_imports_only_the_contract_package_of_fleet() -> None:
    breaks = [b for path in python_files("agent") for b in agent_rule_breaks(path)]
    assert breaks == []


def test_controller_imports_nothing_of_the_agent_but_in_the_demo() -> None:
    breaks = [b for path in python_files("fleet") for b in fleet_rule_breaks(path)]
    assert breaks == []


def test_domain_code_does_not_read_the_controller_settings() -> None:
    breaks = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for folder in DOMAIN_PACKAGES
        for path in python_files(folder)
        for line, module in imported_modules(path)
        if is_under(module, "fleet.settings")
    ]
    assert breaks == []


def test_contract_package_depends_on_pydantic_yaml_and_tzdata_only() -> None:
    breaks = []
    for path in python_files("fleet/protocol"):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if is_under(module, "fleet.protocol") or top in CONTRACT_DEPENDENCIES:
                continue
            breaks.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert breaks == []


def test_pages_do_not_call_route_handlers() -> None:
    breaks = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files("fleet/web")
        for line, module in imported_modules(path)
        if is_under(module, "fleet.api.routes")
    ]
    assert breaks == []


@pytest.mark.parametrize(
    ("folder", "stray", "rule"),
    [
        ("fleet/ingest", "from agent.config import LoadedSite", fleet_rule_breaks),
        ("fleet/ingest", "import agent.config as config", fleet_rule_breaks),
        ("fleet/ingest", "from ...agent import runner", fleet_rule_breaks),
        ("agent/collectors", "from fleet.models import Device", agent_rule_breaks),
        ("agent", "import fleet.ingest.pipeline", agent_rule_breaks),
        ("agent", "from fleet import models", agent_rule_breaks),
    ],
)
def test_a_stray_import_breaks_the_rule(
    folder: str, stray: str, rule: Callable[[Path], list[str]]
) -> None:
    """The rules catch the imports they exist for, in every form an import is written."""
    probe = ROOT / folder / "_layout_probe.py"
    try:
        probe.write_text(f"{stray}\n", encoding="utf-8")
        assert rule(probe) != []
    finally:
        probe.unlink(missing_ok=True)


def test_agent_install_pulls_no_controller_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["agent"]
    names = {req.split("[")[0].split(">")[0].split("=")[0].split("<")[0].lower() for req in wanted}
    assert names & CONTROLLER_ONLY == set()


def test_agent_runs_without_loading_the_controller() -> None:
    """Every agent module and the contract package load without FastAPI, SQL or APScheduler."""
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for folder in ("agent", "fleet/protocol")
        for path in python_files(folder)
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(','.join(sorted(m for m in {sorted(CONTROLLER_ONLY)!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_readme_names_only_paths_that_exist() -> None:
    """A move that leaves the README pointing at an old path fails here, not at a reader."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = re.findall(
        r"(?<![\w/.-])((?:fleet|agent|tests|bench|deploy|firmware_profiles|site_configs)/[\w./@-]*)"
        r"(?![\w<*])",
        text,
    )
    # MQTT topics (fleet/v1/..., agent/state) share the folders' first names.
    paths = {p.rstrip(".,/") for p in named if not p.startswith(("fleet/v1", "agent/state"))}
    assert paths, "the pattern found no path in the README"
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []
