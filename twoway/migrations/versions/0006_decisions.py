"""Version 6: who decided a conflict or a dead letter and when, and when each value of a
conflict changed (the review shows them).

A store made before Alembic at version 6 has the columns already: each is added only
where it is missing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

COLUMNS = {
    "conflicts": [
        sa.Column("changed_at", sa.Text, nullable=True),  # {system: ISO time}
        sa.Column("decided_by", sa.String(120), nullable=True),
        sa.Column("decided_at", sa.DateTime, nullable=True),
    ],
    "dead_letters": [
        sa.Column("decision", sa.String(16), nullable=True),  # retry | drop
        sa.Column("decided_by", sa.String(120), nullable=True),
        sa.Column("decided_at", sa.DateTime, nullable=True),
    ],
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, columns in COLUMNS.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        for column in columns:
            if column.name not in have:
                op.add_column(table, column)
