"""What a run read, staged on disk until its chunk is worked on: a run holds one page of a
read and one chunk of changes in memory, never a whole table.

Each system's read goes to a SQLite file of its own (a read in a process of its own writes
its file while the others write theirs). A row per key holds what the latest page said of
it (a later page replaces what an earlier one said), whether it is a change, an echo, an
unchanged record, a parked one, a deletion or a record the system lost, and its
**bucket**: a stable hash of the link the record belongs to (or of its match key while it
has none), so that every record of one link falls in one bucket whichever system it comes
from. Chunks are runs of whole buckets; the records that tie two links together (a key our
own create reused, a crashed run's intent) merge their buckets so both links fall in one
chunk.
"""

from __future__ import annotations

import pickle
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twoway.records import Filtered

#: buckets of a run: a chunk is a run of whole buckets, so a chunk can be as small as about
#: 1/BUCKETS of the changes
BUCKETS = 1024

CHANGED, ECHO, UNCHANGED, PARKED, DELETED, LOST = range(6)
_WORK = f"(status IN ({CHANGED},{PARKED},{DELETED},{LOST}) OR payload IS NOT NULL)"
_PICKLE = pickle.HIGHEST_PROTOCOL


def bucket_of(route: str) -> int:
    """The bucket of a link id (or of a match key, ``m:<hash>``): the same in every process."""
    return zlib.crc32(route.encode("utf-8")) % BUCKETS


@dataclass
class ReadSummary:
    """What a system's read came to, its records left in its staging file."""

    system: str
    path: str
    cursor: str | None = None
    full: bool = False
    requests: int = 0
    extracted: int = 0
    changed: int = 0
    echo_skipped: int = 0
    unchanged: int = 0
    reread: int = 0  # unchanged records read again only because of the overlap window
    parked: int = 0
    # buckets whose links one record ties together: they go into one chunk
    merges: list[tuple[int, int]] = field(default_factory=list)


class StagedRead:
    """One system's read, key by key, in a SQLite file (``:memory:`` for a small read).

    The file has one connection at a time (a read in a process of its own closes it
    before the run opens it again), which holds it in exclusive mode: SQLite then keeps
    its page cache from one page's insert to the next instead of reading the file again
    (4x faster to stage a page). Rows keep a rowid: their payloads (a record, its ID-map
    row) are too large for a table clustered on its key. Sorts go to temporary files: the
    bucket index of a 10M-record read, sorted in memory, held about 450 MiB after it."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA temp_store = FILE;
            PRAGMA locking_mode = EXCLUSIVE;
            CREATE TABLE IF NOT EXISTS staged (
                key TEXT PRIMARY KEY, status INTEGER NOT NULL, bucket INTEGER NOT NULL,
                overlap INTEGER NOT NULL, new INTEGER NOT NULL, payload BLOB
            );
            CREATE TABLE IF NOT EXISTS unkeyed (payload BLOB NOT NULL);
            """
        )
        self.merges: list[tuple[int, int]] = []
        self._indexed = False

    def close(self) -> None:
        self.db.close()

    # -- writing, page by page -----------------------------------------------------------

    def put(self, rows: Sequence[tuple[str, int, int, int, int, Any]]) -> None:
        """Store rows ``(key, status, bucket, overlap, new, payload)``; a key's later row
        replaces its earlier one. Payloads are pickled here."""
        self.db.executemany(
            "INSERT OR REPLACE INTO staged VALUES (?, ?, ?, ?, ?, ?)",
            [
                (k, s, b, o, n, None if p is None else pickle.dumps(p, _PICKLE))
                for k, s, b, o, n, p in rows
            ],
        )

    def park_unkeyed(self, letters: Iterable[dict[str, Any]]) -> None:
        self.db.executemany(
            "INSERT INTO unkeyed VALUES (?)", [(pickle.dumps(x, _PICKLE),) for x in letters]
        )

    def merge(self, a: str, b: str) -> None:
        """The links (or match keys) ``a`` and ``b`` must be worked on in one chunk."""
        ba, bb = bucket_of(a), bucket_of(b)
        if ba != bb:
            self.merges.append((ba, bb))

    # -- questions the read asks of itself ----------------------------------------------

    def has(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` a page said something of (deletions included)."""
        out: set[str] = set()
        for part in _parts(list(keys)):
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT key FROM staged WHERE key IN ({marks})", part)
            out.update(k for (k,) in rows)
        return out

    def present_of(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` the read returned as records (not as deletions or lost ones)."""
        out: set[str] = set()
        for part in _parts(list(keys)):
            marks = ",".join("?" * len(part))
            query = f"SELECT key FROM staged WHERE status < {DELETED} AND key IN ({marks})"
            out.update(k for (k,) in self.db.execute(query, part))
        return out

    def deleted_keys(self) -> set[str]:
        return {k for (k,) in self.db.execute(f"SELECT key FROM staged WHERE status={DELETED}")}

    def counts(self) -> dict[int, int]:
        """Keys per status, and (under -1) the records with no key."""
        out = dict(
            self.db.execute("SELECT status, count(*) FROM staged GROUP BY status").fetchall()
        )
        out[-1] = self.db.execute("SELECT count(*) FROM unkeyed").fetchone()[0]
        return out

    def overlap_counts(self) -> dict[int, int]:
        """Keys per status whose latest copy was stamped before the cursor (a re-read)."""
        query = "SELECT status, count(*) FROM staged WHERE overlap=1 GROUP BY status"
        return dict(self.db.execute(query).fetchall())

    def new_changes(self) -> int:
        """Changed records the ID map holds no live row for."""
        query = f"SELECT count(*) FROM staged WHERE status={CHANGED} AND new=1"
        return self.db.execute(query).fetchone()[0]

    # -- reading back, chunk by chunk ----------------------------------------------------

    def bucket_sizes(self) -> dict[int, int]:
        """Rows a chunk must work on, per bucket: changes, deletions, lost and parked
        records, and skipped records whose version moved (their ID-map row is refreshed)."""
        self._index()
        query = f"SELECT bucket, count(*) FROM staged WHERE {_WORK} GROUP BY bucket"
        sizes = dict(self.db.execute(query).fetchall())
        unkeyed = self.db.execute("SELECT count(*) FROM unkeyed").fetchone()[0]
        if unkeyed:
            sizes[0] = sizes.get(0, 0) + unkeyed
        return sizes

    def filtered(self, system: str, buckets: Sequence[int] | None = None) -> Filtered:
        """The part of the read that falls in ``buckets`` (all of it when None), as the
        steps after the read take it."""
        self._index()
        out = Filtered(system=system, changed=[], deleted=set())
        parts: Iterable[Sequence[int] | None] = [None] if buckets is None else _parts(list(buckets))
        for part in parts:
            query = f"SELECT key, status, payload FROM staged WHERE {_WORK}"
            args: Sequence[int] = ()
            if part is not None:
                query += f" AND bucket IN ({','.join('?' * len(part))})"
                args = part
            for key, status, payload in self.db.execute(query, args):
                value = pickle.loads(payload) if payload is not None else None
                if status == CHANGED:
                    record, member = value
                    out.changed.append(record)
                    if member is not None:
                        out.members[key] = member
                elif status in (DELETED, LOST):
                    (out.deleted if status == DELETED else out.lost).add(key)
                    if value is not None:
                        out.members[key] = value
                elif status == PARKED:
                    out.parked.extend(value)
                else:  # an echo or unchanged record whose version moved
                    out.refreshed[key] = value
        if buckets is None or 0 in buckets:
            rows = self.db.execute("SELECT payload FROM unkeyed")
            out.parked.extend(pickle.loads(p) for (p,) in rows)
        return out

    def _index(self) -> None:
        """Index the rows a chunk works on by bucket, and only those: a read of 1M echoes
        took 5.7 s to count its buckets through an index of every row (each entry a visit
        to its row), 1.4 s so."""
        if not self._indexed:
            self.db.execute(f"CREATE INDEX IF NOT EXISTS ix_work ON staged (bucket) WHERE {_WORK}")
            self._indexed = True


def chunks_of(
    sizes: Iterable[dict[int, int]], merges: Iterable[tuple[int, int]], chunk_size: int
) -> list[list[int]]:
    """Buckets grouped into chunks of about ``chunk_size`` rows (summed over the systems'
    reads): merged buckets always share a chunk; a chunk holds whole buckets, so one may
    be larger than ``chunk_size`` when a bucket is."""
    total: dict[int, int] = {}
    for per_system in sizes:
        for bucket, n in per_system.items():
            total[bucket] = total.get(bucket, 0) + n
    parent = list(range(BUCKETS))

    def root(b: int) -> int:
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    for a, b in merges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for bucket in sorted(total):
        groups.setdefault(root(bucket), []).append(bucket)
    for bucket in range(BUCKETS):  # a merged bucket with nothing of its own still joins
        r = root(bucket)
        if r in groups and bucket not in groups[r] and r != bucket:
            groups[r].append(bucket)
    out: list[list[int]] = []
    current: list[int] = []
    size = 0
    for _, members in sorted(groups.items()):
        current.extend(members)
        size += sum(total.get(b, 0) for b in members)
        if size >= chunk_size:
            out.append(sorted(current))
            current, size = [], 0
    if current:
        out.append(sorted(current))
    return out


def _parts(items: list, size: int = 500) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
