"""The state store's schema migrations, run by Alembic from inside the installed package.

Each revision in ``versions/`` is numbered by the schema version it brings a store to.
``0005`` is the baseline: the schema of the stores twoway made before Alembic (versions
1 to 5, recorded in ``twoway_schema``), which it creates, or completes in such a store.
Alembic keeps a store's revision in :data:`VERSION_TABLE`; ``twoway_schema`` gets each
new version too, so a twoway from before Alembic refuses a store newer than itself.
How to add a migration: README.md beside this file.
"""

from __future__ import annotations

import functools
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


def upgrade(conn: sa.Connection, now: datetime, store: str) -> int:
    """Bring the store on ``conn`` to :func:`head_version`, in the caller's transaction;
    returns the schema version found. ``store`` names it in the refusal of a newer one."""
    head = head_version()
    revision, legacy = stored_versions(conn)
    found = max(revision, legacy)
    if found > head:
        raise StateTooNew(
            f"the state store {store} is at schema version {found}, newer than this "
            f"twoway's ({head}): upgrade twoway"
        )
    if revision == head:
        return found
    from alembic import command

    command.upgrade(_config(conn), "head")
    if legacy < head:
        conn.execute(
            sa.text(f"INSERT INTO {LEGACY_TABLE} (version, applied_at) VALUES (:v, :t)"),
            {"v": head, "t": now},
        )
    return found
