"""People's decisions on real SQLite tables: what the review lists, recording a decision
with who and when, the next run writing it and naming it, a decision made elsewhere
meanwhile kept, dead letters retried or dropped, the overview's counts, and the schema
migration that adds the columns."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.sqlrig import server_url
from tests.syncrig import sync_rig
from twoway.engine import open_store
from twoway.overview import overview_markdown
from twoway.review import (
    Decisions,
    apply_decisions,
    decision_line,
    pending,
    resolve_conflict,
)
from twoway.state import SCHEMA_VERSION, StateStore


def _refuse_updates(rig, system: str) -> None:
    with rig.engines[system].begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TRIGGER refuse BEFORE UPDATE ON {rig.tables[system].name} "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )


def _allow_updates(rig, system: str) -> None:
    with rig.engines[system].begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse")


def _held_and_parked(rig) -> None:
    """One conflict held on h@ (first_name) and one write to s1 parked (p@'s last name)."""
    rig.add("s0", "h@example.com", "A", "B")
    rig.add("s0", "p@example.com", "P", "Q")
    rig.run()
    rig.edit("s1", "h@example.com", first_name="Left")
    rig.edit("s0", "h@example.com", first_name="Right")
    assert rig.run().conflicts == 1
    _refuse_updates(rig, "s1")
    rig.edit("s0", "p@example.com", last_name="Parked")
    assert rig.run().systems["s1"]["failed"] == 1


@pytest.fixture
def held(tmp_path):
    """A rig with one conflict held and one record parked, and its state store open."""
    with sync_rig(tmp_path, conflicts="manual") as rig:
        _held_and_parked(rig)
        store = open_store(rig.definition)
        try:
            yield rig, store
        finally:
            store.close()


def test_the_review_lists_both_values_when_each_changed_and_the_match_value(held):
    rig, store = held
    waiting = pending(rig.definition, store)
    (conflict,) = waiting.conflicts
    assert conflict.field == "first_name" and conflict.match == "h@example.com"
    assert conflict.candidates == {"s0": "Right", "s1": "Left"}
    assert set(conflict.changed_at) == {"s0", "s1"}
    assert conflict.changed_at["s1"] < conflict.changed_at["s0"]  # s1 was edited first
    (letter,) = waiting.letters
    assert (letter.system, letter.record, letter.operation) == ("s1", "p@example.com", "update")
    assert "refused by a trigger" in letter.error and letter.attempts == 1


def test_decisions_are_recorded_with_who_and_when_and_the_next_run_names_them(held):
    rig, store = held
    waiting = pending(rig.definition, store)
    conflict, letter = waiting.conflicts[0], waiting.letters[0]
    _allow_updates(rig, "s1")
    made, lines = apply_decisions(
        rig.definition,
        store,
        Decisions(keep={conflict.id: "s1"}, letters={letter.id: "retry"}),
        by="ui",
    )
    assert made == 2
    assert lines == [
        f"conflict #{conflict.id} decided: keep s1 for first_name",
        f"dead letter #{letter.id} retried on the next run",
    ]
    (decided,) = store.decided_conflicts(rig.doc["name"])
    assert decided["decided_by"] == "ui" and decided["decided_at"] is not None
    report = rig.run()
    assert rig.row("s0", "h@example.com")["first_name"] == "Left"
    assert rig.row("s1", "p@example.com")["last_name"] == "Parked"
    assert store.decided_conflicts(rig.doc["name"]) == []
    assert store.open_dead_letters(rig.doc["name"]) == []
    written = [decision_line(d) for d in report.decisions]
    assert written[0].startswith(
        f"conflict #{conflict.id} decided: kept s1 for first_name (by ui, "
    )
    assert written[1].startswith(f"dead letter #{letter.id} retried (by ui, ")
    assert written[1].endswith(": written")


def test_a_conflict_decided_elsewhere_meanwhile_is_not_decided_twice(held):
    rig, store = held
    (conflict,) = pending(rig.definition, store).conflicts
    resolve_conflict(rig.definition, store, conflict.id, keep="s0", by="alice")
    made, lines = apply_decisions(
        rig.definition, store, Decisions(values={conflict.id: "Mine"}), by="ui"
    )
    (decided,) = store.decided_conflicts(rig.doc["name"])
    assert made == 0
    assert lines == [
        f"conflict #{conflict.id}: left as it is "
        f"(conflict #{conflict.id} is not open (it is decided))"
    ]
    assert (decided["chosen"], decided["decided_by"]) == ("Right", "alice")
    _allow_updates(rig, "s1")
    rig.run()
    assert rig.row("s1", "h@example.com")["first_name"] == "Right"


def test_a_dropped_dead_letter_is_not_tried_again(held):
    rig, store = held
    _allow_updates(rig, "s1")
    (letter,) = pending(rig.definition, store).letters
    assert apply_decisions(
        rig.definition, store, Decisions(letters={letter.id: "drop"}), by="ui"
    ) == (1, [f"dead letter #{letter.id} dropped"])
    assert apply_decisions(
        rig.definition, store, Decisions(letters={letter.id: "retry"}), by="ui"
    ) == (0, [f"dead letter #{letter.id}: left as it is (it is no longer open)"])
    with store.engine.connect() as conn:
        row = conn.execute(sa.text("select decision, decided_by from dead_letters")).one()
    assert tuple(row) == ("drop", "ui")
    report = rig.run()
    assert report.decisions == [] and report.systems["s1"]["updated"] == 0
    assert rig.row("s1", "p@example.com")["last_name"] == "Q"


def test_the_overview_counts_per_system_and_marks_new_dead_letters(held):
    rig, store = held
    markdown, summary = overview_markdown(rig.definition, store)
    assert (
        summary == f"{rig.doc['name']}: 4 linked records, 1 open conflicts, 1 dead letters (1 new)"
    )
    rows = {line.split(" | ")[0]: line for line in markdown.splitlines() if line.startswith("| s")}
    assert rows["| s0"].startswith("| s0 | 2 | 1 | 0 | 0 | ")
    assert rows["| s1"].startswith("| s1 | 2 | 1 | 1 | 1 | ")
    assert "| none |" not in rows["| s1"]
    assert "**new** | s1 | p@example.com | update | 1 |" in markdown
    assert "## Last runs" in markdown and markdown.count("| completed |") == 3
    assert f"`twoway-review/{rig.doc['name']}-review`" in markdown


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mariadb"])
def test_an_older_store_gets_the_decision_columns(tmp_path, backend):
    url = server_url(backend, tmp_path)
    store = StateStore(url)
    store.migrate()
    with store.engine.begin() as conn:
        for table, column in (
            ("conflicts", "changed_at"),
            ("conflicts", "decided_by"),
            ("conflicts", "decided_at"),
            ("dead_letters", "decision"),
            ("dead_letters", "decided_by"),
            ("dead_letters", "decided_at"),
        ):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.exec_driver_sql(f"DELETE FROM twoway_schema WHERE version = {SCHEMA_VERSION}")
        conn.exec_driver_sql(
            f"UPDATE twoway_alembic_version SET version_num = '{SCHEMA_VERSION - 1:04d}'"
        )
    store.close()
    again = StateStore(url)
    try:
        assert again.migrate() == SCHEMA_VERSION - 1
        columns = {c["name"] for c in sa.inspect(again.engine).get_columns("dead_letters")}
        assert {"decision", "decided_by", "decided_at"} <= columns
        assert again.open_conflicts("any") == [] and again.retry_dead_letters("any", by="x") == 0
    finally:
        again.close()
