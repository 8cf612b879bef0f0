"""The demo, the main job of the README, runs to completion and every expectation holds."""

from __future__ import annotations

import pytest

from twoway.demo import run_demo

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_demo_runs_and_checks_its_own_results(tmp_path, capsys):
    assert run_demo(tmp_path / "demo", records=60) == 0
    out = capsys.readouterr().out
    assert "[FAILED]" not in out
    assert out.count("[ok]") >= 6
