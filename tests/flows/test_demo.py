"""The demos, the main job of the README, run to completion and every expectation holds."""

from __future__ import annotations

import os

import pytest

from twoway.demo import SECRET_VARIABLE, run_demo, run_sql_demo

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_sharepoint_demo_runs_and_checks_its_own_results(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert run_demo(folder, records=60) == 0
    out = capsys.readouterr().out
    assert "[FAILED]" not in out
    assert out.count("[ok]") >= 8
    # the definition names the secret's variable, never the secret; the variable is gone
    text = (folder / "sharepoint-demo.sync.yaml").read_text()
    assert "client_secret: ${" + SECRET_VARIABLE + "}" in text
    assert SECRET_VARIABLE not in os.environ


def test_sql_demo_runs_and_checks_its_own_results(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert run_sql_demo(folder, records=60) == 0
    out = capsys.readouterr().out
    assert "[FAILED]" not in out
    assert out.count("[ok]") >= 6
    # the files the `contacts` deployment (syncs/contacts.sync.yaml) keeps in step
    assert (folder / "crm.db").is_file() and (folder / "portal.db").is_file()
