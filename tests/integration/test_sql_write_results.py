"""What a SQL table reports after a write is what the next read returns.

The state stores a written record's values and version from the write's result; if they
differed from the next read, that read would look like someone else's edit. On SQLite the
endpoint skips reading new rows back when every value was sent in a form SQLite keeps as it
is; these tests hold both paths to the same answer as a real read.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from blocks.sql import SqlTable
from twoway.contract import Create, Update
from twoway.errors import PreconditionFailed

COLUMNS = ["t", "i", "r", "b", "d", "n"]


def _table(path: Path, extra_ddl: str = "") -> tuple[sa.Engine, SqlTable]:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE items (id TEXT PRIMARY KEY, t TEXT, i INTEGER, r REAL, b BOOLEAN, "
            "d DATETIME, n NUMERIC(10, 2), updated_at TEXT, updated_by TEXT DEFAULT 'someone')"
        )
        if extra_ddl:
            conn.exec_driver_sql(extra_ddl)
    endpoint = SqlTable(
        url=SecretStr(url),
        table="items",
        key="id",
        modified_at="updated_at",
        modified_by="updated_by",
        integration_account="svc-sync",
        columns_to_sync=COLUMNS,
    )
    return engine, endpoint


def _selects(engine: sa.Engine) -> list[str]:
    """The SELECTs of the items table the endpoint's engine runs from now on."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("SELECT") and "items" in statement:
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    return seen


# the values a create may carry: canonical forms from another system, some of which SQLite
# stores in another form (an int in a TEXT column becomes text, text digits in an INTEGER
# column become a number, a timestamp or decimal goes through the driver)
CASES = [
    {"t": "plain", "i": 7, "r": 2.5, "b": True, "d": None, "n": None},
    {"t": 42, "i": 7, "r": 2.5, "b": False, "d": None, "n": None},
    {"t": "x", "i": "12", "r": 3, "b": True, "d": None, "n": None},
    {"t": "x", "i": 1, "r": 1.25, "b": None, "d": "2026-11-26 10:00:00.000000", "n": None},
    {"t": "x", "i": 1, "r": 1.25, "b": None, "d": None, "n": "12.50"},
    {"t": "Zürich ✓", "i": -(2**62), "r": -0.125, "b": False, "d": None, "n": None},
    {"t": None, "i": None, "r": None, "b": None, "d": None, "n": None},
]


@pytest.mark.parametrize(
    "values", CASES, ids=lambda v: ",".join(type(x).__name__ for x in v.values())
)
def test_a_create_reports_what_a_read_returns(tmp_path, values):
    _engine, endpoint = _table(tmp_path / "t.db")
    with endpoint:
        (result,) = endpoint.write([Create(ref="link-1", values=values)])
        assert result.ok, result.error
        (read,) = endpoint.read([result.key])
    assert result.values == read.values
    assert {k: type(v) for k, v in result.values.items()} == {
        k: type(v) for k, v in read.values.items()
    }
    assert result.version == read.version


def test_rows_stored_as_sent_are_not_read_back_and_others_are(tmp_path):
    engine, endpoint = _table(tmp_path / "t.db")
    as_sent = [{**CASES[0], "t": f"row {n}"} for n in range(50)]
    reshaped = [CASES[1], CASES[2]]  # an int into TEXT, text digits into INTEGER
    with endpoint:
        endpoint.write([Create(ref="warm-up", values=CASES[0])])  # reflection, eligibility
        selects = _selects(endpoint.engine())
        results = endpoint.write(
            [Create(ref=f"l{n}", values=v) for n, v in enumerate(as_sent + reshaped)]
        )
        read_back = list(selects)
        reads = {r.key: r for r in endpoint.read([r.key for r in results])}
    # one read-back, of the two reshaped rows only
    assert len(read_back) == 1 and read_back[0].count("?") == 2
    assert [r.values["t"] for r in results[-2:]] == ["42", "x"]
    assert results[-1].values["i"] == 12
    for result in results:
        assert result.values == reads[result.key].values
        assert result.version == reads[result.key].version
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM items").scalar() == 53


def test_a_create_leaving_out_columns_without_a_default_is_not_read_back(tmp_path):
    """A create carries only the fields that have a value; the columns it leaves out read
    back as NULL unless they have a default (updated_by here: it is stamped)."""
    engine, endpoint = _table(tmp_path / "t.db")
    sparse = [{"t": "only text"}, {"i": 3, "b": False}, {}]
    with endpoint:
        endpoint.write([Create(ref="warm-up", values=CASES[0])])
        selects = _selects(endpoint.engine())
        results = endpoint.write([Create(ref=f"l{n}", values=v) for n, v in enumerate(sparse)])
        read_back = list(selects)
        reads = {r.key: r for r in endpoint.read([r.key for r in results])}
    assert read_back == []
    assert results[0].values == {
        "t": "only text",
        "i": None,
        "r": None,
        "b": None,
        "d": None,
        "n": None,
    }
    for result in results:
        assert result.values == reads[result.key].values
        assert result.version == reads[result.key].version


def test_a_trigger_on_the_table_means_every_row_is_read_back(tmp_path):
    engine, endpoint = _table(
        tmp_path / "t.db",
        "CREATE TRIGGER shout AFTER INSERT ON items BEGIN "
        "UPDATE items SET t = upper(t) WHERE id = new.id; END",
    )
    with endpoint:
        (result,) = endpoint.write([Create(ref="l", values=CASES[0])])
        (read,) = endpoint.read([result.key])
    assert result.values["t"] == "PLAIN" == read.values["t"]


def test_a_column_left_out_takes_its_default_and_is_read_back(tmp_path):
    _engine, endpoint = _table(tmp_path / "t.db")
    endpoint.integration_account = None  # updated_by is then not stamped: its default applies
    with endpoint:
        (result,) = endpoint.write([Create(ref="l", values=CASES[0])])
        (read,) = endpoint.read([result.key])
    assert result.values == read.values
    assert read.modified_by == "someone"


@pytest.mark.parametrize("values", [CASES[3], CASES[4]], ids=["timestamp", "decimal"])
def test_a_timestamp_or_decimal_value_means_its_row_is_read_back(tmp_path, values):
    _engine, endpoint = _table(tmp_path / "t.db")
    with endpoint:
        endpoint.write([Create(ref="warm-up", values=CASES[0])])
        selects = _selects(endpoint.engine())
        (result,) = endpoint.write([Create(ref="l", values=values)])
        (read,) = endpoint.read([result.key])
    assert len(selects) == 2  # the write's read-back, then the read
    assert result.values == read.values
    assert isinstance(read.values["d"] or read.values["n"], datetime | Decimal)


@contextmanager
def _server_table(url: str, columns: str, synced: list[str]) -> Iterator[SqlTable]:
    """A fresh table ``(<columns>, updated_at, updated_by)`` on a database server and an
    endpoint on it; the table is dropped afterwards."""
    table = f"t_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    stamp = (
        "TIMESTAMP(6) WITH TIME ZONE"
        if engine.dialect.name == "postgresql"
        else "TIMESTAMP(6) NULL"
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {table} ({columns}, updated_at {stamp}, updated_by VARCHAR(50))"
        )
    endpoint = SqlTable(
        url=SecretStr(url),
        table=table,
        key="id",
        modified_at="updated_at",
        modified_by="updated_by",
        integration_account="svc-sync",
        columns_to_sync=synced,
    )
    try:
        yield endpoint
    finally:
        endpoint.close()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {table}")
        engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_postgresql_bulk_insert_writes_the_good_rows_and_refuses_the_bad_one_alone(driver):
    # creates reach PostgreSQL through the driver's bulk call (psycopg2's execute_values,
    # psycopg 3's executemany); a row the database refuses (NOT NULL) must fail alone, as a
    # SQLAlchemy error the endpoint understands, and a column name with a percent sign must
    # not be taken for a placeholder
    from tests.sqlrig import POSTGRES_URL

    url = sa.make_url(POSTGRES_URL).set(drivername=f"postgresql+{driver}")
    url = url.render_as_string(hide_password=False)
    columns = 'id TEXT PRIMARY KEY, t TEXT NOT NULL, "p%%s" BIGINT'
    with _server_table(url, columns, ["t", "p%s"]) as endpoint:
        rows = [{"t": f"row {i}", "p%s": i} for i in range(1500)]
        rows[700] = {"t": None, "p%s": 700}
        results = endpoint.write([Create(ref=str(i), values=v) for i, v in enumerate(rows)])
        assert [i for i, r in enumerate(results) if not r.ok] == [700]
        assert "null value" in str(results[700].error)
        stored = {r.key: r.values for r in endpoint.read([r.key for r in results if r.ok])}
        assert len(stored) == 1499
        assert sorted(v["p%s"] for v in stored.values()) == [i for i in range(1500) if i != 700]
        assert {r.key: r.values for r in results if r.ok} == stored


@pytest.mark.parametrize("backend", ["postgres", "mariadb"])
def test_a_uuid_key_the_sync_makes_is_the_key_a_read_returns(backend, tmp_path):
    # a table whose UUID key has no default takes a key twoway makes: the create must name
    # it as reads return it (PostgreSQL and MariaDB answer the dashed form), or the next read
    # sees a record the ID map does not know and the sync creates it again elsewhere
    from tests.sqlrig import server_url

    url = server_url(backend, tmp_path)
    with _server_table(url, "id UUID PRIMARY KEY, t VARCHAR(50)", ["t"]) as endpoint:
        results = endpoint.write([Create(ref=str(i), values={"t": f"row {i}"}) for i in range(3)])
        assert all(r.ok for r in results)
        read = [r.key for page in endpoint.read_pages(None) for r in page.records]
        assert sorted(read) == sorted(r.key for r in results)
        assert sorted(r.key for r in endpoint.read([r.key for r in results])) == sorted(read)


def test_updates_go_in_one_statement_per_set_of_columns(tmp_path):
    """A batch's updates are one executemany per set of columns written, not a statement
    per record; a batch in which a record changed since it was read is applied again row by
    row, and only that record's update is deferred."""
    engine, endpoint = _table(tmp_path / "t.db")
    with endpoint:
        created = endpoint.write([Create(ref=f"l{n}", values=CASES[0]) for n in range(6)])
        statements: list[tuple[str, bool]] = []

        def record(_conn, _cursor, statement, _params, _context, executemany):
            if statement.lstrip().upper().startswith("UPDATE"):
                statements.append((statement, executemany))

        sa.event.listen(endpoint.engine(), "before_cursor_execute", record)
        ops = [
            Update(key=r.key, values={"t": f"t{n}"} if n % 2 else {"i": n}, version=r.version)
            for n, r in enumerate(created)
        ]
        results = endpoint.write(ops)
        assert all(r.ok for r in results)
        assert len(statements) == 2 and all(many for _, many in statements)

        with engine.begin() as conn:  # a person edits the record of the fourth update
            conn.exec_driver_sql(
                "UPDATE items SET t = 'person', updated_at = '2030-01-01' WHERE id = ?",
                (created[3].key,),
            )
        statements.clear()
        again = endpoint.write(
            [Update(key=r.key, values={"t": "again"}, version=r.version) for r in results]
        )
        reads = {r.key: r for r in endpoint.read([r.key for r in created])}
    assert [r.ok for r in again] == [True, True, True, False, True, True]
    assert isinstance(again[3].error, PreconditionFailed)
    assert reads[created[3].key].values["t"] == "person"
    assert all(reads[r.key].values["t"] == "again" for n, r in enumerate(created) if n != 3)
    # the bulk statement, then the six updates one by one
    assert [many for _, many in statements] == [True] + [False] * 6
