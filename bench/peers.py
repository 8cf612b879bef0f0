"""The peers twoway is measured against, one load per process (the harness times it whole).

``python bench/peers.py floor URL DIR``: the raw floor, a plain script that pages the
collection with httpx (``$top=1000``, ``@odata.nextLink``, ``modified_since`` from its own
cursor file) and writes each page into SQLite with one ``executemany`` upsert.

``python bench/peers.py dlt-sqlite URL DIR`` / ``dlt-duckdb-parquet``: the same load with
dlt's REST API source (JSON-link paginator, an incremental ``modified_since`` parameter on
``modified_at``), merged on the primary key into SQLite through dlt's sqlalchemy
destination, or into DuckDB with parquet load files.

PostgreSQL target: ``python bench/peers.py floor URL DIR --postgres DSN --schema S`` pages
the same way and upserts each page into ``S.floor_items`` with one psycopg2
``execute_values`` ``INSERT ... ON CONFLICT (id) DO UPDATE``; ``python bench/peers.py
dlt-postgres URL DIR --postgres DSN --schema S`` is the dlt load merged into the dataset
(schema) ``S_dlt`` through dlt's postgres destination.

Runs in the peers' own virtual environment (``bench/.venv-peers``); imports nothing of
twoway. Prints one JSON line: rows loaded by this run.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any

FIELDS = [f"f{i:02d}" for i in range(1, 21)]
COLUMNS = ["id", *FIELDS, "modified_at", "modified_by", "version"]
TYPES = {
    "f05": "INTEGER",
    "f06": "INTEGER",
    "f07": "REAL",
    "f08": "REAL",
    "f09": "BOOLEAN",
    "f10": "BOOLEAN",
    "f14": "INTEGER",
    "f15": "REAL",
    "f17": "INTEGER",
    "f19": "BOOLEAN",
}
PG_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BOOLEAN": "BOOLEAN"}


def pages(base: str, cursor: str | None) -> Any:
    """The collection's pages since ``cursor`` (all of it when None), one list at a time."""
    import httpx

    url = f"{base}/items?$top=1000"
    if cursor:
        url += f"&modified_since={cursor}"
    with httpx.Client(timeout=60) as client:
        while url:
            page = client.get(url).raise_for_status().json()
            yield page["value"]
            url = page.get("@odata.nextLink")


def floor(base: str, work: Path) -> int:
    """Page the collection since the saved cursor and upsert each page with executemany."""
    cursor_file = work / "floor.cursor"
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    db = sqlite3.connect(work / "floor.db")
    cols = ", ".join(f"{c} {TYPES.get(c, 'TEXT')}" for c in COLUMNS[1:])
    db.execute(f"CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, {cols})")
    insert = (
        f"INSERT OR REPLACE INTO items ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in COLUMNS)})"
    )
    newest = cursor or ""
    loaded = 0
    for items in pages(base, cursor):
        gone = [(r["id"],) for r in items if "@removed" in r]
        rows = [tuple(map(r.get, COLUMNS)) for r in items if "@removed" not in r]
        db.executemany(insert, rows)
        db.executemany("DELETE FROM items WHERE id = ?", gone)
        loaded += len(rows)
        if items:
            newest = max(newest, items[-1]["modified_at"])
    db.commit()
    db.close()
    if newest:
        cursor_file.write_text(newest)
    return loaded


def floor_postgres(base: str, work: Path, dsn: str, schema: str) -> int:
    """The floor into PostgreSQL: each page upserted with one ``execute_values`` statement
    (``INSERT ... ON CONFLICT (id) DO UPDATE``), one transaction for the whole load."""
    import psycopg2
    from psycopg2.extras import execute_values

    cursor_file = work / "floor.cursor"
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    table = f'"{schema}".floor_items'
    cols = ", ".join(f"{c} {PG_TYPES.get(TYPES.get(c, ''), 'TEXT')}" for c in COLUMNS[1:])
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])
    insert = (
        f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES %s "
        f"ON CONFLICT (id) DO UPDATE SET {updates}"
    )
    newest = cursor or ""
    loaded = 0
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, {cols})")
        for items in pages(base, cursor):
            gone = [r["id"] for r in items if "@removed" in r]
            rows = [tuple(map(r.get, COLUMNS)) for r in items if "@removed" not in r]
            if rows:
                execute_values(cur, insert, rows, page_size=len(rows))
            if gone:
                cur.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", (gone,))
            loaded += len(rows)
            if items:
                newest = max(newest, items[-1]["modified_at"])
    conn.close()
    if newest:
        cursor_file.write_text(newest)
    return loaded


def with_password(dsn: str) -> str:
    """``dsn`` with a password: dlt's postgres destination refuses credentials without one,
    and a server with trust authentication (the benchmark's) ignores whatever is given."""
    scheme, sep, rest = dsn.partition("://")
    user, at, host = rest.rpartition("@")
    if not sep or not at or ":" in user:
        return dsn
    return f"{scheme}://{user}:unused@{host}"


def dlt_load(
    base: str, work: Path, destination: str, dsn: str | None = None, schema: str | None = None
) -> int:
    """dlt's REST API source merged on ``id``; state (the cursor) kept in ``work``."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    source = rest_api_source(
        {
            "client": {
                "base_url": base,
                "paginator": {"type": "json_link", "next_url_path": "['@odata.nextLink']"},
            },
            "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
            "resources": [
                {
                    "name": "items",
                    "endpoint": {
                        "path": "items",
                        "data_selector": "value",
                        "params": {
                            "$top": 1000,
                            "modified_since": {
                                "type": "incremental",
                                "cursor_path": "modified_at",
                                "initial_value": "1970-01-01T00:00:00.000000Z",
                            },
                        },
                    },
                }
            ],
        }
    )
    dataset = "bench"
    if destination == "dlt-sqlite":
        target = dlt.destinations.sqlalchemy(f"sqlite:///{work / 'dlt.db'}")
        file_format = None
    elif destination == "dlt-postgres":
        target = dlt.destinations.postgres(credentials=with_password(dsn or ""))
        file_format = None
        dataset = f"{schema}_dlt"
    else:
        target = dlt.destinations.duckdb(str(work / "dlt.duckdb"))
        file_format = "parquet"
    pipeline = dlt.pipeline(
        pipeline_name=destination.replace("-", "_"),
        pipelines_dir=str(work / "dlt-pipelines"),
        destination=target,
        dataset_name=dataset,
        progress=None,
    )
    info = pipeline.run(source, loader_file_format=file_format)
    info.raise_on_failed_jobs()
    trace = pipeline.last_trace
    rows = 0
    if trace is not None and trace.last_normalize_info is not None:
        rows = sum(trace.last_normalize_info.row_counts.get(t, 0) for t in ("items",))
    return rows


def main() -> None:
    """``peers.py TOOL URL DIR [--postgres DSN --schema S]``: one load, one JSON line."""
    parser = argparse.ArgumentParser(description="one peer load of the benchmark collection")
    parser.add_argument(
        "tool", choices=["floor", "dlt-sqlite", "dlt-duckdb-parquet", "dlt-postgres"]
    )
    parser.add_argument("base")
    parser.add_argument("work", type=Path)
    parser.add_argument("--postgres", help="libpq DSN: load into PostgreSQL instead of SQLite")
    parser.add_argument("--schema", help="PostgreSQL schema of the load (with --postgres)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.tool == "floor":
        rows = (
            floor_postgres(args.base, args.work, args.postgres, args.schema)
            if args.postgres
            else floor(args.base, args.work)
        )
    else:
        rows = dlt_load(args.base, args.work, args.tool, args.postgres, args.schema)
    print(json.dumps({"tool": args.tool, "rows": rows}))


if __name__ == "__main__":
    main()
