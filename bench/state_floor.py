"""The floor of a sync's state writes: N new links in twoway's own state schema, written
with nothing but sqlite3's executemany (no twoway code on the path).

``python bench/state_floor.py --n 100000`` creates a fresh SQLite state file with the real
tables and indexes (``twoway.state``), then inserts two ID-map rows and one merge-base row
per link in one transaction, and prints the seconds each part took. It is what any design
that keeps an ID map and merge bases pays at least; BENCHMARKS.md weighs the targets
against it.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from twoway.state import StateStore

FIELDS = [f"f{i:02d}" for i in range(1, 21)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="new links (default 100,000)")
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "state.db"
        StateStore(f"sqlite:///{path}").migrate()  # the real schema, then plain sqlite3
        links = [str(uuid.UUID(int=(1 << 120) + i)) for i in range(n)]  # ordered, as UUIDv7
        base = [json.dumps({f: f"value {i} {f}" for f in FIELDS}, sort_keys=True) for i in range(n)]
        conn = sqlite3.connect(path)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536"):
            conn.execute(f"PRAGMA {pragma}")  # as twoway's state store sets them
        now = "2026-01-01 00:00:00.000000"
        started = time.perf_counter()
        conn.executemany(
            "INSERT INTO id_map (sync, system, external_id, link_id, seen, seen_hash, version)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                ("bench", system, f"{system}-{i:09d}", links[i], "=", "0" * 32, now)
                for system in ("api", "db")
                for i in range(n)
            ),
        )
        mapped = time.perf_counter()
        conn.executemany(
            "INSERT INTO shadow (sync, link_id, base, updated_at) VALUES (?, ?, ?, ?)",
            (("bench", links[i], base[i], now) for i in range(n)),
        )
        based = time.perf_counter()
        conn.commit()
        done = time.perf_counter()
        conn.close()
    print(
        json.dumps(
            {
                "n": n,
                "id_map_s": round(mapped - started, 3),
                "shadow_s": round(based - mapped, 3),
                "commit_s": round(done - based, 3),
                "total_s": round(done - started, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
