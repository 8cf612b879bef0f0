"""The "raw batched calls" ceiling of the write workloads: a plain script, no twoway.

``python bench/writes.py sharepoint BASE DB``: reads every row of the SQLite table
``items`` in ``DB``, gets a client-credentials token from the Graph simulator at ``BASE``
and creates one list item per row with ``$batch`` calls of 20 ``POST .../items`` requests,
one after the other over one keep-alive connection.

``python bench/writes.py salesforce BASE DB``: the same rows into the Salesforce simulator's
``Bench__c`` object with sObject Collections calls (``POST /composite/sobjects``) of 200.

Client id ``bench``, secret from ``BENCH_CLIENT_SECRET``. Values are sent as the columns'
types say (SQLite's 0/1 flags as JSON booleans), empty fields left out. Every sub-request's
answer is checked; the script exits 1 when any record was refused. Prints one JSON line:
records written and calls made. Imports nothing of twoway: it runs with any Python that
has httpx.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FIELDS = [f"f{i:02d}" for i in range(1, 21)]
FLAGS = {"f09", "f10", "f19"}  # BOOLEAN columns (bench/serve.py's COLUMN_TYPES)
LIST_ITEMS = "/sites/root/lists/Bench/items"
API_VERSION = "v60.0"
GRAPH_BATCH = 20
COLLECTION = 200


def rows(db: Path) -> Iterator[dict[str, Any]]:
    """The table's rows as field -> value, flags as booleans and empty fields left out."""
    with sqlite3.connect(db) as conn:
        for values in conn.execute(f"SELECT {', '.join(FIELDS)} FROM items ORDER BY id"):
            yield {
                f: (bool(v) if f in FLAGS else v)
                for f, v in zip(FIELDS, values, strict=True)
                if v is not None
            }


def chunked(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Lists of at most ``size`` items."""
    part: list[dict[str, Any]] = []
    for item in items:
        part.append(item)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def sharepoint(base: str, db: Path, secret: str) -> tuple[int, int]:
    """Create an item per row through ``$batch`` (20 a call); (records, calls)."""
    with httpx.Client(base_url=base, timeout=120) as client:
        token = client.post(
            "/contoso.onmicrosoft.com/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "bench",
                "client_secret": secret,
                "scope": f"{base}/.default",
            },
        ).raise_for_status()
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        written = calls = 0
        for part in chunked(rows(db), GRAPH_BATCH):
            requests = [
                {
                    "id": str(i),
                    "method": "POST",
                    "url": LIST_ITEMS,
                    "headers": {"Content-Type": "application/json"},
                    "body": {"fields": row},
                }
                for i, row in enumerate(part)
            ]
            answer = client.post("/v1.0/$batch", json={"requests": requests}).raise_for_status()
            calls += 1
            failed = [r for r in answer.json()["responses"] if r["status"] != 201]
            if failed:
                raise SystemExit(f"$batch refused {len(failed)} item(s): {failed[:2]}")
            written += len(part)
    return written, calls


def salesforce(base: str, db: Path, secret: str) -> tuple[int, int]:
    """Create a ``Bench__c`` record per row with sObject Collections (200 a call)."""
    with httpx.Client(base_url=base, timeout=120) as client:
        token = client.post(
            "/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "bench",
                "client_secret": secret,
            },
        ).raise_for_status()
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        path = f"/services/data/{API_VERSION}/composite/sobjects"
        written = calls = 0
        for part in chunked(rows(db), COLLECTION):
            records = [
                {"attributes": {"type": "Bench__c"}, **{f"{f}__c": v for f, v in row.items()}}
                for row in part
            ]
            answer = client.post(path, json={"allOrNone": False, "records": records})
            answer.raise_for_status()
            calls += 1
            failed = [r for r in answer.json() if not r.get("success")]
            if failed:
                raise SystemExit(f"the collection refused {len(failed)} record(s): {failed[:2]}")
            written += len(part)
    return written, calls


def main() -> None:
    """``writes.py sharepoint|salesforce BASE DB``."""
    kind, base, db = sys.argv[1], sys.argv[2].rstrip("/"), Path(sys.argv[3])
    secret = os.environ.get("BENCH_CLIENT_SECRET", "bench-secret")
    load = sharepoint if kind == "sharepoint" else salesforce
    written, calls = load(base, db, secret)
    print(json.dumps({"tool": "raw-batched", "system": kind, "records": written, "calls": calls}))


if __name__ == "__main__":
    main()
