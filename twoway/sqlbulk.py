"""Bulk inserts and upserts: the one place that writes 100,000s of rows to a database at once."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def insert_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows at once. On SQLite the driver's own executemany takes the rows: at
    100,000s of rows SQLAlchemy's per-row parameter processing costs more than the database;
    elsewhere SQLAlchemy's multi-row VALUES batches are the fast path."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(table.insert(), rows)
        return
    _sqlite_executemany(conn, table, rows, "INSERT")


def upsert_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows, replacing those whose primary key exists (rows must not repeat a
    key): one statement per batch instead of a delete and an insert."""
    _insert_on_conflict(conn, table, rows, replace=True)


def insert_missing_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert the rows whose primary key is not in the table yet; leave the others as they are
    (one statement per batch, not a look-up of every key first)."""
    _insert_on_conflict(conn, table, rows, replace=False)


def _insert_on_conflict(
    conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], replace: bool
) -> None:
    """Insert rows; a row whose primary key exists replaces the stored one, or is left out."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "sqlite":
        _sqlite_executemany(
            conn, table, rows, "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        )
        return
    keys = [c.name for c in table.primary_key.columns]
    others = [n for n in rows[0] if n not in keys]
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        stmt = insert(table)
        if replace:
            stmt = stmt.on_conflict_do_update(
                index_elements=keys, set_={n: stmt.excluded[n] for n in others}
            )
        else:
            stmt = stmt.on_conflict_do_nothing()
    elif dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert

        stmt = insert(table)
        # leaving a row out is a no-op update, not INSERT IGNORE (which hides other errors)
        updates = {n: stmt.inserted[n] for n in others} if replace else {keys[0]: table.c[keys[0]]}
        stmt = stmt.on_duplicate_key_update(updates)
    else:  # any other database: look each key up, row by row
        for row in rows:
            match = [table.c[k] == row[k] for k in keys]
            if replace:
                conn.execute(table.delete().where(*match))
            elif conn.execute(sa.select(sa.literal(1)).where(*match)).first() is not None:
                continue
            conn.execute(table.insert(), row)
        return
    conn.execute(stmt, rows)


def _sqlite_executemany(
    conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], verb: str
) -> None:
    names = list(rows[0])
    convert = [
        (i, proc)
        for i, name in enumerate(names)
        if (proc := table.c[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect))
        is not None
    ]
    params = []
    for row in rows:
        values = [row[n] for n in names]
        for i, proc in convert:
            if values[i] is not None:
                values[i] = proc(values[i])
        params.append(tuple(values))
    preparer = conn.dialect.identifier_preparer
    sql = (
        f"{verb} INTO {preparer.format_table(table)} "
        f"({', '.join(preparer.quote(n) for n in names)}) "
        f"VALUES ({', '.join('?' for _ in names)})"
    )
    conn.exec_driver_sql(sql, params)
