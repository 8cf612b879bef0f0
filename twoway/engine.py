"""What a run is made of, below the steps: its runtime (clock, random source, sleep,
connectors, observer), its lease, its staging files, the state it opens and closes, and
the bookkeeping between steps (the report's counts, the intents of creates, the
mass-change guard). The steps themselves, in order, are flows/steps.py; nothing here
calls them.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import math
import os
import random
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twoway.connectors import open_endpoint
from twoway.contract import Create, Delete, Endpoint, Update, WriteResult, write_kind
from twoway.definition import Definition
from twoway.errors import AlreadyRunning, MassChangeRefused, SyncError, TwowayError, redact
from twoway.records import Mapping, Plan
from twoway.report import (
    COUNT_COLUMNS,
    TABLE_CAP,
    RunReport,
    count_plan_rows,
    plan_rows,
    refused_writes,
)
from twoway.review import applied_decisions, decision_line
from twoway.staging import ReadSummary, StagedRead
from twoway.state import Intent, StateChanges, StateStore
from twoway.uuid7 import TimeOrderedIds
from twoway.values import values_hash

SCOPE_ALL = "*"

#: linked records a system needs before the mass-change guard judges it (below that a share
#: says little)
GUARD_FLOOR = 10


def utcnow() -> datetime:
    return datetime.now(UTC)


class Observer:
    """Told of a run's progress: each step as it starts and ends, each chunk, each write
    batch. Progress bars and tests listen; the run does not depend on them."""

    def step(self, name: str, ended: bool) -> None:
        """A step starts (``ended`` False) or has ended."""

    def chunk(self, index: int, total: int, writes: int) -> None:
        """Chunk ``index`` (from 0) of ``total`` is planned, with ``writes`` writes."""

    def wrote(self, system: str, done: int, total: int) -> None:
        """A load of this chunk has written ``done`` of ``total``."""


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run several calls at once, each on a thread of its own (under Prefect, as task runs
    of the same flow run: each thread gets a copy of the caller's context), and return
    their results in order; the first error is raised once all have ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, c) for c in calls]
        wait(futures)
    return [f.result() for f in futures]


#: a load's writes handed to something that spreads them (a sharded run's task runner):
#: called as :func:`tasks.load.load_changes` is, one result per planned write, in order
LoadSpreader = Callable[..., list[WriteResult]]


@dataclass
class Runtime:
    """What a run depends on, passed in so tests can replace every part."""

    clock: Callable[[], datetime] = utcnow
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], Any] = time.sleep
    endpoints: dict[str, Endpoint] | None = None
    store: StateStore | None = None
    #: each step runs as a Prefect task run (a flow run sets it); otherwise as the task's
    #: plain function
    tracked: bool = False
    #: a sharded run's load: the writes of each system spread over its task runner
    spread_load: LoadSpreader | None = None
    observer: Observer = field(default_factory=Observer)
    logger: logging.Logger | logging.LoggerAdapter | None = None
    lease_ttl: float = 60.0
    #: records (changes, deletions) a chunk holds about: each chunk is planned, written and
    #: committed before the next one is read back from the staging files (None: the
    #: definition's ``chunk_size``)
    chunk_size: int | None = None
    #: a full read of several systems reads each in a process of its own (the flows set it;
    #: a run given its own endpoints reads in this process)
    read_apart: bool = False


class _LeaseKeeper:
    """Renews the run's lease in the background so a long step does not lose it."""

    def __init__(self, store: StateStore, sync: str, holder: str, ttl: float):
        self.store, self.sync, self.holder, self.ttl = store, sync, holder, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{sync}", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self.store.acquire_lease(self.sync, self.holder, self.ttl)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.store.renew_lease(self.sync, self.holder, self.ttl)
            except Exception:  # the next renewal tries again; expiry is the safety net
                continue

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.store.release_lease(self.sync, self.holder)


def open_store(definition: Definition, clock: Callable[[], datetime] | None = None) -> StateStore:
    store = StateStore(definition.state or "", clock=clock)
    store.migrate()
    return store


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a run: a run holds millions of small
    objects, none of them in cycles that must go early, and with the collector on each
    full pass walks them all again (planning 100,000 new records took twice as long)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class Run:
    """One run as its steps share it: what it reads and writes, where it stages, what it
    has done so far. :func:`opened_run` makes one; the steps fill in the reads."""

    definition: Definition
    rt: Runtime
    store: StateStore
    endpoints: dict[str, Endpoint]
    report: RunReport
    sources: set[str]
    targets: set[str]
    scope: str
    full: bool
    log: Any
    #: link ids, time-ordered: appended at the end of the ID map's indexes
    new_link: Callable[[], str]
    staged: dict[str, StagedRead] = field(default_factory=dict)
    reads: dict[str, ReadSummary] = field(default_factory=dict)
    due: list[dict[str, Any]] = field(default_factory=list)
    decided: list[dict[str, Any]] = field(default_factory=list)
    intents: list[Intent] = field(default_factory=list)
    pending: set[str] = field(default_factory=set)
    done: StateChanges = field(default_factory=StateChanges)  # what the chunks committed

    def jobs(self) -> list[tuple[str, str | None, list[str]]]:
        """Per source system: its cursor (None for a full read) and the keys to read again
        whatever their cursor (records parked before they were linked: ambiguous matches)."""
        sync = self.definition.name
        out = []
        for system in sorted(self.sources):
            cursor = None if self.full else self.store.cursor(sync, system, self.scope)
            reread = [
                d["external_id"]
                for d in self.due
                if d["link_id"] is None and d["external_id"] and d["system"] == system
            ]
            out.append((system, cursor, reread))
        return out

    def read(self, reads: dict[str, ReadSummary]) -> None:
        """The sources are read: count them, and gather what the chunks are planned from."""
        self.reads = reads
        for system, read in reads.items():
            counts = self.report.systems[system]
            counts["extracted"] = read.extracted
            counts["echo_skipped"] = read.echo_skipped
            counts["reread"] = read.reread
        self.decided = self.store.decided_conflicts(self.definition.name)
        self.pending = {d["link_id"] for d in self.due if d["link_id"]} | {
            c["link_id"] for c in self.decided
        }

    def cursors(self) -> StateChanges:
        """The cursors of every system read, as far as this run read them."""
        return StateChanges(
            cursors={(system, self.scope): read.cursor for system, read in self.reads.items()}
        )

    def planned(self, index: int, total: int, plan: Plan) -> None:
        """A chunk is planned: its conflicts and planned writes go into the report."""
        report = self.report
        report.conflicts += len(plan.conflicts)
        report.conflict_list.extend(plan.conflicts)
        for system, ops in plan.ops.items():
            report.planned[system] = report.planned.get(system, 0) + len(ops)
        self.rt.observer.chunk(index, total, sum(len(ops) for ops in plan.ops.values()))
        self.log.debug(
            "%s: chunk %d of %d: planned %s",
            self.definition.name,
            index + 1,
            total,
            ", ".join(f"{s}: {len(ops)} writes" for s, ops in sorted(plan.ops.items())),
        )

    def planned_only(self, plan: Plan) -> None:
        """A dry run's chunk: what it would write counts as written in the report."""
        report = self.report
        _note_changes(report, plan, set())
        for system, ops in plan.ops.items():
            counts = report.systems[system]
            for p in ops:
                counts[write_kind(p.op)] += 1

    def before_writes(self, mapping: Mapping, plan: Plan) -> None:
        """The conflict log and the creates' intents, written before any write goes out: a
        run that dies after overwriting a conflict's loser must not lose the record of it,
        nor make a create again that it made."""
        sync, store = self.definition.name, self.store
        if plan.conflicts:
            store.commit(sync, StateChanges(conflicts=plan.conflicts), self.report.run_id)
        fresh = [m for link in mapping.new_links for m in mapping.members.get(link, [])]
        # a record found by its intent joins the ID map now, by key: a write to it that a
        # crash leaves uncommitted changes its values, and the intent's would no longer find it
        recovered = {(s, link) for s, link in mapping.recovered if link not in mapping.new_links}
        fresh += [
            m
            for s, link in recovered
            for m in mapping.members.get(link, [])
            if m.system == s and m.seen is None
        ]
        store.record_intents(
            sync, self.report.run_id, _intents(self.definition, mapping, plan), fresh
        )

    def settled(
        self,
        mapping: Mapping,
        plan: Plan,
        changes: StateChanges,
        counts: dict[str, dict[str, int]],
        final: bool,
    ) -> None:
        """A chunk's writes are settled into ``changes``: the cursors go with the last
        chunk; its counts, failures and field changes go into the report."""
        definition, report = self.definition, self.report
        changes.cursors = self.cursors().cursors if final else {}
        for system, c in counts.items():
            for kind, n in c.items():
                report.systems[system][kind] += n
        for letter in mapping.parked:  # parked before any write: failures of their system
            report.systems[letter["system"]]["failed"] += 1
        failures = [
            {
                **{k: v for k, v in letter.items() if k != "payload"},
                "match": _match_value(definition, letter.get("payload")),
            }
            for letter in changes.dead_letters
        ]
        report.failures.extend(failures)
        _note_changes(report, plan, refused_writes(failures))

    def committed(self, changes: StateChanges) -> None:
        """A chunk's state is committed: the decisions it applied count for the report."""
        self.done.resolved_conflicts.extend(changes.resolved_conflicts)
        self.done.resolved_dead_letters.extend(changes.resolved_dead_letters)

    def finish(self) -> None:
        """Every chunk is done: the decisions applied and the counts, in the report and log."""
        sync, report = self.definition.name, self.report
        report.decisions = applied_decisions(self.decided, self.due, self.done)
        for decision in report.decisions:
            self.log.info("%s: %s", sync, decision_line(decision))
        self.log.info("%s: %s; %d conflicts", sync, counts_line(report.systems), report.conflicts)


def hold_run(
    definition: Definition,
    runtime: Runtime,
    steps: Callable[[Run], None],
    *,
    dry_run: bool = False,
    full: bool = False,
    sources: set[str] | None = None,
    targets: set[str] | None = None,
) -> RunReport:
    """Run ``steps`` on an open run and return its report: the state store and the systems
    opened, the lease held and the run's start and outcome recorded (not for a dry run), a
    staging file per source; all closed after, however the steps end. An error fails the
    run (one line in the report and the log) and is not raised;
    :class:`~twoway.errors.AlreadyRunning` is: another run holds the lease. Python's
    cyclic collector is paused meanwhile (:func:`_collector_paused`)."""
    rt = runtime
    log = rt.logger or logging.getLogger("twoway")
    run_id = uuid.UUID(int=rt.rng.getrandbits(128)).hex
    store = rt.store
    owns_store = rt.store is None
    endpoints = dict(rt.endpoints or {})
    owns_endpoints = rt.endpoints is None
    all_systems = set(definition.systems)
    one_way = sources is not None or targets is not None
    sources = set(sources or all_systems)
    targets = set(targets or all_systems)
    scope = SCOPE_ALL if not one_way else "->" + ",".join(sorted(targets))
    report = RunReport(sync=definition.name, run_id=run_id, dry_run=dry_run)
    report.systems = {s: dict.fromkeys(COUNT_COLUMNS, 0) for s in definition.systems}
    started = time.perf_counter()
    with _collector_paused():
        try:
            # a store or a system that cannot be opened (a saved block that does not exist)
            # fails the run like any other known error: one line, a report
            store = store or open_store(definition, rt.clock)
            store.migrate()
            if owns_endpoints:
                for system in definition.systems:
                    endpoints[system] = open_endpoint(definition, system)
            for endpoint in endpoints.values():
                if hasattr(endpoint, "use_clock"):
                    endpoint.use_clock(rt.clock)
            new_link = TimeOrderedIds(rt.clock, rt.rng)
            run = Run(
                definition,
                rt,
                store,
                endpoints,
                report,
                sources,
                targets,
                scope,
                full,
                log,
                new_link,
            )
            with _staging(sources) as run.staged:
                if dry_run:
                    steps(_prepared(run))
                else:
                    with _LeaseKeeper(store, definition.name, run_id, rt.lease_ttl):
                        store.start_run(run_id, definition.name, dry_run)
                        try:
                            steps(_prepared(run))
                        except Exception as exc:
                            _fail(report, exc, log)
                            store.finish_run(run_id, "failed", report.as_json(), report.error)
                        else:
                            store.finish_run(run_id, "completed", report.as_json())
        except AlreadyRunning:
            raise
        except Exception as exc:  # the state store or a dry run failed
            _fail(report, exc, log)
        finally:
            if owns_endpoints:
                for endpoint in endpoints.values():
                    endpoint.close()
            if owns_store and store is not None:
                store.close()
    report.seconds = time.perf_counter() - started
    return report


def _prepared(run: Run) -> Run:
    """The run with what it needs before its reads: the due dead letters and the open
    intents of crashed runs."""
    sync = run.definition.name
    run.due = run.store.due_dead_letters(sync)
    run.intents = run.store.open_intents(sync)
    return run


def _fail(report: RunReport, exc: BaseException, log: Any) -> None:
    """Mark the report failed with a message safe to print: a known failure is one error
    line; an unexpected one is logged with its traceback, credentials masked in both."""
    report.status = "failed"
    if isinstance(exc, TwowayError):
        system = exc.system if isinstance(exc, SyncError) else None
        report.error = redact(f"{system}: {exc}" if system else str(exc))
        log.error("%s failed: %s", report.sync, report.error)
    else:
        report.error = redact(f"{type(exc).__name__}: {exc}")
        trace = redact("".join(traceback.format_exception(exc)).rstrip())
        log.error("%s failed: %s\n%s", report.sync, report.error, trace)


def _match_value(definition: Definition, values: dict[str, Any] | None) -> str | None:
    """The ``match_on`` values of a record, as people know it (``ada@example.com``)."""
    if not values:
        return None
    parts = [str(values[f]) for f in definition.match_on if values.get(f) not in (None, "")]
    return ", ".join(parts) or None


@contextmanager
def _staging(sources: set[str]) -> Iterator[dict[str, StagedRead]]:
    """A staging file per source system in a temporary folder of the run's own; closed and
    removed when the run ends, however it ends."""
    with tempfile.TemporaryDirectory(prefix="twoway-run-") as folder:
        staged = {s: StagedRead(os.path.join(folder, f"{s}.sqlite")) for s in sorted(sources)}
        try:
            yield staged
        finally:
            for read in staged.values():
                read.close()


def could_trip(definition: Definition, store: StateStore) -> bool:
    """Whether the mass-change guard can refuse this run at all: only a system with at
    least :data:`GUARD_FLOOR` linked records can trip it (a first sync never does)."""
    sync = definition.name
    return any(
        store.live_count(sync, system, at_most=GUARD_FLOOR) >= GUARD_FLOOR
        for system in definition.systems
    )


def _note_changes(report: RunReport, plan: Plan, refused: set[tuple[str, str]]) -> None:
    """Keep the first rows of the run's field-change table and count the rest."""
    room = TABLE_CAP - len(report.changes)
    if room > 0:
        report.changes.extend(plan_rows(plan, limit=room, refused=refused))
    report.change_rows += count_plan_rows(plan, refused)


def counts_line(systems: dict[str, dict[str, int]]) -> str:
    """The per-system counts of a run in one line (logs, the run's state message)."""
    return "; ".join(
        f"{s}: {c['extracted']} read"
        + (f" ({c['reread']} again in the overlap window)" if c.get("reread") else "")
        + f", {c['echo_skipped']} echoes, +{c['created']} ~{c['updated']} -{c['deleted']}, "
        f"{c['failed']} failed, {c['deferred']} deferred"
        for s, c in sorted(systems.items())
    )


def _intents(definition: Definition, mapping: Any, plan: Plan) -> list[Intent]:
    """One intent per planned create: the values it carries and the link's other records."""
    out = []
    for system, planned in plan.ops.items():
        names = definition.fields_of(system)
        for p in planned:
            if isinstance(p.op, Create):
                values = {f: p.fields.get(f) for f in names}  # planned values are canonical
                # a copy of a record read this run has that record's hash already
                known = (
                    r.hash
                    for r in mapping.observed.get(p.link_id, {}).values()
                    if r.values == values
                )
                p.created_hash = next(known, None) or values_hash(values)
                members = [
                    (m.system, m.external_id)
                    for m in mapping.members.get(p.link_id, [])
                    if m.deleted_at is None
                ]
                out.append(Intent(system, p.link_id, p.created_hash, members))
    return out


def sizes_of(definition: Definition, plan: Plan) -> dict[str, list[int]]:
    """Per system: records found deleted, deletions planned, values of converged records
    planned to be overwritten (first-time links do not count)."""
    out = {}
    for system in sorted(definition.systems):
        vanished = sum(system in lp.deleted_now for lp in plan.links.values())
        deletes = plan.count(system, Delete)
        overwrites = sum(
            1
            for p in plan.ops.get(system, [])
            if isinstance(p.op, Update)
            and plan.links.get(p.link_id) is not None
            and plan.links[p.link_id].base
            and any(p.before.get(f) is not None for f in p.fields)
        )
        out[system] = [vanished, deletes, overwrites]
    return out


def _live_at_least(definition: Definition, store: StateStore, system: str, *sizes: int) -> int:
    """The system's linked records, counted only as far as the guard needs: past the
    count at which none of ``sizes`` (vanished, deletes, overwrites) could trip it the
    count stops, so a run's guard costs what it changes, not what the state holds."""
    limit = definition.mass_change_limit
    if limit <= 0:
        return store.live_count(definition.name, system)
    enough = max(GUARD_FLOOR, sizes[0] + 1, *(math.floor(n / limit) + 1 for n in sizes[1:]))
    return store.live_count(definition.name, system, at_most=enough)


def guard_mass_change(
    definition: Definition, store: StateStore, sizes: dict[str, list[int]]
) -> None:
    """Refuse a run that would delete or overwrite too much of a system before it writes.

    Three signs of a fault rather than of people's edits, each checked per system with at
    least 10 linked records (below that a share says little): the system returned none of
    the records we know (an empty extract: a wrong table, a filter, an outage answering
    "nothing"), more than ``mass_change_limit`` of its records would be deleted, or more
    than that share of its converged records would have values overwritten. ``sizes`` is
    what :func:`sizes_of` counts over the whole run. ``--allow-mass-change`` skips the guard.
    """
    floor = GUARD_FLOOR
    limit = definition.mass_change_limit
    override = "If that is intended, run again with --allow-mass-change"
    if all(max(size) < floor for size in sizes.values()):
        return  # below the floor nothing can trip the guard: skip counting the linked records
    for system, (vanished, deletes, overwrites) in sizes.items():
        live = _live_at_least(definition, store, system, vanished, deletes, overwrites)
        if live < floor:
            continue
        if vanished >= live:
            raise MassChangeRefused(
                f"{system} returned none of its {live} known records (an empty extract); "
                "twoway treats that as a fault of the system, not as every record deleted, "
                f"and wrote nothing. {override}"
            )
        if deletes >= floor and deletes > limit * live:
            raise MassChangeRefused(
                f"the run would delete {deletes} of {live} records in {system} "
                f"(more than {limit:.0%}); nothing was written. {override}"
            )
        if overwrites >= floor and overwrites > limit * live:
            raise MassChangeRefused(
                f"the run would overwrite values of {overwrites} of {live} records in {system} "
                f"(more than {limit:.0%}); nothing was written. {override}"
            )
