"""Real databases for tests: SQLite files, and fresh tables in the local PostgreSQL and MariaDB."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from twoway.values import format_timestamp

#: the database servers' test databases, by the environment variable that may name others
SERVERS = {
    "TWOWAY_TEST_POSTGRES": "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
    "TWOWAY_TEST_MARIADB": "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4",
}
POSTGRES_URL = os.environ.get("TWOWAY_TEST_POSTGRES", SERVERS["TWOWAY_TEST_POSTGRES"])
MARIADB_URL = os.environ.get("TWOWAY_TEST_MARIADB", SERVERS["TWOWAY_TEST_MARIADB"])


def server_url(backend: str, tmp_path) -> str:
    """A database URL of the given backend ('sqlite', 'postgres', 'mariadb')."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / ('db-' + uuid.uuid4().hex[:8] + '.db')}"
    url = POSTGRES_URL if backend == "postgres" else MARIADB_URL
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:  # CI starts both servers; say so when one is down
        pytest.fail(f"{backend} is not reachable at {url}: {exc.orig}")
    finally:
        engine.dispose()
    return url


# microsecond precision everywhere (MariaDB's plain DATETIME keeps whole seconds)
STAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def contacts_table(
    metadata: sa.MetaData,
    name: str,
    *,
    key="id",
    email="email",
    first="first_name",
    last="last_name",
    phone="phone",
    modified="updated_at",
    by="updated_by",
) -> sa.Table:
    """A contacts table with an autoincrement key and a text-free timestamp column."""
    return sa.Table(
        name,
        metadata,
        sa.Column(key, sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(email, sa.String(200)),
        sa.Column(first, sa.String(100)),
        sa.Column(last, sa.String(100)),
        sa.Column(phone, sa.String(50)),
        sa.Column(modified, STAMP),
        sa.Column(by, sa.String(100)),
    )


@contextmanager
def fresh_table(url: str, **names) -> Iterator[tuple[sa.Engine, sa.Table]]:
    """Create a uniquely named contacts table, drop it afterwards."""
    engine = sa.create_engine(url)
    name = names.pop("table", None) or f"t_{uuid.uuid4().hex[:10]}"
    table = contacts_table(sa.MetaData(), name, **names)
    table.create(engine)
    try:
        yield engine, table
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()


class SqlPerson:
    """Someone editing a table directly, stamping their own name and the current time."""

    def __init__(
        self,
        engine: sa.Engine,
        table: sa.Table,
        key: str,
        modified: str,
        by: str,
        name: str = "alice",
    ):
        self.engine, self.table, self.key, self.modified, self.by, self.name = (
            engine,
            table,
            key,
            modified,
            by,
            name,
        )

    def _stamp(self, at: datetime | None = None) -> dict:
        col = self.table.c[self.modified]
        now = at or datetime.now(UTC)
        value = (
            now.replace(tzinfo=None) if isinstance(col.type, sa.DateTime) else format_timestamp(now)
        )
        return {self.modified: value, self.by: self.name}

    def create(self, values: dict) -> str:
        with self.engine.begin() as conn:
            result = conn.execute(self.table.insert().values({**values, **self._stamp()}))
            return str(result.inserted_primary_key[0])

    def update(self, key: str, values: dict, at: datetime | None = None) -> None:
        """Change some fields, stamped ``at`` (a timezone-aware time; default: now)."""
        with self.engine.begin() as conn:
            conn.execute(
                self.table.update()
                .where(self.table.c[self.key] == int(key))
                .values({**values, **self._stamp(at)})
            )

    def delete(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.delete().where(self.table.c[self.key] == int(key)))


@contextmanager
def empty_database(backend: str, tmp_path) -> Iterator[str]:
    """The URL of a new, empty database of the backend, dropped afterwards: for tests of a
    whole schema (the shared test database holds the state tables of other tests)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / ('empty-' + uuid.uuid4().hex[:8] + '.db')}"
        return
    url = sa.make_url(server_url(backend, tmp_path))
    name = f"{url.database}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    drop = f"DROP DATABASE {name}" + (" WITH (FORCE)" if backend == "postgres" else "")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(drop)
        admin.dispose()
