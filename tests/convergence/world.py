"""The world the randomized harness drives: systems on virtual time (SQL tables here, the
SaaS simulators in saas_world.py), people writing unique values into them, and endpoints
that fail on demand.

Each system is a :class:`Side`: how a person reaches it, how its endpoint is built, how
its faults are injected. Everything random comes from one seeded source; the clock only
moves when the harness moves it, so a failing sequence replays exactly.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from pydantic import SecretStr

from blocks.sql import SqlTable
from tests.crash import Crash
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
    restorable: bool = False  # its system may lose the deletion (Graph's upload differences)


@dataclass
class Faults:
    """Rates of each fault kind, drawn per call from the world's random source (SQL), or
    turned into the simulator's own HTTP faults (see each side's ``set_faults``)."""

    error_before: float = 0.0  # a read or write fails before anything happens
    applied_then_timeout: float = 0.0  # a write is applied, then the answer is lost
    partial: float = 0.0  # some operations of a batch fail, the others apply
    concurrent_edit: float = 0.0  # a person edits a record right before our update
    edit_while_paging: float = 0.0  # a person edits a record while a read is paging

    def any(self) -> bool:
        return any(v > 0 for v in vars(self).values())


class Side:
    """One system of the world: its records as people and the checks see them (the
    system's own keys, values under the canonical field names), and its endpoint."""

    #: the simulator injects the world's faults itself, at the HTTP level; else the
    #: endpoint wrapper draws them
    http_faults = False

    def __init__(self, world: World, name: str):
        self.world, self.name = world, name

    def system(self) -> dict[str, Any]:
        """The system's entry in the sync definition."""
        raise NotImplementedError

    def column(self, field_name: str) -> str:
        """The system's column of a canonical field."""
        raise NotImplementedError

    def endpoint(self, between_pages: Callable[[list[str]], None]) -> Endpoint:
        """The endpoint twoway uses, calling ``between_pages`` with the keys read so far
        while a read pages."""
        raise NotImplementedError

    def insert(self, values: dict[str, str]) -> str:
        """A person creates a record; its key."""
        raise NotImplementedError

    #: twoway stamps its creates with their link id (a link marker) and reads it back
    marked = False

    #: people can edit with the integration account's own credentials (a script or an
    #: administrator using them): such an edit is a change, not an echo
    account_edits = False

    def update(self, key: str, values: dict[str, str], as_account: bool = False) -> bool:
        """A person changes fields of a record (as the integration account when
        ``as_account``); False when it is gone."""
        raise NotImplementedError

    def remove(self, key: str) -> bool:
        """A person deletes a record; False when it was gone already."""
        raise NotImplementedError

    def live_keys(self) -> list[str]:
        """Live keys, in a stable order (rules pick records by position)."""
        raise NotImplementedError

    def rows(self) -> dict[str, dict[str, str]]:
        """Live records: key -> canonical field -> value."""
        raise NotImplementedError

    def set_faults(self, faults: Faults) -> None:
        """Take the world's fault rates (sides with ``http_faults`` pass them on)."""

    def close(self) -> None:
        """Release what the side holds."""


class SqlSide(Side):
    """A SQLite table; people write to it directly, stamping their own (maybe skewed)
    clock and name."""

    def __init__(self, world: World, name: str):
        super().__init__(world, name)
        self.url, self.table_name = self.place(world, name)
        self.engine = sa.create_engine(self.url)
        self.marked = name in world.marked
        self.table = sa.Table(
            self.table_name,
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            *(sa.Column(f"{name}_{f}", sa.String(80)) for f in FIELDS),
            sa.Column("stamp", sa.String(32)),
            sa.Column("who", sa.String(40)),
            *([sa.Column("twoway_link", sa.String(40))] if self.marked else []),
            sqlite_autoincrement=not world.reuse_keys,
        )
        self.table.create(self.engine)

    def system(self) -> dict[str, Any]:
        return {
            "kind": "sql",
            "url": self.url,
            "table": self.table_name,
            "key": "id",
            "modified_at": "stamp",
            "modified_by": "who",
            "integration_account": "sync",
            "overlap_seconds": self.world.overlap,
        } | ({"link_column": "twoway_link"} if self.marked else {})

    def column(self, field_name: str) -> str:
        return f"{self.name}_{field_name}"

    def endpoint(self, between_pages: Callable[[list[str]], None]) -> Endpoint:
        table = SqlTable(
            url=SecretStr(self.url),
            table=self.table_name,
            key="id",
            modified_at="stamp",
            modified_by="who",
            integration_account="sync",
            columns_to_sync=[self.column(f) for f in FIELDS],
            page_size=3,
            overlap_seconds=self.world.overlap,
            link_column="twoway_link" if self.marked else None,
        )
        table.use_clock(self.world.clock)
        table.use_page_hook(between_pages)
        return table

    account_edits = True

    def place(self, world: World, name: str) -> tuple[str, str]:
        """The database URL and the table name of this system."""
        return f"sqlite:///{world.folder / (name + '.db')}", "records"

    def _stamp(self, who: str) -> dict[str, str]:
        behind = self.world.skew.get(self.name, 0.0)
        return {
            "stamp": format_timestamp(self.world.clock() - timedelta(seconds=behind)),
            "who": who,
        }

    def _columns(self, values: dict[str, str], as_account: bool = False) -> dict[str, str]:
        who = "sync" if as_account else f"person-{self.name}"
        return {self.column(f): v for f, v in values.items()} | self._stamp(who)

    def insert(self, values: dict[str, str]) -> str:
        with self.engine.begin() as conn:
            inserted = conn.execute(self.table.insert().values(self._columns(values)))
            return str(inserted.inserted_primary_key[0])

    def update(self, key: str, values: dict[str, str], as_account: bool = False) -> bool:
        table = self.table
        with self.engine.begin() as conn:
            columns = self._columns(values, as_account)
            query = table.update().where(table.c.id == int(key)).values(columns)
            return bool(conn.execute(query).rowcount)

    def remove(self, key: str) -> bool:
        table = self.table
        with self.engine.begin() as conn:
            return bool(conn.execute(table.delete().where(table.c.id == int(key))).rowcount)

    def live_keys(self) -> list[str]:
        with self.engine.connect() as conn:
            ids = conn.execute(sa.select(self.table.c.id).order_by("id")).scalars()
            return [str(k) for k in ids]

    def rows(self) -> dict[str, dict[str, str]]:
        with self.engine.connect() as conn:
            return {
                str(r.id): {f: r._mapping[self.column(f)] for f in FIELDS}
                for r in conn.execute(sa.select(self.table))
            }

    def close(self) -> None:
        self.engine.dispose()


class PostgresSide(SqlSide):
    """A table of its own in the PostgreSQL server the integration tests use (dropped when
    the world closes)."""

    def place(self, world: World, name: str) -> tuple[str, str]:
        from tests.sqlrig import POSTGRES_URL

        return POSTGRES_URL, f"harness_{uuid.uuid4().hex[:10]}_{name}"

    def close(self) -> None:
        self.table.drop(self.engine, checkfirst=True)
        super().close()


class Flaky(Endpoint):
    """Wraps a real endpoint: counts what reaches it and injects the world's faults (the
    SQL ones itself; a simulator's side injects them at the HTTP level instead)."""

    def __init__(self, world: World, side: Side):
        self.world, self.system, self.side = world, side.name, side
        self.inner = side.endpoint(self._between_pages)
        self.integration_account = getattr(self.inner, "integration_account", None)
        self.ops_sent = 0
        self.last_read_keys: set[str] = set()
        self.last_read_start: datetime | None = None

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self.world.rng.random() < rate

    def _endpoint_fault(self, rate: float) -> bool:
        """A fault this wrapper injects: never for a side whose simulator injects them."""
        return not self.side.http_faults and self._roll(rate)

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

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        if self._endpoint_fault(self.world.faults.error_before):
            raise Retriable(f"{self.system}: injected 503 on read")
        extraction, self._extraction = getattr(self, "_extraction", False), False
        started = self.world.clock()
        keys: set[str] = set()
        for page in self.inner.read_pages(cursor):
            keys.update(r.key for r in page.records)
            yield page
        if extraction:
            self.last_read_start = started
            self.last_read_keys = keys

    def read(self, keys):
        return self.inner.read(keys)

    def list_keys(self):
        if self._endpoint_fault(self.world.faults.error_before):
            raise Retriable(f"{self.system}: injected timeout listing keys")
        return self.inner.list_keys()

    def count_keys(self):
        if self._endpoint_fault(self.world.faults.error_before):
            raise Retriable(f"{self.system}: injected timeout counting keys")
        return self.inner.count_keys()

    def max_batch(self) -> int:
        return 4  # small batches: faults land between them

    def write(self, ops: list[Op]) -> list[WriteResult]:
        faults = self.world.faults
        if self._endpoint_fault(faults.error_before):
            raise Retriable(f"{self.system}: injected 429 before the batch")
        for op in ops:
            if isinstance(op, Update) and self._roll(faults.concurrent_edit):
                self.world.edit(self.system, op.key, self.world.rng.choice(FIELDS))
        refused = {i for i in range(len(ops)) if self._endpoint_fault(faults.partial)}
        applied = [op for i, op in enumerate(ops) if i not in refused]
        self.ops_sent += len(applied)
        held = self.side.rows() if any(isinstance(op, Update) for op in applied) else {}
        before = set(self.side.live_keys()) if self.side.http_faults else set()
        try:
            applied_results = self.inner.write(applied)
        except Exception:
            if self.side.http_faults:  # a failed call may still have made records
                self._note_lost_creates(before, applied, [])
            self.world.unsure_now |= {
                (self.system, op.key) for op in applied if isinstance(op, Update)
            }
            raise
        self._note_no_ops(applied_results, held)
        for r in applied_results:
            if r.ok and r.key and not isinstance(r.op, Delete):
                self.world.true_change[(self.system, r.key)] = self.world.clock()
            if r.ok and isinstance(r.op, Create):
                self.world.uncommitted[(self.system, r.key)] = r.op.ref
        if self.side.http_faults:
            self._note_lost_creates(before, applied, applied_results)
        if self.world.crash_after_batches is not None:
            self.world.crash_after_batches -= 1
            if self.world.crash_after_batches <= 0:  # dies with this batch applied
                self.world.crash_after_batches = None
                raise Crash(f"{self.system}: the process died after a write batch")
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
        if self._endpoint_fault(faults.applied_then_timeout):
            self.world.unsure_now |= {
                (self.system, r.op.key) for r in out if r.ok and isinstance(r.op, Update)
            }
            for r in out:
                if r.ok and isinstance(r.op, Create):
                    self.world.unconfirmed_keys.add((self.system, r.key))
                    self.world.unconfirmed_links.add(r.op.ref)
            return [
                WriteResult(op=r.op, error=Retriable("injected timeout after apply")) if r.ok else r
                for r in out
            ]
        return out

    def _note_no_ops(self, results: list[WriteResult], held: dict[str, dict[str, str]]) -> None:
        """An applied update that set a field to the value the system already held is a
        wasted write at best and an echo written back at worst: the world counts each one,
        except where twoway cannot know what the system holds (a write of its own whose
        outcome was lost, or one made by a run that died before its state was committed).
        A write the compare-and-set refused changed nothing and is not counted."""
        unsure = self.world.unsure | self.world.unsure_now
        for r in results:
            op = r.op
            if not isinstance(op, Update):
                continue
            self.world.written_this_run.add((self.system, op.key))
            values = held.get(op.key)
            if not r.ok or values is None or (self.system, op.key) in unsure:
                continue
            same = [
                f
                for f in FIELDS
                if self.side.column(f) in op.values and op.values[self.side.column(f)] == values[f]
            ]
            if same:
                self.world.no_op_writes.append(
                    f"{self.system} {op.key}: {', '.join(same)} = {values}"
                )

    def _note_lost_creates(
        self, before: set[str], ops: list[Op], results: list[WriteResult]
    ) -> None:
        """Records our creates made whose answer the simulator lost: found as new keys no
        result names, matched to their create by the (unique) values it carried."""
        answered = {r.key for r in results if r.ok}
        lost = [k for k in self.side.live_keys() if k not in before and k not in answered]
        if not lost:
            return
        rows = self.side.rows()
        creates = {
            tuple(op.values.get(self.side.column(f)) for f in FIELDS): op.ref
            for op in ops
            if isinstance(op, Create)
        }
        for key in lost:
            self.world.true_change[(self.system, key)] = self.world.clock()
            self.world.unconfirmed_keys.add((self.system, key))
            ref = creates.get(tuple(rows.get(key, {}).get(f) for f in FIELDS))
            if ref is not None:
                self.world.unconfirmed_links.add(ref)

    def close(self) -> None:
        self.inner.close()


class World:
    """Systems (one :class:`Side` each), their people, and everything they wrote."""

    def __init__(
        self,
        seed: int,
        sides: Sequence[type[Side]] = (SqlSide, SqlSide),
        *,
        match_on: bool = False,
        reuse_keys: bool = False,  # SQLite without AUTOINCREMENT gives a deleted row's key again
        overlap: float = OVERLAP,
        marked: Sequence[str] = (),  # the systems with a link marker column
    ):
        self.seed, self.match_on, self.reuse_keys, self.overlap = (
            seed,
            match_on,
            reuse_keys,
            overlap,
        )
        self.marked = set(marked)
        self.rng = random.Random(seed)
        self.clock = VirtualClock(datetime(2030, 1, 1, tzinfo=UTC))
        self.folder = Path(tempfile.mkdtemp(prefix="twoway-harness-"))
        self.writes: list[UserWrite] = []
        self.deleted: list[Deletion] = []
        self.rid_of: dict[tuple[str, str], int] = {}  # live (system, key) -> record
        # creates whose answer was lost (applied, then a timeout): twoway cannot know of them
        self.unconfirmed_keys: set[tuple[str, str]] = set()
        self.unconfirmed_links: set[str] = set()
        self.uncommitted: dict[tuple[str, str], str] = {}  # created this run
        # values of this run's copies a person touched while the run went on
        self.touched: dict[tuple[str, str], set[str]] = {}
        self.ambiguous_values: set[str] = set()
        self.engine_deleted: dict[int, tuple[str, str]] = {}  # record -> (system, key)
        self.skew: dict[str, float] = {}  # seconds a person's clock is behind
        self.true_change: dict[tuple[str, str], datetime] = {}
        # updates that set a field to the value the system held (see Flaky._note_no_ops)
        self.no_op_writes: list[str] = []
        # records whose latest write twoway cannot be sure of: its answer was lost, or the
        # run that made it died before committing; the next completed run learns them
        self.unsure: set[tuple[str, str]] = set()
        self.unsure_now: set[tuple[str, str]] = set()  # the same, of the run going on
        self.written_this_run: set[tuple[str, str]] = set()
        # the process dies once this many more write batches have been applied
        self.crash_after_batches: int | None = None
        self._faults = Faults()
        self.counter = 0
        self.names = [f"s{i}" for i in range(len(sides))]
        self.systems = len(sides)
        self.sides: dict[str, Side] = {}
        self.endpoints: dict[str, Flaky] = {}
        self.store: StateStore | None = None
        try:
            self._build(sides)
        except BaseException:
            self.close()
            raise

    def _build(self, sides: Sequence[type[Side]]) -> None:
        for name, side in zip(self.names, sides, strict=True):
            self.sides[name] = side(self, name)
        doc: dict[str, Any] = {
            "name": "harness",
            "state": f"sqlite:///{self.folder / 'state.db'}",
            "systems": {name: side.system() for name, side in self.sides.items()},
            "fields": {f: {n: s.column(f) for n, s in self.sides.items()} for f in FIELDS},
        }
        if self.match_on:
            doc["match_on"] = ["email"]
        self.path = self.folder / "sync.yaml"
        self.path.write_text(yaml.safe_dump(doc))
        self.definition = load_definition(self.path)
        self.store = StateStore(self.definition.state, clock=self.clock)
        self.store.migrate()
        for name, side in self.sides.items():
            self.endpoints[name] = Flaky(self, side)

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._faults = faults
        for side in self.sides.values():
            side.set_faults(faults)

    def close(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.close()
        for side in self.sides.values():
            side.close()
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- people -----------------------------------------------------------------------

    def unique(self, tag: str) -> str:
        self.counter += 1
        return f"{tag}{self.counter}"

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
        key = self.sides[system].insert(values)
        replaced = self.rid_of.get((system, key))
        if replaced is not None:  # the engine deleted that record and the database reused its key
            self.engine_deleted[replaced] = (system, key)
        self.rid_of[(system, key)] = self._new_rid()
        self._log(system, key, values)
        return key

    def keys(self, system: str) -> list[str]:
        return self.sides[system].live_keys()

    def edit(self, system: str, key: str, fname: str, as_account: bool = False) -> None:
        value = self.unique(fname[0])
        if self.sides[system].update(key, {fname: value}, as_account):
            self._note_if_unconfirmed(system, key, {fname: value})
            self._log(system, key, {fname: value})

    def committed(self, read: set[str] | None = None) -> None:
        """A run committed its state: the creates it applied are known, except those whose
        answer was lost and that the run did not find again: a person who touched one of
        those while the run went on edited a copy twoway cannot know of (ambiguous)."""
        linked = {(r.system, r.external_id) for r in self.id_rows() if r.deleted_at is None}
        for copy, values in self.touched.items():
            if copy in self.unconfirmed_keys and copy not in linked:
                self.ambiguous_values |= values
        self.uncommitted.clear()
        self.touched.clear()
        # what the run read it has learnt; a one-way run leaves the others unsure
        kept = {k for k in self.unsure if read is not None and k[0] not in read}
        self.unsure, self.unsure_now = kept | self.unsure_now, set()
        self.written_this_run.clear()

    def chunk_committed(self) -> None:
        """A chunk of the running run committed its state: the creates it applied and
        linked are known from now on (a person touching one edits a known record)."""
        linked = {(r.system, r.external_id) for r in self.id_rows() if r.deleted_at is None}
        for copy in [c for c in self.uncommitted if c in linked]:
            del self.uncommitted[copy]
            self.touched.pop(copy, None)

    def crashed(self) -> None:
        """A run died, or failed, before committing its state: the creates it applied are
        copies no committed state knows of, and those a person touched meanwhile are as
        ambiguous as when touched later."""
        self.unconfirmed_keys |= set(self.uncommitted)
        self.unconfirmed_links |= set(self.uncommitted.values())
        for values in self.touched.values():
            self.ambiguous_values |= values
        self.uncommitted.clear()
        self.touched.clear()
        self.unsure |= self.written_this_run | self.unsure_now
        self.unsure_now.clear()
        self.written_this_run.clear()

    def _note_if_unconfirmed(self, system: str, key: str, new: dict[str, str]) -> None:
        """A person touching a copy twoway cannot know of yet makes its values ambiguous
        (for a copy the running run made: once that run dies without committing). Not on
        a system with a link marker: twoway finds its copies by the marker, edited or not."""
        if new and self.sides[system].marked:
            return
        if (system, key) in self.uncommitted:
            touched = self.touched.setdefault((system, key), set())
            touched |= set(self.rows(system).get(key, {}).values()) | set(new.values())
            return
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
        if self.sides[system].remove(key):
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
        return self.sides[system].rows()

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
