"""The state store's schema migrations, run by Alembic from inside the installed package.

Each revision in ``versions/`` is numbered by the schema version it brings a store to:
``0005`` is the baseline (the schema twoway had when its migrations moved to Alembic),
``0006`` adds the review's decision columns. A store made before Alembic (versions 1 to 6,
recorded in ``twoway_schema``) runs them all: each completes what such a store lacks.
Alembic keeps a store's revision in :data:`VERSION_TABLE`; ``twoway_schema`` gets each
new version too, so a twoway from before Alembic refuses a store newer than itself.
How to add a migration: README.md beside this file.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from twoway.errors import DefinitionError

if TYPE_CHECKING:
    from alembic.config import Config

HERE = Path(__file__).parent

#: Alembic's version table of the state store (a name of its own: the database may hold
#: another application's ``alembic_version``)
VERSION_TABLE = "twoway_alembic_version"
#: the version table of the stores made before Alembic
LEGACY_TABLE = "twoway_schema"


class StateTooNew(DefinitionError):
    """The state store's schema is newer than this twoway's: an older twoway must not use it."""


def _config(conn: sa.Connection) -> Config:
    """Alembic's configuration: the migrations beside this file, run on ``conn``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = conn
    return config


@functools.cache
def head_version() -> int:
    """The schema version this twoway makes: the number of its newest revision file
    (``versions/NNNN_*.py``, without importing Alembic: every command asks; a test holds
    it to Alembic's own head)."""
    return max(int(p.name[:4]) for p in (HERE / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def stored_versions(conn: sa.Connection) -> tuple[int, int]:
    """The store's Alembic revision and its ``twoway_schema`` version (0 for none)."""
    inspector = sa.inspect(conn)
    revision = legacy = 0
    if inspector.has_table(VERSION_TABLE):
        revision = int(
            conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() or 0
        )
    if inspector.has_table(LEGACY_TABLE):
        legacy = conn.execute(sa.text(f"SELECT MAX(version) FROM {LEGACY_TABLE}")).scalar() or 0
    return revision, legacy


def upgrade(engine: sa.Engine, now: datetime, store: str) -> int:
    """Bring the store to :func:`head_version`; returns the schema version found. ``store``
    names it in the refusal of a newer one. Processes that open a new store together
    upgrade it one after the other: the later ones find it done."""
    head = head_version()
    with engine.connect() as conn:
        revision, found = _versions(conn, head, store)
        conn.rollback()
        if revision == head:
            return found
        with _one_upgrade_at_a_time(conn), conn.begin():
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, before reading again
            revision, found = _versions(conn, head, store)
            if revision < head:
                from alembic import command

                command.upgrade(_config(conn), "head")
                _mirror(conn, head, now)
    return found


def _versions(conn: sa.Connection, head: int, store: str) -> tuple[int, int]:
    """The store's Alembic revision and its schema version; refuses a store newer than
    ``head``."""
    revision, legacy = stored_versions(conn)
    found = max(revision, legacy)
    if found > head:
        raise StateTooNew(
            f"the state store {store} is at schema version {found}, newer than this "
            f"twoway's ({head}): upgrade twoway"
        )
    return revision, found


def _mirror(conn: sa.Connection, head: int, now: datetime) -> None:
    """Record ``head`` in ``twoway_schema`` too: what a twoway from before Alembic reads."""
    legacy = conn.execute(sa.text(f"SELECT MAX(version) FROM {LEGACY_TABLE}")).scalar() or 0
    if legacy < head:
        conn.execute(
            sa.text(f"INSERT INTO {LEGACY_TABLE} (version, applied_at) VALUES (:v, :t)"),
            {"v": head, "t": now},
        )


#: the lock that upgrades take: a PostgreSQL advisory lock key, a MariaDB lock name
_PG_LOCK = 0x74776F776179  # "twoway"
_MYSQL_LOCK = "twoway_state_schema"


@contextmanager
def _one_upgrade_at_a_time(conn: sa.Connection) -> Iterator[None]:
    """Hold the database server's own named lock while an upgrade runs (on SQLite the
    upgrade's write lock does it)."""
    if conn.dialect.name == "postgresql":
        lock, unlock, key = "pg_advisory_lock", "pg_advisory_unlock", _PG_LOCK
    elif conn.dialect.name in ("mysql", "mariadb"):
        lock, unlock, key = "GET_LOCK", "RELEASE_LOCK", _MYSQL_LOCK
    else:
        yield
        return
    wait = ", 600" if lock == "GET_LOCK" else ""
    conn.execute(sa.text(f"SELECT {lock}(:k{wait})"), {"k": key})
    conn.commit()  # the lock is the session's: it outlives this transaction
    try:
        yield
    finally:
        conn.execute(sa.text(f"SELECT {unlock}(:k)"), {"k": key})
        conn.commit()
