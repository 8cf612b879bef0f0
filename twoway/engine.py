"""The run, step by step: lock, extract changes (echoes filtered out page by page), map
IDs, compute deltas, load, commit state, report. The flows call :func:`run_sync` with
Prefect task steps; tests and the randomized harness call it with plain steps, their own
clock, random source, sleep and connectors.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import random
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

from tasks.commit import commit_state, commit_state_task, settle
from tasks.common import Filtered
from tasks.delta import Plan, compute_deltas, compute_deltas_task
from tasks.extract import extract_apart, extract_apart_task, extract_changes, extract_changes_task
from tasks.idmap import map_ids, map_ids_task
from tasks.load import confirm_unknown_creates, load_changes, load_changes_task
from twoway.connectors import open_endpoint
from twoway.contract import Create, Delete, Endpoint, Update
from twoway.definition import Definition
from twoway.errors import AlreadyRunning, MassChangeRefused, SyncError, TwowayError, redact
from twoway.retry import RetryPolicy
from twoway.review import applied_decisions, decision_line
from twoway.state import Intent, Member, StateChanges, StateStore
from twoway.uuid7 import TimeOrderedIds
from twoway.values import values_hash

SCOPE_ALL = "*"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Steps:
    """Runs each step either as a plain function or as a Prefect task (inside a flow)."""

    def __init__(self, prefect: bool = False):
        self.prefect = prefect

    def __call__(self, plain: Callable, wrapped: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            if not self.prefect:
                return plain(*args, **kwargs)
            from prefect.utilities.annotations import quote

            return wrapped.with_options(task_run_name=name)(
                *[quote(a) for a in args], **{k: quote(v) for k, v in kwargs.items()}
            )
        except SyncError as exc:  # the step of one system ("extract crm"): say which
            verb, _, system = name.partition(" ")
            if exc.system is None and verb in ("extract", "load"):
                exc.system = system
            raise

    def together(self, calls: list[tuple[Callable, Any, str, tuple[Any, ...]]]) -> list[Any]:
        """Run several steps at once, each on a thread of its own (under Prefect, as task
        runs of the same flow run: each thread gets a copy of the caller's context), and
        return their results in order; the first error is raised once all have ended."""
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            futures = [
                pool.submit(contextvars.copy_context().run, self, plain, wrapped, name, *args)
                for plain, wrapped, name, args in calls
            ]
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
    steps: Steps = field(default_factory=Steps)
    logger: logging.Logger | logging.LoggerAdapter | None = None
    on_progress: Callable[[str, int, int], Any] | None = None  # (system, done, total)
    lease_ttl: float = 60.0


@dataclass
class RunReport:
    """The outcome of a run: what ``--json`` prints and the run artifact shows."""

    sync: str
    run_id: str
    status: str = "completed"
    dry_run: bool = False
    conflicts: int = 0
    systems: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None
    plan: Plan | None = None
    conflict_list: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # people's, this run wrote
    seconds: float = 0.0  # the run itself: state, reads, writes, commit (not start-up)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sync": self.sync,
            "status": self.status,
            "dry_run": self.dry_run,
            "conflicts": self.conflicts,
            "systems": self.systems,
            "seconds": round(self.seconds, 3),
        }
        if self.error is not None:
            out["error"] = self.error
        out["run_id"] = self.run_id
        return out


def _counts() -> dict[str, int]:
    return {
        "extracted": 0,
        "echo_skipped": 0,
        "reread": 0,
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "failed": 0,
        "deferred": 0,
    }


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
    report.systems = {s: _counts() for s in definition.systems}
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
        if dry_run:
            _run(
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
        else:
            with _LeaseKeeper(store, definition.name, run_id, rt.lease_ttl):
                store.start_run(run_id, definition.name, dry_run)
                try:
                    _run(
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
    sync = definition.name
    steps = rt.steps
    due = store.due_dead_letters(sync)
    filtered: dict[str, Filtered] = {}
    known: dict[str, dict[str, Member]] = {}
    reads = []
    for system in sorted(sources):
        cursor = None if full else store.cursor(sync, system, scope)
        # records parked before they were linked (ambiguous matches) are read again
        reread = [
            d["external_id"]
            for d in due
            if d["link_id"] is None and d["external_id"] and d["system"] == system
        ]
        reads.append((system, cursor, reread))
    if full and len(reads) > 1 and rt.endpoints is None and rt.clock is utcnow:
        # a full reconciliation reads every system whole: one process per system (a run
        # given its own endpoints or clock, as tests give it, reads in this process)
        calls = [
            (extract_apart, extract_apart_task, f"extract {s}", (definition, s, c, rr))
            for s, c, rr in reads
        ]
        filtered.update(zip([s for s, _, _ in reads], steps.together(calls), strict=True))
    else:
        for system, cursor, reread in reads:
            filtered[system] = steps(
                extract_changes,
                extract_changes_task,
                f"extract {system}",
                definition,
                system,
                endpoints[system],
                cursor,
                store.system_ids(sync, system),
                reread,
            )
    for system, read in filtered.items():
        known[system] = read.members
        counts = report.systems[system]
        counts["extracted"] = read.extracted
        counts["echo_skipped"] = read.echo_skipped
        counts["reread"] = read.reread

    decided = store.decided_conflicts(sync)
    pending = {d["link_id"] for d in due if d["link_id"]} | {c["link_id"] for c in decided}
    new_link = TimeOrderedIds(rt.clock, rt.rng)  # appended at the end of the ID map's indexes
    mapping = steps(
        map_ids,
        map_ids_task,
        "map IDs",
        definition,
        filtered,
        known,
        store,
        new_link,
        pending,
        store.open_intents(sync),
    )
    for batch in filtered.values():  # records no key identifies wait as dead letters
        mapping.parked.extend(batch.parked)
    open_conflicts = {
        (c["link_id"], c["field"]) for c in store.open_conflicts(sync, mapping.observed.keys())
    }
    plan = steps(
        compute_deltas,
        compute_deltas_task,
        "compute field deltas",
        definition,
        mapping,
        sources=sources,
        targets=targets,
        open_conflicts=open_conflicts,
        decisions={(c["link_id"], c["field"]): (c["id"], c["chosen"]) for c in decided},
    )
    report.plan = plan
    report.conflicts = len(plan.conflicts)
    report.conflict_list = plan.conflicts
    if not allow_mass_change:
        _guard_mass_change(definition, store, plan)
    log.debug(
        "%s: planned %s",
        sync,
        ", ".join(f"{s}: {len(ops)} writes" for s, ops in sorted(plan.ops.items())),
    )
    if report.dry_run:
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
    policy_for = {
        s: RetryPolicy(attempts=definition.systems[s].retry_attempts) for s in definition.systems
    }
    for system, planned in plan.ops.items():
        if not planned:
            continue
        total = len(planned)
        progress = (
            (lambda done, s=system, t=total: rt.on_progress(s, done, t)) if rt.on_progress else None
        )
        results[system] = steps(
            load_changes,
            load_changes_task,
            f"load {system}",
            endpoints[system],
            planned,
            policy_for[system],
            rt.sleep,
            rt.rng,
            progress,
            definition.systems[system].batch_size,
        )
        if system in filtered:
            results[system] = confirm_unknown_creates(
                definition,
                system,
                endpoints[system],
                filtered[system].cursor,
                planned,
                results[system],
                lambda keys, system=system: set(store.members_by_key(sync, system, keys)),
            )
    changes, counts = settle(definition, mapping, plan, results, filtered, due, scope, store.now())
    for system, c in counts.items():
        report.systems[system].update(c)
    for letter in mapping.parked:  # records parked before any write: failures of their system
        report.systems[letter["system"]]["failed"] += 1
    report.failures = [
        {
            **{k: v for k, v in letter.items() if k != "payload"},
            "match": _match_value(definition, letter.get("payload")),
        }
        for letter in changes.dead_letters
    ]
    steps(commit_state, commit_state_task, "commit state", store, sync, changes, report.run_id)
    report.decisions = applied_decisions(decided, due, changes)
    for decision in report.decisions:
        log.info("%s: %s", sync, decision_line(decision))
    log.info("%s: %s; %d conflicts", sync, counts_line(report.systems), report.conflicts)


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


def _guard_mass_change(definition: Definition, store: StateStore, plan: Plan) -> None:
    """Refuse a run that would delete or overwrite too much of a system before it writes.

    Three signs of a fault rather than of people's edits, each checked per system with at
    least 10 linked records (below that a share says little): the system returned none of the records we
    know (an empty extract: a wrong table, a filter, an outage answering "nothing"), more
    than ``mass_change_limit`` of its records would be deleted, or more than that share of
    its converged records would have values overwritten (first-time links do not count).
    ``--allow-mass-change`` skips the guard.
    """
    floor = 10
    limit = definition.mass_change_limit
    override = "If that is intended, run again with --allow-mass-change"
    sizes = {}
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
        sizes[system] = (vanished, deletes, overwrites)
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
