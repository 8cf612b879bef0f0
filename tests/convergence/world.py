"""The world the randomized harness drives: SQL tables on virtual time, people writing
unique values into them, and endpoints that fail on demand.

Everything random comes from one seeded source; the clock only moves when the harness
moves it, so a failing sequence replays exactly.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from pydantic import SecretStr

from blocks.sql import SqlTable
from twoway.contract import ChangeSet, Create, Delete, Endpoint, Op, Update, WriteResult
from twoway.definition import load_definition
from twoway.errors import Retriable, Skippable
from twoway.state import StateStore, id_map
from twoway.values import format_timestamp

FIELDS = ("email", "first_name", "last_name")
OVERLAP = 5.0  # seconds of look-back, a few steps: a longer window would hide bugs


class VirtualClock:
    """A clock that moves when told to, and by a microsecond each time it is read."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        # time passes a little with every reading, as on a real clock: two writes never
        # share a timestamp, which a modified_at compare-and-set relies on
        self.now += timedelta(microseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class UserWrite:
    """One value a person wrote (every value is unique, so each write is observable)."""

    seq: int
    rid: int  # the record it was written to (keys may be reused after a delete)
    system: str
    key: str
    field: str
    value: str
    at: datetime


@dataclass
class Deletion:
    """A record a person deleted: its values then, and its link if it had one."""

    rid: int
    system: str
    key: str
    values: dict[str, str]
    link_id: str | None
    unconfirmed_copy: bool = False  # it, or a copy of it, came from a create whose answer was lost


@dataclass
class Faults:
    """Rates of each fault kind, drawn per call from the world's random source."""

    error_before: float = 0.0  # a read or write fails before anything happens
    applied_then_timeout: float = 0.0  # a write is applied, then the answer is lost
    partial: float = 0.0  # some operations of a batch fail, the others apply
    concurrent_edit: float = 0.0  # a person edits a record right before our update
    edit_while_paging: float = 0.0  # a person edits a record while a read is paging

    def any(self) -> bool:
        return any(v > 0 for v in vars(self).values())


class Flaky(Endpoint):
    """Wraps a real endpoint: counts what reaches it and injects the world's faults."""

    def __init__(self, world: World, system: str, inner: SqlTable):
        self.world, self.system, self.inner = world, system, inner
        self.integration_account = inner.integration_account
        self.ops_sent = 0
        self.last_read_keys: set[str] = set()
        self.last_read_start: datetime | None = None
        inner.use_page_hook(self._between_pages)

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self.world.rng.random() < rate

    def _between_pages(self, read_so_far: list[str]) -> None:
        """A person edits a record while the read pages: one already read (which moves it
        behind the read position) or any other."""
        if self._roll(self.world.faults.edit_while_paging):
            live = set(self.world.keys(self.system))
            done = [k for k in read_so_far if k in live]
            if done and self.world.rng.random() < 0.7:
                self.world.edit(
                    self.system, self.world.rng.choice(done), self.world.rng.choice(FIELDS)
                )
            else:
                self.world.random_edit(self.system)

    def columns(self) -> set[str]:
        return self.inner.columns()

    def arm(self) -> None:
        """A run starts: its first read is the extraction the completeness check looks at
        (a later read in the same run, such as a read-back of lost answers, is not)."""
        self._extraction = True

    def read_changes(self, cursor: str | None) -> ChangeSet:
        if self._roll(self.world.faults.error_before):
            raise Retriable(f"{self.system}: injected 503 on read")
        extraction, self._extraction = getattr(self, "_extraction", False), False
        started = self.world.clock()
        changes = self.inner.read_changes(cursor)
        if extraction:
            self.last_read_start = started
            self.last_read_keys = {r.key for r in changes.records}
        return changes

    def read(self, keys):
        return self.inner.read(keys)

    def list_keys(self):
        if self._roll(self.world.faults.error_before):
            raise Retriable(f"{self.system}: injected timeout listing keys")
        return self.inner.list_keys()

    def max_batch(self) -> int:
        return 4  # small batches: faults land between them

    def write(self, ops: list[Op]) -> list[WriteResult]:
        faults = self.world.faults
        if self._roll(faults.error_before):
            raise Retriable(f"{self.system}: injected 429 before the batch")
        for op in ops:
            if isinstance(op, Update) and self._roll(faults.concurrent_edit):
                self.world.edit(self.system, op.key, self.world.rng.choice(FIELDS))
        refused = {i for i in range(len(ops)) if self._roll(faults.partial)}
        applied = [op for i, op in enumerate(ops) if i not in refused]
        self.ops_sent += len(applied)
        applied_results = self.inner.write(applied)
        for r in applied_results:
            if r.ok and r.key and not isinstance(r.op, Delete):
                self.world.true_change[(self.system, r.key)] = self.world.clock()
            if r.ok and isinstance(r.op, Create):
                self.world.uncommitted[(self.system, r.key)] = r.op.ref
        results = iter(applied_results)
        out = []
        for i, op in enumerate(ops):
            if i in refused:
                error = (
                    Retriable("injected lock")
                    if self.world.rng.random() < 0.5
                    else Skippable("injected refusal")
                )
                out.append(WriteResult(op=op, error=error))
            else:
                out.append(next(results))
        if self._roll(faults.applied_then_timeout):
            for r in out:
                if r.ok and isinstance(r.op, Create):
                    self.world.unconfirmed_keys.add((self.system, r.key))
                    self.world.unconfirmed_links.add(r.op.ref)
            return [
                WriteResult(op=r.op, error=Retriable("injected timeout after apply")) if r.ok else r
                for r in out
            ]
        return out

    def close(self) -> None:
        self.inner.close()


@dataclass
class World:
    """N SQL systems, their people, and everything they wrote."""

    systems: int
    seed: int
    match_on: bool = False
    reuse_keys: bool = False  # SQLite without AUTOINCREMENT gives a deleted row's key again
    overlap: float = OVERLAP
    rng: random.Random = field(init=False)
    clock: VirtualClock = field(init=False)
    folder: Path = field(init=False)
    writes: list[UserWrite] = field(default_factory=list)
    deleted: list[Deletion] = field(default_factory=list)
    rid_of: dict[tuple[str, str], int] = field(default_factory=dict)  # live (system, key) -> record
    # creates whose answer was lost (applied, then a timeout): twoway cannot know of them
    unconfirmed_keys: set[tuple[str, str]] = field(default_factory=set)
    unconfirmed_links: set[str] = field(default_factory=set)
    uncommitted: dict[tuple[str, str], str] = field(default_factory=dict)  # created this run
    ambiguous_values: set[str] = field(default_factory=set)
    engine_deleted: dict[int, tuple[str, str]] = field(
        default_factory=dict
    )  # record -> (system, key)
    faults: Faults = field(default_factory=Faults)
    skew: dict[str, float] = field(default_factory=dict)  # seconds a person's clock is behind
    true_change: dict[tuple[str, str], datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.clock = VirtualClock(datetime(2030, 1, 1, tzinfo=UTC))
        self.folder = Path(tempfile.mkdtemp(prefix="twoway-harness-"))
        self.names = [f"s{i}" for i in range(self.systems)]
        self.engines: dict[str, sa.Engine] = {}
        self.tables: dict[str, sa.Table] = {}
        self.counter = 0
        doc: dict[str, Any] = {
            "name": "harness",
            "state": f"sqlite:///{self.folder / 'state.db'}",
            "systems": {},
            "fields": {f: {} for f in FIELDS},
        }
        if self.match_on:
            doc["match_on"] = ["email"]
        for name in self.names:
            url = f"sqlite:///{self.folder / (name + '.db')}"
            engine = sa.create_engine(url)
            table = sa.Table(
                "records",
                sa.MetaData(),
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                *(sa.Column(f"{name}_{f}", sa.String(80)) for f in FIELDS),
                sa.Column("stamp", sa.String(32)),
                sa.Column("who", sa.String(40)),
                sqlite_autoincrement=not self.reuse_keys,
            )
            table.create(engine)
            self.engines[name], self.tables[name] = engine, table
            doc["systems"][name] = {
                "kind": "sql",
                "url": url,
                "table": "records",
                "key": "id",
                "modified_at": "stamp",
                "modified_by": "who",
                "integration_account": "sync",
                "overlap_seconds": self.overlap,
            }
            for f in FIELDS:
                doc["fields"][f][name] = f"{name}_{f}"
        self.path = self.folder / "sync.yaml"
        self.path.write_text(yaml.safe_dump(doc))
        self.definition = load_definition(self.path)
        self.store = StateStore(self.definition.state, clock=self.clock)
        self.store.migrate()
        self.endpoints = {
            name: Flaky(self, name, self._table_endpoint(name)) for name in self.names
        }

    def _table_endpoint(self, name: str) -> SqlTable:
        spec = self.definition.systems[name]
        table = SqlTable(
            url=SecretStr(spec.url),
            table="records",
            key="id",
            modified_at="stamp",
            modified_by="who",
            integration_account="sync",
            columns_to_sync=[f"{name}_{f}" for f in FIELDS],
            page_size=3,
            overlap_seconds=self.overlap,
        )
        table.use_clock(self.clock)
        return table

    def close(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.close()
        for engine in self.engines.values():
            engine.dispose()
        self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- people -----------------------------------------------------------------------

    def unique(self, tag: str) -> str:
        self.counter += 1
        return f"{tag}{self.counter}"

    def _stamp(self, system: str) -> dict[str, str]:
        behind = self.skew.get(system, 0.0)
        return {
            "stamp": format_timestamp(self.clock() - timedelta(seconds=behind)),
            "who": f"person-{system}",
        }

    def _log(self, system: str, key: str, values: dict[str, str]) -> None:
        if (
            system,
            key,
        ) not in self.rid_of:  # a record the engine created, first touched by a person
            self.rid_of[(system, key)] = self._new_rid()
        rid = self.rid_of[(system, key)]
        for f, v in values.items():
            self.writes.append(UserWrite(len(self.writes), rid, system, key, f, v, self.clock()))
        self.true_change[(system, key)] = self.clock()

    def _new_rid(self) -> int:
        self.counter += 1
        return self.counter

    def create(self, system: str) -> str:
        values = {f: self.unique(f[0]) for f in FIELDS}
        table = self.tables[system]
        with self.engines[system].begin() as conn:
            key = conn.execute(
                table.insert().values(
                    {f"{system}_{f}": v for f, v in values.items()} | self._stamp(system)
                )
            ).inserted_primary_key[0]
        replaced = self.rid_of.get((system, str(key)))
        if replaced is not None:  # the engine deleted that record and the database reused its key
            self.engine_deleted[replaced] = (system, str(key))
        self.rid_of[(system, str(key))] = self._new_rid()
        self._log(system, str(key), values)
        return str(key)

    def keys(self, system: str) -> list[str]:
        with self.engines[system].connect() as conn:
            return [
                str(k)
                for k in conn.execute(sa.select(self.tables[system].c.id).order_by("id")).scalars()
            ]

    def edit(self, system: str, key: str, fname: str) -> None:
        value = self.unique(fname[0])
        table = self.tables[system]
        with self.engines[system].begin() as conn:
            done = conn.execute(
                table.update()
                .where(table.c.id == int(key))
                .values({f"{system}_{fname}": value} | self._stamp(system))
            ).rowcount
        if done:
            self._note_if_unconfirmed(system, key, {fname: value})
            self._log(system, key, {fname: value})

    def crashed(self) -> None:
        """A run died: the creates it applied are copies no committed state knows of."""
        self.unconfirmed_keys |= set(self.uncommitted)
        self.unconfirmed_links |= set(self.uncommitted.values())
        self.uncommitted.clear()

    def _note_if_unconfirmed(self, system: str, key: str, new: dict[str, str]) -> None:
        """A person touching a copy twoway cannot know of yet makes its values ambiguous."""
        if (system, key) not in self.unconfirmed_keys:
            return
        if any(
            r.system == system and r.external_id == key and r.deleted_at is None
            for r in self.id_rows()
        ):
            return  # a run has linked it since: no longer unknown
        self.ambiguous_values |= set(self.rows(system).get(key, {}).values()) | set(new.values())

    def random_edit(self, system: str) -> None:
        keys = self.keys(system)
        if keys:
            self.edit(system, self.rng.choice(keys), self.rng.choice(FIELDS))

    def delete(self, system: str, key: str) -> None:
        values = self.rows(system).get(key)
        self._note_if_unconfirmed(system, key, {})
        table = self.tables[system]
        with self.engines[system].begin() as conn:
            done = conn.execute(table.delete().where(table.c.id == int(key))).rowcount
        if done:
            link = next(
                (
                    r.link_id
                    for r in self.id_rows()
                    if r.system == system and r.external_id == key and r.deleted_at is None
                ),
                None,
            )
            rid = self.rid_of.pop((system, key), None) or self._new_rid()
            unconfirmed = (system, key) in self.unconfirmed_keys or link in self.unconfirmed_links
            self.deleted.append(Deletion(rid, system, key, values or {}, link, unconfirmed))

    # -- what the systems and the state hold ---------------------------------------------

    def rows(self, system: str) -> dict[str, dict[str, str]]:
        table = self.tables[system]
        with self.engines[system].connect() as conn:
            return {
                str(r.id): {f: r._mapping[f"{system}_{f}"] for f in FIELDS}
                for r in conn.execute(sa.select(table))
            }

    def id_rows(self) -> list[Any]:
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(id_map).where(id_map.c.sync == "harness")).all()

    def stamp_changes(self, system: str, since: datetime) -> set[str]:
        """Keys whose true change time is at or after ``since`` and still exist."""
        live = set(self.keys(system))
        return {
            k
            for (s, k), at in self.true_change.items()
            if s == system and at >= since and k in live
        }
