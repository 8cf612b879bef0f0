"""Two-way and N-way sync of real SQL tables (SQLite, PostgreSQL, MariaDB), and the same
scenarios with a collection of a real Directus server as the first system."""

from __future__ import annotations

import gc

import pytest
import sqlalchemy as sa
import yaml

from blocks.sql import SqlTable
from tasks.extract import extract_changes, extract_changes_task
from tests.syncrig import sync_rig
from twoway.engine import Observer, Runtime, open_store
from twoway.records import Mapping, Plan

BACKENDS = ["sqlite", "postgres", "mariadb", "directus"]


def writes(report) -> int:
    return sum(c["created"] + c["updated"] + c["deleted"] for c in report.systems.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_sync_links_matches_and_creates_the_rest(tmp_path, backend):
    with sync_rig(tmp_path, backend) as rig:
        rig.add("s0", "both@example.com", "Ann", "Lee", "111")
        rig.add("s1", "BOTH@example.com ", "Ann", "Lee")
        rig.add("s0", "crm-only@example.com", "Bo", "Crm", "222")
        rig.add("s1", "portal-only@example.com", "Cy", "Portal")
        report = rig.run()
        assert report.status == "completed"
        assert report.systems["s0"]["created"] == 1 and report.systems["s1"]["created"] == 1
        emails0 = [r["email"] for r in rig.rows("s0")]
        emails1 = [r["email"] for r in rig.rows("s1")]
        assert len(emails0) == len(set(emails0)) == 3
        assert len(emails1) == 3
        assert rig.row("s1", "crm-only@example.com")["phone"] == "222"
        assert rig.row("s1", "crm-only@example.com")["_by"] == "svc-sync"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_after_a_run_writes_nothing(tmp_path, backend):
    with sync_rig(tmp_path, backend) as rig:
        for i in range(7):
            rig.add("s0" if i % 2 else "s1", f"p{i}@example.com", f"F{i}", f"L{i}")
        first = rig.run()
        assert writes(first) == 7
        second = rig.run()
        assert writes(second) == 0
        assert second.systems["s0"]["echo_skipped"] + second.systems["s1"]["echo_skipped"] >= 7
        assert writes(rig.run()) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_field_changes_merge_and_conflicts_follow_last_writer(tmp_path, backend):
    with sync_rig(tmp_path, backend) as rig:
        rig.add("s0", "m@example.com", "Max", "Muster", "1")
        rig.run()
        rig.edit("s0", "m@example.com", first_name="Maxi")
        rig.edit("s1", "m@example.com", last_name="Mustermann")
        report = rig.run()
        assert report.conflicts == 0
        for system in ("s0", "s1"):
            row = rig.row(system, "m@example.com")
            assert (row["first_name"], row["last_name"]) == ("Maxi", "Mustermann")
        rig.edit("s1", "m@example.com", first_name="Early")
        rig.edit("s0", "m@example.com", first_name="Late")  # edited last: wins
        report = rig.run()
        assert report.conflicts == 1
        assert rig.row("s0", "m@example.com")["first_name"] == "Late"
        assert rig.row("s1", "m@example.com")["first_name"] == "Late"
        assert writes(rig.run()) == 0


@pytest.mark.parametrize("backend", ["sqlite", "directus"])
def test_prefer_policy_and_manual_hold(tmp_path, backend):
    with sync_rig(tmp_path, backend, conflicts="prefer s1") as rig:
        rig.add("s0", "p@example.com", "A", "B")
        rig.run()
        rig.edit("s1", "p@example.com", first_name="FromS1")
        rig.edit("s0", "p@example.com", first_name="FromS0")
        rig.run()
        assert rig.row("s0", "p@example.com")["first_name"] == "FromS1"
    with (
        sync_rig(tmp_path / "m", backend, conflicts="manual")
        if (tmp_path / "m").mkdir() is None
        else None as rig
    ):
        rig.add("s0", "q@example.com", "A", "B")
        rig.run()
        rig.edit("s1", "q@example.com", first_name="One", last_name="Merged")
        rig.edit("s0", "q@example.com", first_name="Two")
        report = rig.run()
        assert report.conflicts == 1
        assert rig.row("s0", "q@example.com")["first_name"] == "Two"  # held: nobody overwritten
        assert rig.row("s1", "q@example.com")["first_name"] == "One"
        assert rig.row("s0", "q@example.com")["last_name"] == "Merged"  # other fields still merge
        again = rig.run()
        assert again.conflicts == 0 and writes(again) == 0  # recorded once, still held


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_way_field_never_flows_backwards(tmp_path, backend):
    with sync_rig(tmp_path, backend, phone_direction="s0 -> s1") as rig:
        rig.add("s0", "o@example.com", "O", "W", "100")
        rig.add("s1", "dest@example.com", "D", "S", "555")
        rig.run()
        assert rig.row("s1", "o@example.com")["phone"] == "100"
        assert rig.row("s0", "dest@example.com")["phone"] is None  # not sent backwards on create
        assert rig.row("s1", "dest@example.com")["phone"] == "555"  # and not blanked
        rig.edit("s1", "o@example.com", phone="999")  # destination-side drift
        report = rig.run()
        assert writes(report) == 0
        assert rig.row("s0", "o@example.com")["phone"] == "100"
        rig.edit("s0", "o@example.com", phone="101")
        rig.run()
        assert rig.row("s1", "o@example.com")["phone"] == "101"


@pytest.mark.parametrize("backend", BACKENDS)
def test_delete_propagates_and_never_comes_back(tmp_path, backend):
    with sync_rig(tmp_path, backend) as rig:
        rig.add("s0", "d@example.com", "D", "E")
        rig.add("s0", "keep@example.com", "K", "E")
        rig.run()
        rig.delete("s1", "d@example.com")
        report = rig.run()
        assert report.systems["s0"]["deleted"] == 1
        assert rig.row("s0", "d@example.com") is None
        assert writes(rig.run()) == 0
        assert rig.row("s1", "d@example.com") is None
        assert rig.data("s0") == rig.data("s1") == [("keep@example.com", "K", "E", None)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_keys_are_listed_only_when_the_count_says_a_record_went(tmp_path, backend, monkeypatch):
    """An incremental run lists every key of a table only when the table's count of keys
    differs from what the ID map and the read account for (a hard delete)."""
    listed = []
    list_keys = SqlTable.list_keys
    monkeypatch.setattr(SqlTable, "list_keys", lambda self: listed.append(1) or list_keys(self))
    with sync_rig(tmp_path, backend) as rig:
        rig.add("s0", "a@example.com", "A", "E")
        rig.add("s0", "b@example.com", "B", "E")
        rig.run()  # full reads: the keys read are the live keys
        rig.run()
        rig.add("s1", "c@example.com", "C", "E")
        rig.edit("s0", "a@example.com", first_name="Changed")
        assert writes(rig.run()) == 2 and listed == []
        rig.delete("s1", "b@example.com")
        report = rig.run()
        assert report.systems["s0"]["deleted"] == 1 and listed == [1]


def test_deletes_ignore_keeps_the_other_side(tmp_path):
    with sync_rig(tmp_path, deletes="ignore") as rig:
        rig.add("s0", "i@example.com", "I", "G")
        rig.run()
        rig.delete("s1", "i@example.com")
        assert writes(rig.run()) == 0
        assert rig.data("s0") == [("i@example.com", "I", "G", None)]
        rig.edit("s0", "i@example.com", first_name="Changed")
        assert writes(rig.run()) == 0  # not recreated in s1
        assert rig.row("s1", "i@example.com") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_integration_account_edit_with_other_values_is_a_real_change(tmp_path, backend):
    with sync_rig(tmp_path, backend) as rig:
        rig.add("s0", "lu@example.com", "Lost", "Update")
        rig.run()
        # someone using the integration account's name edits after our write
        table, engine = rig.tables["s1"], rig.engines["s1"]
        key_col = rig.layout["s1"][0]
        with engine.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c[key_col] == int(rig.key_of("s1", "lu@example.com")))
                .values(
                    {
                        rig.col("s1", "first_name"): "Kept",
                        "editor": "svc-sync",
                        "modified": sa.func.current_timestamp(),
                    }
                )
            )
        report = rig.run()
        assert report.systems["s0"]["updated"] == 1
        assert rig.row("s0", "lu@example.com")["first_name"] == "Kept"


def test_dry_run_writes_nothing_anywhere(tmp_path):
    with sync_rig(tmp_path) as rig:
        rig.add("s0", "a@example.com")
        rig.add("s1", "b@example.com")
        before = (rig.rows("s0"), rig.rows("s1"))
        report = rig.run(dry_run=True)
        assert report.systems["s1"]["created"] == 1 and report.systems["s0"]["created"] == 1
        assert (rig.rows("s0"), rig.rows("s1")) == before
        state = sa.create_engine(rig.doc["state"])
        with state.connect() as conn:
            for table in ("id_map", "shadow", "cursors", "dead_letters", "conflicts"):
                assert conn.execute(sa.text(f"select count(*) from {table}")).scalar() == 0, table
        state.dispose()
        report = rig.run()
        assert report.systems["s1"]["created"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_systems_converge(tmp_path, backend):
    with sync_rig(tmp_path, backend, systems=3) as rig:
        rig.add("s0", "x@example.com", "X", "Zero")
        rig.add("s1", "y@example.com", "Y", "One")
        rig.add("s2", "z@example.com", "Z", "Two")
        rig.add("s2", "x@example.com", "X", "Zero")
        rig.run()
        rig.edit("s2", "y@example.com", first_name="Yvonne")
        rig.edit("s1", "x@example.com", last_name="Ones")
        rig.delete("s0", "z@example.com")
        rig.run()
        assert rig.data("s0") == rig.data("s1") == rig.data("s2")
        assert [r["email"] for r in rig.rows("s0")] == ["x@example.com", "y@example.com"]
        assert rig.row("s0", "y@example.com")["first_name"] == "Yvonne"
        assert rig.row("s2", "x@example.com")["last_name"] == "Ones"
        assert writes(rig.run()) == 0


def test_a_system_a_one_way_run_leaves_out_takes_the_change_in_the_next_two_way_run(tmp_path):
    # s0 -> s1 carries Xena to s1 only; s2 must get it from the next two-way run, and an
    # edit of another field in s2 meanwhile must not bring X back over Xena
    with sync_rig(tmp_path, "sqlite", systems=3) as rig:
        rig.add("s0", "x@example.com", "X", "Zero")
        rig.add("s0", "y@example.com", "Y", "Zero")
        rig.run()
        rig.edit("s0", "x@example.com", first_name="Xena")
        rig.edit("s0", "y@example.com", first_name="Yara")
        report = rig.run(sources={"s0"}, targets={"s1"})
        assert report.systems["s1"]["updated"] == 2 and report.systems["s2"]["updated"] == 0
        assert writes(rig.run(sources={"s0"}, targets={"s1"})) == 0
        assert rig.row("s2", "x@example.com")["first_name"] == "X"
        rig.edit("s2", "y@example.com", phone="555")
        report = rig.run()
        assert report.systems["s2"]["updated"] == 2
        assert rig.data("s0") == rig.data("s1") == rig.data("s2")
        assert [r["first_name"] for r in rig.rows("s2")] == ["Xena", "Yara"]
        assert rig.row("s0", "y@example.com")["phone"] == "555"
        assert writes(rig.run()) == 0


def test_one_way_runs_into_each_system_in_turn_converge_and_leave_nothing_pending(tmp_path):
    with sync_rig(tmp_path, "sqlite", systems=3) as rig:
        rig.add("s0", "x@example.com", "X", "Zero")
        rig.run()
        rig.edit("s0", "x@example.com", first_name="Xena")
        assert rig.run(sources={"s0"}, targets={"s1"}).systems["s1"]["updated"] == 1
        assert rig.run(sources={"s0"}, targets={"s2"}).systems["s2"]["updated"] == 1
        assert rig.data("s0") == rig.data("s1") == rig.data("s2")
        assert writes(rig.run()) == 0
        assert writes(rig.run(sources={"s0"}, targets={"s1"})) == 0


def test_a_delete_a_one_way_run_carries_to_one_system_reaches_the_third_later(tmp_path):
    # found by the one-way harness: s0 -> s1 deleted s1's twin and forgot the deletion, so
    # s2's twin stayed for good; a failed write's dead letter was likewise resolved by a
    # one-way run that did not write to the system it was for
    with sync_rig(tmp_path, "sqlite", systems=3) as rig:
        rig.add("s0", "x@example.com", "X", "Zero")
        rig.add("s0", "y@example.com", "Y", "Zero")
        rig.run()
        rig.delete("s0", "x@example.com")
        report = rig.run(sources={"s0"}, targets={"s1"})
        assert report.systems["s1"]["deleted"] == 1 and report.systems["s2"]["deleted"] == 0
        assert writes(rig.run(sources={"s0"}, targets={"s1"})) == 0
        assert rig.data("s2") == [
            ("x@example.com", "X", "Zero", None),
            ("y@example.com", "Y", "Zero", None),
        ]
        report = rig.run()
        assert report.systems["s2"]["deleted"] == 1
        assert [[r["email"] for r in rig.rows(s)] for s in ("s0", "s1", "s2")] == [
            ["y@example.com"]
        ] * 3
        assert writes(rig.run()) == 0


def test_a_one_way_run_leaves_the_dead_letter_of_a_system_it_does_not_write_to(tmp_path):
    with sync_rig(tmp_path, "sqlite", systems=3) as rig:
        rig.add("s0", "x@example.com", "X", "Zero")
        rig.run()
        table = rig.tables["s1"].name
        with rig.engines["s1"].begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse BEFORE UPDATE ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        rig.edit("s0", "x@example.com", first_name="Xena")
        report = rig.run()
        assert report.systems["s1"]["failed"] == 1 and report.systems["s2"]["updated"] == 1
        with rig.engines["s1"].begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse")
        store = open_store(rig.definition)
        try:
            assert store.retry_dead_letters(rig.definition.name) == 1  # due now
            # s2 -> s0 takes the letter's link up, and neither writes s1 nor settles it
            assert writes(rig.run(sources={"s2"}, targets={"s0"})) == 0
            assert len(store.open_dead_letters(rig.definition.name)) == 1
            store.retry_dead_letters(rig.definition.name)
        finally:
            store.close()
        assert rig.run().systems["s1"]["updated"] == 1
        assert [rig.row(s, "x@example.com")["first_name"] for s in ("s0", "s1", "s2")] == [
            "Xena"
        ] * 3


def test_a_record_whose_system_does_not_map_a_changed_field_keeps_its_own_values(tmp_path):
    # s2 does not map phone: when s0 sets a phone the link's base moves without s2's record,
    # which the state held as "the base"; it must keep the values it had
    with sync_rig(tmp_path, "sqlite", systems=3) as rig:
        del rig.doc["fields"]["phone"]["s2"]
        rig.path.write_text(yaml.safe_dump(rig.doc))
        rig.add("s0", "x@example.com", "X", "Zero")
        rig.run()
        rig.edit("s0", "x@example.com", phone="555")
        assert rig.run().systems["s1"]["updated"] == 1
        store = open_store(rig.definition)
        try:
            with store.engine.connect() as conn:
                link = conn.execute(
                    sa.text("select link_id from id_map where system = 's2'")
                ).scalar()
            seen = {m.system: m.seen for m in store.members_of(rig.definition.name, [link])[link]}
        finally:
            store.close()
        assert seen["s2"] == {"email": "x@example.com", "first_name": "X", "last_name": "Zero"}
        assert seen["s1"]["phone"] == "555"


def test_a_held_conflict_decided_by_a_person_is_applied_next_run(tmp_path):
    from twoway.state import StateStore

    with sync_rig(tmp_path, conflicts="manual") as rig:
        rig.add("s0", "h@example.com", "A", "B")
        rig.run()
        rig.edit("s1", "h@example.com", first_name="Left")
        rig.edit("s0", "h@example.com", first_name="Right")
        assert rig.run().conflicts == 1
        store = StateStore(rig.doc["state"])
        (conflict,) = store.open_conflicts(rig.doc["name"])
        assert conflict["candidates"] == {"s0": "Right", "s1": "Left"}
        store.decide_conflict(rig.doc["name"], conflict["id"], system="s1")
        report = rig.run()
        assert report.systems["s0"]["updated"] == 1
        assert rig.row("s0", "h@example.com")["first_name"] == "Left"
        assert (
            store.open_conflicts(rig.doc["name"]) == []
            and store.decided_conflicts(rig.doc["name"]) == []
        )
        assert writes(rig.run()) == 0
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_creates_with_and_without_optional_values_in_one_batch(tmp_path, backend):
    with sync_rig(tmp_path, backend) as rig:
        rig.add("s0", "with@example.com", "W", "P", "123")
        rig.add("s0", "without@example.com", "N", "P", None)
        report = rig.run()
        assert report.systems["s1"]["created"] == 2, report.failures
        assert rig.row("s1", "with@example.com")["phone"] == "123"
        assert rig.row("s1", "without@example.com")["phone"] is None


def test_the_definitions_chunk_size_sets_the_runs_checkpoints(tmp_path):
    with sync_rig(tmp_path, chunk_size=2) as rig:
        for i in range(7):
            rig.add("s0", f"c{i}@example.com", f"F{i}")
        assert rig.definition.chunk_size == 2
        planned: list[int] = []

        class Chunks(Observer):
            def chunk(self, index, total, writes):
                planned.append(index)

        report = rig.run(runtime=Runtime(observer=Chunks()))
        assert report.status == "completed" and report.chunks >= 4
        assert planned == list(range(report.chunks))
        assert sorted(r["email"] for r in rig.rows("s1")) == [f"c{i}@example.com" for i in range(7)]
        # the runtime's own size wins over the definition's: one chunk for all of them
        rig.add("s0", "late@example.com")
        assert rig.run(runtime=Runtime(chunk_size=50_000)).chunks == 1


def test_a_run_holds_one_chunk_at_a_time(tmp_path):
    """When a chunk's planning starts, the chunk before it (its records, links, plan) is
    gone: memory is one chunk's, whatever the number of chunks."""
    plans: list[int] = []

    class Counting(Observer):
        def step(self, name, ended):
            if name == "map IDs" and not ended:
                plans.append(sum(isinstance(o, (Plan, Mapping)) for o in gc.get_objects()))

    with sync_rig(tmp_path, chunk_size=2) as rig:
        for i in range(9):
            rig.add("s0", f"k{i}@example.com")
        report = rig.run(runtime=Runtime(observer=Counting()))
    assert report.status == "completed" and report.chunks >= 3
    assert plans == [0] * report.chunks


def test_a_run_pauses_the_garbage_collector_and_restores_it(tmp_path):
    seen: list[bool] = []

    class Watching(Observer):
        def step(self, name, ended):
            seen.append(gc.isenabled())

    with sync_rig(tmp_path) as rig:
        rig.add("s0", "gc@example.com")
        assert gc.isenabled()
        report = rig.run(runtime=Runtime(observer=Watching()))
        assert report.status == "completed" and report.seconds > 0
        assert seen and not any(seen)  # paused for every step
        assert gc.isenabled()  # and back on after the run
        gc.disable()
        rig.run()
        assert not gc.isenabled()  # a caller that had it off keeps it off
        gc.enable()


def test_a_full_read_keeps_only_each_systems_changes(tmp_path, monkeypatch):
    """A full reconciliation of a large sync must not hold every record of every system:
    what each extract step hands on is its system's changes, not its read."""
    extracts = {}

    def watching(*args, **kwargs):
        result = extract_changes(*args, **kwargs)
        extracts[result.system] = result
        return result

    with sync_rig(tmp_path) as rig:
        for n in range(30):
            rig.add("s0", f"p{n}@example.com")
        rig.run()
        rig.run()  # the echoes of the first run's writes are read back
        rig.edit("s0", "p3@example.com", first_name="Changed")
        monkeypatch.setattr(extract_changes_task, "fn", watching)
        report = rig.run(full=True)
    assert report.status == "completed"
    assert report.systems["s0"]["extracted"] == 30 and report.systems["s1"]["extracted"] == 30
    assert report.systems["s1"]["updated"] == 1
    assert {s: e.changed for s, e in extracts.items()} == {"s0": 1, "s1": 0}
    assert {s: e.unchanged + e.echo_skipped for s, e in extracts.items()} == {"s0": 29, "s1": 30}


def test_a_record_touched_without_a_change_keeps_what_the_state_saw_of_it(tmp_path):
    # a record saved again with the same values moves its version only: the run writes the
    # new version to the ID map and keeps the values it saw there (the read loads rows
    # without them); a lost copy would make later runs take the record for empty and write
    # it every field again
    with sync_rig(tmp_path, "sqlite") as rig:
        rig.add("s0", "t@example.com", "Tess", "Same")
        rig.run()
        key = rig.key_of("s1", "t@example.com")

        def id_map_row() -> tuple:
            store = open_store(rig.definition)
            try:
                with store.engine.connect() as conn:
                    query = "SELECT seen, version FROM id_map WHERE system='s1' AND external_id=:k"
                    return tuple(conn.execute(sa.text(query), {"k": key}).one())
            finally:
                store.engine.dispose()

        seen, version = id_map_row()
        rig.edit("s1", "t@example.com", first_name="Tess")  # saved, nothing changed
        assert writes(rig.run()) == 0
        seen_after, version_after = id_map_row()
        assert version_after != version  # the compare-and-set of the next write needs it
        assert seen_after == seen and seen_after is not None
