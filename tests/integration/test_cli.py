"""The twoway command as a user runs it: exit codes, one clear line per problem, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import sqlalchemy as sa

from tests.syncrig import sync_rig
from twoway import cli


def twoway(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twoway.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_check_accepts_a_good_definition(tmp_path):
    with sync_rig(tmp_path) as rig:
        result = twoway("check", str(rig.path))
        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout


def test_check_names_missing_columns_and_tables(tmp_path):
    with sync_rig(tmp_path) as rig:
        text = rig.path.read_text().replace("fname", "first_nm", 1)
        rig.path.write_text(text.replace(f"table: {rig.tables['s0'].name}", "table: nosuch"))
        result = twoway("check", str(rig.path))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert any(
            str(rig.path) in line
            and "systems.s0" in line
            and "'nosuch'" in line
            and "does not exist" in line
            for line in lines
        )
        assert any(
            "fields.first_name.s1" in line and "'first_nm' does not exist" in line for line in lines
        )


def test_bad_definitions_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsystems: {a: {kind: sql}\n")
    for command in ("run", "check", "plan", "status"):
        result = twoway(command, str(bad))
        assert result.returncode == 2, (command, result.stderr)
        assert "invalid YAML" in result.stderr and str(bad) in result.stderr
        assert "Traceback" not in result.stderr
    missing = twoway("run", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_bad_command_line_exits_2():
    assert twoway("frobnicate").returncode == 2
    assert twoway("run").returncode == 2


def test_schema_prints_json():
    result = twoway("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "twoway sync definition"


def test_plan_status_and_deadletters(tmp_path, capsys):
    with sync_rig(tmp_path) as rig:
        rig.add("s0", "plan@example.com", "Pia", "Lan")
        assert cli.main(["plan", str(rig.path)]) == 0
        out = capsys.readouterr().out
        assert "create" in out and "plan@example.com" in out and "s1" in out
        assert rig.row("s1", "plan@example.com") is None  # the plan wrote nothing
        rig.run()
        assert cli.main(["status", str(rig.path)]) == 0
        out = capsys.readouterr().out
        assert (
            "s0: 1 linked records" in out and "s1: 1 linked records" in out and "completed" in out
        )
        assert cli.main(["status", str(rig.path), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["linked"] == {"s0": 1, "s1": 1}
        assert cli.main(["deadletters", "list", str(rig.path)]) == 0
        assert "no dead letters" in capsys.readouterr().out


def test_a_refused_record_is_parked_and_retried(tmp_path, capsys):
    with sync_rig(tmp_path) as rig:
        with rig.engines["s1"].begin() as conn:  # s1 refuses one value
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER refuse BEFORE INSERT ON {rig.tables['s1'].name} "
                    "WHEN NEW.fname = 'Bad' BEGIN SELECT RAISE(ABORT, 'fname Bad refused'); END"
                )
            )
        rig.add("s0", "good@example.com", "Good")
        rig.add("s0", "bad@example.com", "Bad")
        report = rig.run()
        assert report.systems["s1"]["created"] == 1 and report.systems["s1"]["failed"] == 1
        assert rig.data("s1") == [("good@example.com", "Good", "Lee", None)]
        assert cli.main(["deadletters", "list", str(rig.path)]) == 0
        out = capsys.readouterr().out
        assert "fname Bad refused" in out
        with rig.engines["s1"].begin() as conn:
            conn.execute(sa.text("DROP TRIGGER refuse"))
        report = rig.run()  # parked records are retried on the next run
        assert report.systems["s1"]["created"] == 1
        assert rig.row("s1", "bad@example.com")["first_name"] == "Bad"
        assert cli.main(["deadletters", "list", str(rig.path)]) == 0
        assert "no dead letters" in capsys.readouterr().out
