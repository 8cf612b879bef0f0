"""Baseline: the state store's schema at version 5, when its migrations moved to Alembic.

Creates the tables of a new store; completes a store made before Alembic at any version
(1 to 5): the intent log (2), the index of live keys (3), no merge-base hash (4). The
tables are written out here as they were, not taken from ``twoway.state``: a later
change to a table is a migration of its own.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = None

metadata = sa.MetaData()
S = sa.String(120)
KEY = sa.String(255)

sa.Table(
    "twoway_schema",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.DateTime, nullable=False),
)
id_map = sa.Table(
    "id_map",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("system", S, primary_key=True),
    sa.Column("external_id", KEY, primary_key=True),
    sa.Column("link_id", sa.String(36), nullable=False),
    sa.Column("seen", sa.Text, nullable=True),
    sa.Column("seen_hash", sa.String(32), nullable=True),
    sa.Column("version", sa.String(255), nullable=True),
    sa.Column("deleted_at", sa.DateTime, nullable=True),
    sa.Index("ix_id_map_link", "sync", "link_id"),
)
LIVE_INDEX = sa.Index(
    "ix_id_map_live", id_map.c.sync, id_map.c.system, id_map.c.deleted_at, id_map.c.external_id
)
sa.Table(
    "shadow",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("link_id", sa.String(36), primary_key=True),
    sa.Column("base", sa.Text, nullable=False),
    sa.Column("match_key", sa.String(32), nullable=True),
    sa.Column("deleted_at", sa.DateTime, nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Index("ix_shadow_match", "sync", "match_key"),
)
sa.Table(
    "cursors",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("system", S, primary_key=True),
    sa.Column("scope", S, primary_key=True),
    sa.Column("cursor", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)
sa.Table(
    "conflicts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sync", S, nullable=False),
    sa.Column("link_id", sa.String(36), nullable=False),
    sa.Column("field", S, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("policy", S, nullable=False),
    sa.Column("winner", S, nullable=True),
    sa.Column("candidates", sa.Text, nullable=False),
    sa.Column("chosen", sa.Text, nullable=True),
    sa.Column("run_id", sa.String(36), nullable=True),
    sa.Column("detected_at", sa.DateTime, nullable=False),
    sa.Column("resolved_at", sa.DateTime, nullable=True),
    sa.Index("ix_conflicts_open", "sync", "status", "link_id"),
)
sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sync", S, nullable=False),
    sa.Column("system", S, nullable=False),
    sa.Column("link_id", sa.String(36), nullable=True),
    sa.Column("external_id", KEY, nullable=True),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_seen", sa.DateTime, nullable=False),
    sa.Column("last_seen", sa.DateTime, nullable=False),
    sa.Column("next_attempt_at", sa.DateTime, nullable=False),
    sa.Column("resolved_at", sa.DateTime, nullable=True),
    sa.Index("ix_dead_letters_open", "sync", "resolved_at"),
)
sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("sync", S, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("summary", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("ix_runs_sync", "sync", "started_at"),
)
sa.Table(
    "leases",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)
sa.Table(
    "intents",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("system", S, primary_key=True),
    sa.Column("link_id", sa.String(36), primary_key=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("values_hash", sa.String(32), nullable=False),
    sa.Column("members", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind)  # only the tables the store lacks (with their indexes)
    inspector = sa.inspect(bind)
    if LIVE_INDEX.name not in {i["name"] for i in inspector.get_indexes("id_map")}:
        LIVE_INDEX.create(bind)
    if "base_hash" in {c["name"] for c in inspector.get_columns("shadow")}:
        op.drop_column("shadow", "base_hash")
