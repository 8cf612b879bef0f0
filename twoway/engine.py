"""The run, step by step: lock, extract changes (echoes filtered out page by page), map
IDs, compute deltas, load, commit state, report. The flows call :func:`run_sync` with
Prefect task steps; tests and the randomized harness call it with plain steps, their own
clock, random source, sleep and connectors.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import gc
import logging
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

from tasks.commit import commit_state, settle
from tasks.delta import Plan, compute_deltas
from tasks.extract import extract_apart, extract_changes
from tasks.idmap import map_ids
from tasks.load import confirm_unknown_creates, load_changes
from twoway.connectors import open_endpoint
from twoway.contract import Create, Delete, Endpoint, Update
from twoway.definition import Definition
from twoway.errors import AlreadyRunning, MassChangeRefused, SyncError, TwowayError, redact
from twoway.report import (
    COUNT_COLUMNS,
    TABLE_CAP,
    RunReport,
    count_plan_rows,
    plan_rows,
    refused_writes,
)
from twoway.retry import RetryPolicy
from twoway.review import applied_decisions, decision_line
from twoway.staging import ReadSummary, StagedRead, bucket_of, chunks_of
from twoway.state import Intent, StateChanges, StateStore
from twoway.uuid7 import TimeOrderedIds
from twoway.values import values_hash

SCOPE_ALL = "*"

#: linked records a system needs before the mass-change guard judges it (below that a share
#: says little)
GUARD_FLOOR = 10


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class StepSet:
    """The steps of a run, called in the order of the design: plain functions (the harness,
    tests, a dry run from the CLI) or the Prefect tasks that wrap them (the flows)."""

    extract: Callable[..., ReadSummary] = extract_changes
    extract_apart: Callable[..., ReadSummary] = extract_apart
    map_ids: Callable[..., Any] = map_ids
    compute_deltas: Callable[..., Plan] = compute_deltas
    load: Callable[..., Any] = load_changes
    commit: Callable[..., None] = commit_state


#: the plain steps (a run given no others takes these)
PLAIN = StepSet()


class _StepName(threading.local):
    """The step a call belongs to ("load crm"), for the task-run name the Prefect steps
    give it: per thread (steps that run together run on threads of their own), and not a
    context variable, which a task runner would try to ship with the task's context."""

    value = "step"

    def __reduce__(self) -> tuple[Callable[[], _StepName], tuple[()]]:
        # a task runner that ships a function by value ships this module's globals: each
        # process has its own, so it travels as a reference to it
        return _step_name, ()


def _step_name() -> _StepName:
    return STEP_NAME


STEP_NAME = _StepName()


class Observer:
    """Told of a run's progress: each step as it starts and ends, each chunk, each write
    batch. Progress bars and tests listen; the run does not depend on them."""

    def step(self, name: str, ended: bool) -> None:
        """A step starts (``ended`` False) or has ended."""

    def chunk(self, index: int, total: int, writes: int) -> None:
        """Chunk ``index`` (from 0) of ``total`` is planned, with ``writes`` writes."""

    def wrote(self, system: str, done: int, total: int) -> None:
        """A load of this chunk has written ``done`` of ``total``."""


def _call(rt: Runtime, name: str, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call one step of the run, its observer told before and after; a failure of the step
    of one system ("extract crm") names that system."""
    rt.observer.step(name, False)
    outer, STEP_NAME.value = STEP_NAME.value, name
    try:
        out = step(*args, **kwargs)
    except SyncError as exc:
        verb, _, system = name.partition(" ")
        if exc.system is None and verb in ("extract", "load"):
            exc.system = system
        raise
    finally:
        STEP_NAME.value = outer
    rt.observer.step(name, True)
    return out


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run several calls at once, each on a thread of its own (under Prefect, as task runs
    of the same flow run: each thread gets a copy of the caller's context), and return
    their results in order; the first error is raised once all have ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, c) for c in calls]
        wait(futures)
    return [f.result() for f in futures]


@dataclass
class Runtime:
    """What a run depends on, passed in so tests can replace every part."""

    clock: Callable[[], datetime] = utcnow
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], Any] = time.sleep
    endpoints: dict[str, Endpoint] | None = None
    store: StateStore | None = None
    steps: StepSet = field(default_factory=lambda: PLAIN)
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


def run_sync(
    definition: Definition,
    runtime: Runtime | None = None,
    *,
    dry_run: bool = False,
    full: bool = False,
    sources: set[str] | None = None,
    targets: set[str] | None = None,
    allow_mass_change: bool = False,
) -> RunReport:
    """One run of a sync. With ``sources``/``targets`` it is a one-direction run.

    Raises :class:`~twoway.errors.AlreadyRunning` when another run holds the lease; any
    other error is recorded in the run history and returned as a failed report.
    """
    started = time.perf_counter()
    with _collector_paused():
        report = _run_sync(definition, runtime, dry_run, full, sources, targets, allow_mass_change)
    report.seconds = time.perf_counter() - started
    return report


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


def _run_sync(
    definition: Definition,
    runtime: Runtime | None,
    dry_run: bool,
    full: bool,
    sources: set[str] | None,
    targets: set[str] | None,
    allow_mass_change: bool,
) -> RunReport:
    rt = runtime or Runtime()
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
        work = functools.partial(
            _run,
            definition,
            rt,
            store,
            endpoints,
            report,
            sources,
            targets,
            scope,
            full,
            allow_mass_change,
            log,
        )
        if dry_run:
            work()
        else:
            with _LeaseKeeper(store, definition.name, run_id, rt.lease_ttl):
                store.start_run(run_id, definition.name, dry_run)
                try:
                    work()
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
    return report


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


def _run(
    definition: Definition,
    rt: Runtime,
    store: StateStore,
    endpoints: dict[str, Endpoint],
    report: RunReport,
    sources: set[str],
    targets: set[str],
    scope: str,
    full: bool,
    allow_mass_change: bool,
    log: Any,
) -> None:
    """Read every source into its staging file, then work chunk by chunk: map IDs, compute
    deltas, load, commit. Each chunk's state is committed in one transaction; the cursors
    move with the last chunk, so a run that dies between chunks reads its changes again and
    finds the committed ones settled (echoes or unchanged: a no-op)."""
    with _staging(sources) as staged:
        sync = definition.name
        steps = rt.steps
        due = store.due_dead_letters(sync)
        intents = store.open_intents(sync)
        jobs = []
        for system in sorted(sources):
            cursor = None if full else store.cursor(sync, system, scope)
            # records parked before they were linked (ambiguous matches) are read again
            reread = [
                d["external_id"]
                for d in due
                if d["link_id"] is None and d["external_id"] and d["system"] == system
            ]
            jobs.append((system, cursor, reread))
        reads: dict[str, ReadSummary] = {}
        if full and len(jobs) > 1 and rt.read_apart:
            # a full reconciliation reads every system whole: one process per system
            for read in staged.values():
                read.close()  # each process writes its own file; it is opened again after
            calls = [
                functools.partial(
                    _call,
                    rt,
                    f"extract {s}",
                    steps.extract_apart,
                    definition,
                    s,
                    c,
                    staged[s].path,
                    rr,
                    intents,
                )
                for s, c, rr in jobs
            ]
            reads.update(zip([s for s, _, _ in jobs], together(calls), strict=True))
            for system in staged:
                staged[system] = StagedRead(staged[system].path)
        else:
            for system, cursor, reread in jobs:
                reads[system] = _call(
                    rt,
                    f"extract {system}",
                    steps.extract,
                    definition,
                    system,
                    endpoints[system],
                    cursor,
                    store.system_ids(sync, system),
                    staged[system],
                    reread,
                    intents,
                )
        for system, read in reads.items():
            counts = report.systems[system]
            counts["extracted"] = read.extracted
            counts["echo_skipped"] = read.echo_skipped
            counts["reread"] = read.reread

        decided = store.decided_conflicts(sync)
        pending = {d["link_id"] for d in due if d["link_id"]} | {c["link_id"] for c in decided}
        run = _Run(
            definition,
            rt,
            store,
            endpoints,
            report,
            sources,
            targets,
            scope,
            staged,
            reads,
            due,
            decided,
            intents,
            pending,
            TimeOrderedIds(rt.clock, rt.rng),  # appended at the end of the ID map's indexes
        )
        sizes = [read.bucket_sizes() for read in staged.values()]
        sizes.append(dict.fromkeys((bucket_of(link) for link in pending), 1))
        merges = [m for read in reads.values() for m in read.merges]
        plan_of = chunks_of(sizes, merges, rt.chunk_size or definition.chunk_size)
        report.chunks = len(plan_of)
        if not allow_mass_change and len(plan_of) > 1 and _could_trip(definition, store):
            _guard_mass_change(definition, store, _measure(run, plan_of))
        for index, buckets in enumerate(plan_of):
            final = index == len(plan_of) - 1
            _chunk(run, index, len(plan_of), buckets, final, allow_mass_change or len(plan_of) > 1)
            if not final:
                # the collector is paused for the run: what a chunk left in cycles (task runs,
                # futures) goes now. Those are young; a pass over the young generations costs
                # what the chunk allocated, where a full pass walks every object of the process
                gc.collect(1)
        if not plan_of and not report.dry_run:  # nothing to work on: the cursors still move
            _call(rt, "commit state", steps.commit, store, sync, _cursors(run), report.run_id)
        report.decisions = applied_decisions(decided, due, run.done)
        for decision in report.decisions:
            log.info("%s: %s", sync, decision_line(decision))
        log.info("%s: %s; %d conflicts", sync, counts_line(report.systems), report.conflicts)


@dataclass
class _Run:
    """What every chunk of a run shares."""

    definition: Definition
    rt: Runtime
    store: StateStore
    endpoints: dict[str, Endpoint]
    report: RunReport
    sources: set[str]
    targets: set[str]
    scope: str
    staged: dict[str, StagedRead]
    reads: dict[str, ReadSummary]
    due: list[dict[str, Any]]
    decided: list[dict[str, Any]]
    intents: list[Intent]
    pending: set[str]
    new_link: Callable[[], str]
    done: StateChanges = field(default_factory=StateChanges)  # what the chunks committed


def _cursors(run: _Run) -> StateChanges:
    return StateChanges(
        cursors={(system, run.scope): read.cursor for system, read in run.reads.items()}
    )


def _plan_chunk(
    run: _Run, buckets: list[int], new_link: Callable[[], str]
) -> tuple[dict[str, Any], Any, Plan]:
    """Map IDs and compute deltas for the records of ``buckets``."""
    rt, store, sync = run.rt, run.store, run.definition.name
    inside = set(buckets)
    filtered = {s: read.filtered(s, buckets) for s, read in run.staged.items()}
    known = {s: f.members for s, f in filtered.items()}
    pending = {link for link in run.pending if bucket_of(link) in inside}
    intents = [i for i in run.intents if bucket_of(i.link_id) in inside]
    mapping = _call(
        rt,
        "map IDs",
        rt.steps.map_ids,
        run.definition,
        filtered,
        known,
        store,
        new_link,
        pending,
        intents,
    )
    for batch in filtered.values():  # records no key identifies wait as dead letters
        mapping.parked.extend(batch.parked)
    open_conflicts = {
        (c["link_id"], c["field"]) for c in store.open_conflicts(sync, mapping.observed.keys())
    }
    decided = [c for c in run.decided if bucket_of(c["link_id"]) in inside]
    plan = _call(
        rt,
        "compute field deltas",
        rt.steps.compute_deltas,
        run.definition,
        mapping,
        sources=run.sources,
        targets=run.targets,
        open_conflicts=open_conflicts,
        decisions={(c["link_id"], c["field"]): (c["id"], c["chosen"]) for c in decided},
    )
    return filtered, mapping, plan


def _could_trip(definition: Definition, store: StateStore) -> bool:
    """Whether the mass-change guard can refuse this run at all: only a system with at
    least :data:`GUARD_FLOOR` linked records can trip it (a first sync never does)."""
    linked = store.counts(definition.name)["linked"]
    return any(linked.get(system, 0) >= GUARD_FLOOR for system in definition.systems)


def _measure(run: _Run, plan_of: list[list[int]]) -> dict[str, list[int]]:
    """What the whole run would delete and overwrite, planned chunk by chunk before any
    write (link ids drawn here are thrown away): the mass-change guard judges the run."""
    throwaway = TimeOrderedIds(run.rt.clock, random.Random(0))
    quiet = dataclasses.replace(run.rt, observer=Observer())
    probe = dataclasses.replace(run, rt=quiet)
    total: dict[str, list[int]] = {}
    for buckets in plan_of:
        _, _, plan = _plan_chunk(probe, buckets, throwaway)
        for system, size in _sizes(run.definition, plan).items():
            total[system] = [a + b for a, b in zip(total.get(system, [0, 0, 0]), size, strict=True)]
    return total


def _chunk(
    run: _Run, index: int, total: int, buckets: list[int], final: bool, guarded: bool
) -> None:
    """One chunk: plan it, write it, commit its state (the cursors with the last chunk)."""
    definition, rt, store, report = run.definition, run.rt, run.store, run.report
    sync = definition.name
    filtered, mapping, plan = _plan_chunk(run, buckets, run.new_link)
    report.conflicts += len(plan.conflicts)
    report.conflict_list.extend(plan.conflicts)
    for system, planned in plan.ops.items():
        report.planned[system] = report.planned.get(system, 0) + len(planned)
    if not guarded:
        _guard_mass_change(definition, store, _sizes(definition, plan))
    rt.observer.chunk(index, total, sum(len(ops) for ops in plan.ops.values()))
    log = rt.logger or logging.getLogger("twoway")
    log.debug(
        "%s: chunk %d of %d: planned %s",
        sync,
        index + 1,
        total,
        ", ".join(f"{s}: {len(ops)} writes" for s, ops in sorted(plan.ops.items())),
    )
    if report.dry_run:
        _note_changes(report, plan, set())
        for system, planned in plan.ops.items():
            counts = report.systems[system]
            for p in planned:
                kind = (
                    "deleted"
                    if isinstance(p.op, Delete)
                    else "updated"
                    if isinstance(p.op, Update)
                    else "created"
                )
                counts[kind] += 1
        return

    # the conflict log and the intents are written before any write goes out: a run that
    # dies after overwriting a conflict's loser must not lose the record of it
    if plan.conflicts:
        store.commit(sync, StateChanges(conflicts=plan.conflicts), report.run_id)
    fresh = [m for link in mapping.new_links for m in mapping.members.get(link, [])]
    # a record found by its intent joins the ID map now, by key: a write to it that a crash
    # leaves uncommitted changes its values, and the intent's would no longer find it
    recovered = {(s, link) for s, link in mapping.recovered if link not in mapping.new_links}
    fresh += [
        m
        for s, link in recovered
        for m in mapping.members.get(link, [])
        if m.system == s and m.seen is None
    ]
    store.record_intents(sync, report.run_id, _intents(definition, mapping, plan), fresh)
    results = {}
    for system, planned in plan.ops.items():
        if not planned:
            continue
        count = len(planned)
        results[system] = _call(
            rt,
            f"load {system}",
            rt.steps.load,
            run.endpoints[system],
            planned,
            RetryPolicy(attempts=definition.systems[system].retry_attempts),
            rt.sleep,
            rt.rng,
            lambda done, s=system, t=count: rt.observer.wrote(s, done, t),
            definition.systems[system].batch_size,
        )
        if system in run.reads:
            results[system] = confirm_unknown_creates(
                definition,
                system,
                run.endpoints[system],
                run.reads[system].cursor,
                planned,
                results[system],
                lambda keys, system=system: set(store.members_by_key(sync, system, keys)),
            )
    changes, counts = settle(
        definition, mapping, plan, results, filtered, run.due, run.scope, store.now()
    )
    changes.cursors = _cursors(run).cursors if final else {}
    for system, c in counts.items():
        for kind, n in c.items():
            report.systems[system][kind] += n
    for letter in mapping.parked:  # records parked before any write: failures of their system
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
    _call(rt, "commit state", rt.steps.commit, store, sync, changes, report.run_id)
    run.done.resolved_conflicts.extend(changes.resolved_conflicts)
    run.done.resolved_dead_letters.extend(changes.resolved_dead_letters)


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


def _sizes(definition: Definition, plan: Plan) -> dict[str, list[int]]:
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


def _guard_mass_change(
    definition: Definition, store: StateStore, sizes: dict[str, list[int]]
) -> None:
    """Refuse a run that would delete or overwrite too much of a system before it writes.

    Three signs of a fault rather than of people's edits, each checked per system with at
    least 10 linked records (below that a share says little): the system returned none of
    the records we know (an empty extract: a wrong table, a filter, an outage answering
    "nothing"), more than ``mass_change_limit`` of its records would be deleted, or more
    than that share of its converged records would have values overwritten. ``sizes`` is
    what :func:`_sizes` counts over the whole run. ``--allow-mass-change`` skips the guard.
    """
    floor = GUARD_FLOOR
    limit = definition.mass_change_limit
    override = "If that is intended, run again with --allow-mass-change"
    if all(max(size) < floor for size in sizes.values()):
        return  # below the floor nothing can trip the guard: skip counting the linked records
    linked = store.counts(definition.name)["linked"]
    for system, (vanished, deletes, overwrites) in sizes.items():
        live = linked.get(system, 0)
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
