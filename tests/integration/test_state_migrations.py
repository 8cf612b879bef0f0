"""The state store's schema migrations (Alembic) on SQLite, PostgreSQL and MariaDB: a new
store, a store made before Alembic upgraded in place with its rows, the tables of
twoway/state.py matching what the migrations make, and a store newer than the code
refused in one line."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tests.badinput.rig import no_traceback, twoway
from tests.sqlrig import empty_database
from twoway import migrations, state
from twoway.migrations import LEGACY_TABLE, VERSION_TABLE, StateTooNew
from twoway.state import SCHEMA_VERSION, Link, StateChanges, StateStore

BACKENDS = ["sqlite", "postgres", "mariadb"]
HERE = Path(__file__).parent
DIALECT_FILE = {"sqlite": "sqlite", "postgres": "postgresql", "mariadb": "mariadb"}
T = datetime(2026, 5, 1, 12, 0, 0)

# a store's rows as twoway wrote them before Alembic: table -> rows
ROWS = {
    "id_map": [
        {"sync": "s", "system": "crm", "external_id": "1", "link_id": "L1", "seen": "=",
         "seen_hash": "h1", "version": "v1", "deleted_at": None},
        {"sync": "s", "system": "portal", "external_id": "9", "link_id": "L1",
         "seen": '{"email":"ann@example.com","name":"Ann B"}', "seen_hash": "h2",
         "version": None, "deleted_at": None},
    ],
    "shadow": [
        {"sync": "s", "link_id": "L1", "base": '{"email":"ann@example.com","name":"Ann"}',
         "match_key": "mk", "deleted_at": None, "updated_at": T},
    ],
    "cursors": [{"sync": "s", "system": "crm", "scope": "*", "cursor": "c1", "updated_at": T}],
    "conflicts": [
        {"sync": "s", "link_id": "L1", "field": "name", "status": "open", "policy": "manual",
         "winner": None, "candidates": '{"crm":"Ann","portal":"Ann B"}', "chosen": None,
         "run_id": "r1", "detected_at": T, "resolved_at": None},
    ],
    "dead_letters": [
        {"sync": "s", "system": "portal", "link_id": "L1", "external_id": "9",
         "operation": "update", "payload": "{}", "error": "refused", "kind": "failed",
         "attempts": 2, "first_seen": T, "last_seen": T, "next_attempt_at": T,
         "resolved_at": None},
    ],
    "runs": [
        {"id": "r1", "sync": "s", "started_at": T, "finished_at": T, "status": "completed",
         "dry_run": False, "summary": "{}", "error": None},
    ],
    "intents": [
        {"sync": "s", "system": "portal", "link_id": "L2", "run_id": "r1", "values_hash": "vh",
         "members": '[["crm","2"]]', "created_at": T},
    ],
}  # fmt: skip


def make_store_before_alembic(url: str, backend: str, version: int) -> None:
    """A state store as twoway made it before Alembic, at schema ``version`` (6: the last
    such; 5 or 2: older), with a row or two in each table (an intent needs version 2)."""
    ddl = HERE / ("state_v6" if version == 6 else "state_v5") / f"{DIALECT_FILE[backend]}.sql"
    statements = ddl.read_text().split(";\n")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            sql = "\n".join(ln for ln in statement.splitlines() if not ln.startswith("--"))
            if sql.strip() and not (version < 3 and "ix_id_map_live" in sql):
                conn.exec_driver_sql(sql)
        if version < 4:
            conn.exec_driver_sql("ALTER TABLE shadow ADD COLUMN base_hash VARCHAR(32)")
        conn.execute(
            sa.text(f"INSERT INTO {LEGACY_TABLE} (version, applied_at) VALUES (:v, :t)"),
            [{"v": v, "t": T} for v in range(1, version + 1)],
        )
        tables = sa.MetaData()
        tables.reflect(conn)
        for name, rows in ROWS.items():
            conn.execute(tables.tables[name].insert(), rows)
    engine.dispose()


def row_counts(store: StateStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            name: conn.execute(sa.text(f"SELECT COUNT(*) FROM {name}")).scalar() for name in ROWS
        }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("version", [6, 5, 2])
def test_a_store_made_before_alembic_upgrades_in_place_and_keeps_its_rows(
    tmp_path, backend, version
):
    with empty_database(backend, tmp_path) as url:
        make_store_before_alembic(url, backend, version)
        store = StateStore(url)
        try:
            assert store.migrate() == version
            assert row_counts(store) == {name: len(rows) for name, rows in ROWS.items()}
            with store.engine.connect() as conn:
                inspector = sa.inspect(conn)
                assert "base_hash" not in {c["name"] for c in inspector.get_columns("shadow")}
                indexes = {i["name"] for i in inspector.get_indexes("id_map")}
                assert "ix_id_map_live" in indexes
                revision = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))
                assert revision.scalar() == f"{SCHEMA_VERSION:04d}"
                legacy = conn.execute(sa.text(f"SELECT MAX(version) FROM {LEGACY_TABLE}"))
                assert legacy.scalar() == SCHEMA_VERSION

            # the rows read as before, through the store
            (member, other) = sorted(store.members_of("s", ["L1"])["L1"], key=lambda m: m.system)
            assert member.seen == {"email": "ann@example.com", "name": "Ann"}  # "=": the base
            assert other.seen == {"email": "ann@example.com", "name": "Ann B"}
            assert store.links("s", ["L1"])["L1"].base["name"] == "Ann"
            assert store.cursor("s", "crm", "*") == "c1"
            assert [c["field"] for c in store.open_conflicts("s")] == ["name"]
            assert [d["attempts"] for d in store.open_dead_letters("s")] == [2]
            assert [i.link_id for i in store.open_intents("s")] == ["L2"]
            assert [r["id"] for r in store.last_runs("s")] == ["r1"]
            # and it takes new ones
            store.commit("s", StateChanges(links=[Link("L3", {"email": "c@x"}, "m3", None)]))
            assert store.links("s", ["L3"])["L3"].base == {"email": "c@x"}
            assert StateStore(url).migrate() == SCHEMA_VERSION  # once is enough
        finally:
            store.close()


def test_the_schema_version_is_the_number_of_alembics_head_and_the_chain_is_numbered():
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(Path(migrations.__file__).parent))
    assert scripts.get_current_head() == f"{SCHEMA_VERSION:04d}"
    for script in scripts.walk_revisions():
        assert Path(script.path).name.startswith(script.revision + "_")
        if script.down_revision:
            assert int(script.revision) == int(script.down_revision) + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_migrations_make_the_tables_of_the_code(tmp_path, backend):
    # a column added to twoway/state.py without a migration fails here
    with empty_database(backend, tmp_path) as url:
        store = StateStore(url)
        try:
            assert store.migrate() == 0
            with store.engine.connect() as conn:
                context = MigrationContext.configure(conn, opts={"compare_type": True})
                differences = compare_metadata(context, state.metadata)
        finally:
            store.close()
    ours = {VERSION_TABLE, LEGACY_TABLE}
    assert [d for d in differences if not (d[0] == "remove_table" and d[1].name in ours)] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_newer_than_the_code_is_refused(tmp_path, backend):
    with empty_database(backend, tmp_path) as url:
        store = StateStore(url)
        try:
            store.migrate()
            with store.engine.begin() as conn:
                conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
            line = (
                f"the state store {sa.make_url(url).render_as_string()} is at schema version "
                f"99, newer than this twoway's ({SCHEMA_VERSION}): upgrade twoway"
            )
            with pytest.raises(StateTooNew) as refused:
                StateStore(url).migrate()
            assert str(refused.value) == line
            with store.engine.connect() as conn:  # nothing was touched
                stored = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))
                assert stored.all() == [("0099",)]
        finally:
            store.close()


def test_a_store_marked_newer_by_twoway_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = StateStore(url)
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(f"INSERT INTO {LEGACY_TABLE} VALUES (:v, :t)"),
            {"v": SCHEMA_VERSION + 1, "t": T},
        )
    store.close()
    with pytest.raises(StateTooNew, match="newer than this twoway"):
        StateStore(url).migrate()


DEFINITION = """\
name: contacts
state: sqlite:///state.db
systems:
  crm: {kind: sql, url: "sqlite:///crm.db", table: people, key: id}
  portal: {kind: sql, url: "sqlite:///portal.db", table: people, key: id}
fields:
  email: {crm: email, portal: email}
"""


def test_state_upgrade_upgrades_a_store_made_before_alembic_and_refuses_a_newer_one(tmp_path):
    path = tmp_path / "contacts.sync.yaml"
    path.write_text(DEFINITION)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    make_store_before_alembic(url, "sqlite", 2)

    upgraded = twoway("state", "upgrade", str(path), cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout == (
        f"contacts: state store {url} upgraded from schema version 2 to {SCHEMA_VERSION}\n"
    )
    again = twoway("state", "upgrade", str(path), cwd=tmp_path)
    assert again.stdout == (
        f"contacts: state store {url} is at schema version {SCHEMA_VERSION}: nothing to upgrade\n"
    )

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()
    refused = twoway("state", "upgrade", str(path), cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: the state store {url} is at schema version 99, newer than this twoway's "
        f"({SCHEMA_VERSION}): upgrade twoway\n"
    )
    assert refused.stdout == ""
    assert no_traceback(refused)


def test_run_and_check_refuse_a_newer_store_in_one_line(tmp_path):
    path = tmp_path / "contacts.sync.yaml"
    path.write_text(DEFINITION)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore(url)
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    store.close()
    for system in ("crm", "portal"):
        engine = sa.create_engine(f"sqlite:///{tmp_path / (system + '.db')}")
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT)")
        engine.dispose()

    for args in (["run", str(path)], ["run", "--json", str(path)], ["check", str(path)]):
        refused = twoway(*args, cwd=tmp_path)
        assert refused.returncode == 2, (args, refused.stderr)
        assert refused.stderr.endswith(
            f"the state store {url} is at schema version 99, newer than this twoway's "
            f"({SCHEMA_VERSION}): upgrade twoway\n"
        ), args
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert no_traceback(refused)


CHILD = """
import sys, time
from pathlib import Path
from twoway.state import StateStore
store = StateStore(sys.argv[1])
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.005)
print(store.migrate())
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_processes_opening_a_new_store_together_upgrade_it_one_after_the_other(tmp_path, backend):
    with empty_database(backend, tmp_path) as url:
        go = tmp_path / "go"
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, url, str(tmp_path / f"ready{i}"), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready*"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outcomes = [child.communicate(timeout=120) for child in children]
        assert [c.returncode for c in children] == [0] * 4, [err for _, err in outcomes]
        assert sorted(int(out) for out, _ in outcomes) == [0] + [SCHEMA_VERSION] * 3
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [
                (f"{SCHEMA_VERSION:04d}",)
            ]
        engine.dispose()
