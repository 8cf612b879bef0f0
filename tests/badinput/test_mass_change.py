"""The mass change guard: too many deletes or overwrites, or an empty extract, stop the
run before it writes anything, unless ``--allow-mass-change`` is given."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.syncrig import sync_rig
from twoway import cli
from twoway.engine import Runtime
from twoway.state import StateStore

N = 12


@pytest.fixture
def rig(tmp_path):
    with sync_rig(tmp_path) as rig:
        for i in range(N):
            rig.add("s0", f"p{i}@example.com", f"First{i}", "Lee")
        assert rig.run().systems["s1"]["created"] == N
        yield rig


def _plan(rig, capfd, *extra: str):
    code = cli.main(["plan", str(rig.path), *extra])
    return code, capfd.readouterr()


def test_deleting_more_than_the_share_stops_before_writing(rig, capfd):
    for i in range(4):  # 4 of 12 > 20 %, but below the floor of 10 deletes: allowed
        rig.delete("s0", f"p{i}@example.com")
    assert rig.run().systems["s1"]["deleted"] == 4
    for i in range(4):  # back to 12, then delete 10 of them
        rig.add("s0", f"q{i}@example.com")
    rig.run()
    for email in [r["email"] for r in rig.rows("s0")][:10]:
        rig.delete("s0", email)
    before = rig.rows("s1")
    code, out = _plan(rig, capfd)
    assert code == 1 and "Traceback" not in out.err
    assert "would delete 10 of 12 records in s1" in out.err and "--allow-mass-change" in out.err
    report = rig.run()
    assert report.status == "failed" and "would delete 10 of 12" in report.error
    assert rig.rows("s1") == before  # nothing was written
    allowed = rig.run(allow_mass_change=True)
    assert allowed.status == "completed" and allowed.systems["s1"]["deleted"] == 10


def test_overwriting_more_than_the_share_stops_before_writing(rig, capfd):
    for i in range(10):
        rig.edit("s0", f"p{i}@example.com", last_name="Bulk")
    before = rig.rows("s1")
    report = rig.run()
    assert report.status == "failed"
    assert "would overwrite values of 10 of 12 records in s1" in report.error
    assert rig.rows("s1") == before
    assert rig.run(allow_mass_change=True).systems["s1"]["updated"] == 10


def test_a_run_of_many_chunks_is_judged_whole_before_any_chunk_writes(rig):
    """With one-record chunks, no chunk alone overwrites ten records: the guard plans every
    chunk first and refuses the run before the first one writes."""
    for i in range(10):
        rig.edit("s0", f"p{i}@example.com", last_name="Bulk")
    before = rig.rows("s1")
    report = rig.run(runtime=Runtime(chunk_size=1))
    assert report.status == "failed" and report.chunks > 1
    assert "would overwrite values of 10 of 12 records in s1" in report.error
    assert rig.rows("s1") == before
    allowed = rig.run(runtime=Runtime(chunk_size=1), allow_mass_change=True)
    assert allowed.systems["s1"]["updated"] == 10


def test_an_empty_extract_is_a_fault_not_everything_deleted(rig):
    with rig.engines["s0"].begin() as conn:
        conn.execute(sa.delete(rig.tables["s0"]))
    before = rig.rows("s1")
    report = rig.run()
    assert report.status == "failed"
    assert "s0 returned none of its 12 known records (an empty extract)" in report.error
    assert rig.rows("s1") == before


def test_the_limit_is_configurable(tmp_path):
    with sync_rig(tmp_path, mass_change_limit=0.9) as rig:
        for i in range(N):
            rig.add("s0", f"p{i}@example.com")
        rig.run()
        for i in range(10):
            rig.delete("s0", f"p{i}@example.com")
        assert rig.run().systems["s1"]["deleted"] == 10  # 10 of 12 < 90 %


def test_the_guard_judges_the_share_exactly_at_its_edge(tmp_path):
    """The guard counts a system's linked records only as far as the run's changes need
    (a bounded count); at the edge of the share it still judges as the full count would:
    12 of 60 is 20 % (allowed), 13 of 60 is more (refused, naming all 60)."""
    with sync_rig(tmp_path) as rig:
        for i in range(60):
            rig.add("s0", f"p{i}@example.com", f"First{i}", "Lee")
        assert rig.run().systems["s1"]["created"] == 60
        for i in range(12):
            rig.edit("s0", f"p{i}@example.com", last_name="Edge")
        assert rig.run().systems["s1"]["updated"] == 12
        for i in range(13):
            rig.edit("s0", f"p{i}@example.com", last_name="Past")
        report = rig.run()
        assert report.status == "failed"
        assert "would overwrite values of 13 of 60 records in s1" in report.error
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    name = rig.definition.name
    counts = [store.live_count(name, "s1", at_most=k) for k in (None, 10, 60, 61)]
    store.close()
    assert counts == [60, 10, 60, 60]
