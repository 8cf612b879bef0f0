"""The peers twoway is measured against, one load per process (the harness times it whole).

``python bench/peers.py floor URL DIR``: the raw floor, a plain script that pages the
collection with httpx (``$top=1000``, ``@odata.nextLink``, ``modified_since`` from its own
cursor file) and writes each page into SQLite with one ``executemany`` upsert.

``python bench/peers.py dlt-sqlite URL DIR`` / ``dlt-duckdb-parquet``: the same load with
dlt's REST API source (JSON-link paginator, an incremental ``modified_since`` parameter on
``modified_at``), merged on the primary key into SQLite through dlt's sqlalchemy
destination, or into DuckDB with parquet load files.

Runs in the peers' own virtual environment (``bench/.venv-peers``); imports nothing of
twoway. Prints one JSON line: rows loaded by this run.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

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


def floor(base: str, work: Path) -> int:
    """Page the collection since the saved cursor and upsert each page with executemany."""
    import httpx

    cursor_file = work / "floor.cursor"
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    db = sqlite3.connect(work / "floor.db")
    cols = ", ".join(f"{c} {TYPES.get(c, 'TEXT')}" for c in COLUMNS[1:])
    db.execute(f"CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, {cols})")
    insert = (
        f"INSERT OR REPLACE INTO items ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in COLUMNS)})"
    )
    url = f"{base}/items?$top=1000"
    if cursor:
        url += f"&modified_since={cursor}"
    newest = cursor or ""
    loaded = 0
    with httpx.Client(timeout=60) as client:
        while url:
            page = client.get(url).raise_for_status().json()
            items = page["value"]
            gone = [(r["id"],) for r in items if "@removed" in r]
            rows = [tuple(map(r.get, COLUMNS)) for r in items if "@removed" not in r]
            db.executemany(insert, rows)
            db.executemany("DELETE FROM items WHERE id = ?", gone)
            loaded += len(rows)
            if items:
                newest = max(newest, items[-1]["modified_at"])
            url = page.get("@odata.nextLink")
    db.commit()
    db.close()
    if newest:
        cursor_file.write_text(newest)
    return loaded


def dlt_load(base: str, work: Path, destination: str) -> int:
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
    if destination == "dlt-sqlite":
        target = dlt.destinations.sqlalchemy(f"sqlite:///{work / 'dlt.db'}")
        file_format = None
    else:
        target = dlt.destinations.duckdb(str(work / "dlt.duckdb"))
        file_format = "parquet"
    pipeline = dlt.pipeline(
        pipeline_name=destination.replace("-", "_"),
        pipelines_dir=str(work / "dlt-pipelines"),
        destination=target,
        dataset_name="bench",
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
    tool, base, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    rows = floor(base, work) if tool == "floor" else dlt_load(base, work, tool)
    print(json.dumps({"tool": tool, "rows": rows}))


if __name__ == "__main__":
    main()
