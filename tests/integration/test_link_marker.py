"""Link markers on SQL tables and Directus collections: `twoway init` adds the column (the
field), every create carries its link id, and a create whose run died is found by it even
after a person edited the copy."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa
import yaml

from tests.crash import Crash as Died
from tests.crash import CrashAt
from tests.syncrig import sync_rig
from twoway.engine import Runtime

BACKENDS = ["sqlite", "postgres", "mariadb"]


def twoway(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twoway.cli", *args], capture_output=True, text=True, timeout=120
    )


def mark(rig, system: str) -> None:
    doc = yaml.safe_load(rig.path.read_text())
    doc["systems"][system]["link_column"] = "twoway_link"
    rig.path.write_text(yaml.safe_dump(doc))


def init_adds_the_marker(rig, marked: str, unmarked: str) -> None:
    """`twoway check` asks for the marker of ``marked``, `twoway init` adds it once, then
    check passes with one note: ``unmarked`` has no marker."""
    mark(rig, marked)
    before = twoway("check", str(rig.path))
    assert before.returncode == 2
    assert before.stderr.strip().splitlines() == [
        f"error: {rig.path}: systems.{marked}.link_column: column 'twoway_link' does not exist "
        f"(`twoway init {rig.path}` adds it)"
    ]
    first = twoway("init", str(rig.path))
    assert first.returncode == 0, first.stderr
    assert f"systems.{marked}: link column 'twoway_link' added" in first.stdout.splitlines()
    again = twoway("init", str(rig.path))
    assert f"systems.{marked}: link column 'twoway_link' present" in again.stdout.splitlines()
    check = twoway("check", str(rig.path))
    assert check.returncode == 0, check.stderr
    notes = [line for line in check.stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith(f"note: systems.{unmarked} has no link marker")


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_adds_the_column_that_check_asks_for(tmp_path, backend):
    with sync_rig(tmp_path, backend) as rig:
        init_adds_the_marker(rig, "s1", "s0")
        table = rig.tables["s1"]
        columns = sa.inspect(rig.engines["s1"]).get_columns(table.name)
        assert [c["name"] for c in columns][-1] == "twoway_link"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_create_edited_by_a_person_is_found_by_its_marker(tmp_path, backend):
    with sync_rig(tmp_path, backend) as rig:
        mark(rig, "s1")
        assert twoway("init", str(rig.path)).returncode == 0
        rig.add("s0", "ann@example.com", "Ann", "Lee", "1")
        rig.add("s0", "bo@example.com", "Bo", "Day", "2")
        with pytest.raises(Died):  # the creates reached s1, the state never heard of them
            rig.run(runtime=Runtime(observer=CrashAt("load s1", after=True)))
        table = sa.Table(rig.tables["s1"].name, sa.MetaData(), autoload_with=rig.engines["s1"])
        with rig.engines["s1"].connect() as conn:
            marks = conn.execute(sa.select(table.c.twoway_link)).scalars().all()
        assert len(marks) == 2 and all(len(m) >= 32 for m in marks) and len(set(marks)) == 2
        # a person changes the match_on value of one copy before any run reads it back
        key = rig.key_of("s1", "ann@example.com")
        rig.people["s1"].update(key, {rig.col("s1", "email"): "ann.lee@example.com"})
        report = rig.run()
        assert report.status == "completed", report.error
        assert report.systems["s1"]["created"] == 0 and report.systems["s0"]["created"] == 0
        assert [r["email"] for r in rig.rows("s1")] == ["ann.lee@example.com", "bo@example.com"]
        assert [r["email"] for r in rig.rows("s0")] == ["ann.lee@example.com", "bo@example.com"]
        assert rig.row("s0", "ann.lee@example.com")["phone"] == "1"


def test_a_directus_collection_gets_its_link_field_from_init_and_finds_a_lost_create(tmp_path):
    """`twoway init` adds the field through Directus's API; the items a dead run created
    carry their link ids and rejoin their links, match_on value changed or not."""
    with sync_rig(tmp_path, "directus") as rig:
        init_adds_the_marker(rig, "s0", "s1")
        rig.add("s1", "ann@example.com", "Ann", "Lee", "1")
        rig.add("s1", "bo@example.com", "Bo", "Day", "2")
        with pytest.raises(Died):  # the creates reached Directus, the state never heard of them
            rig.run(runtime=Runtime(observer=CrashAt("load s0", after=True)))
        server, collection = rig.directus["s0"]
        items = server.api("GET", f"/items/{collection}", params={"limit": "-1"})
        marks = [item["twoway_link"] for item in items]
        assert len(marks) == 2 and all(len(m) >= 32 for m in marks) and len(set(marks)) == 2
        key = rig.key_of("s0", "ann@example.com")
        rig.people["s0"].update(key, {rig.col("s0", "email"): "ann.lee@example.com"})
        report = rig.run()
        assert report.status == "completed", report.error
        assert report.systems["s0"]["created"] == 0 and report.systems["s1"]["created"] == 0
        assert [r["email"] for r in rig.rows("s0")] == ["ann.lee@example.com", "bo@example.com"]
        assert [r["email"] for r in rig.rows("s1")] == ["ann.lee@example.com", "bo@example.com"]
        assert rig.row("s1", "ann.lee@example.com")["phone"] == "1"
