"""The generic top-level packages (flows, tasks, blocks) must resolve inside this repository."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["flows", "tasks", "blocks", "twoway"])
def test_package_resolves_inside_the_repository(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().is_relative_to(REPO), module.__file__


def test_flow_files_do_not_shadow_packages():
    import importlib.util

    for path in (REPO / "flows").glob("*.py"):
        if path.stem == "__init__":
            continue
        spec = importlib.util.find_spec(path.stem)
        assert spec is None, f"flows/{path.name} shares its name with an importable module"


def test_the_state_migrations_ship_in_the_package():
    # Alembic loads them from the installed package, so each folder must be a package
    # that setuptools finds with the project's own rule
    import tomllib

    from setuptools import find_packages

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(REPO, include=config["packages"]["find"]["include"]))
    assert {"twoway.migrations", "twoway.migrations.versions"} <= found
    assert "README.md" in config["package-data"]["twoway.migrations"]
    assert list((REPO / "twoway" / "migrations" / "versions").glob("0*.py"))
