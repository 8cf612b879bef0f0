"""The run, step by step, as the design lists them: extract the changed records of each
source (echoes filtered out page by page), then chunk by chunk map IDs, compute field
deltas, load each target and commit the chunk's state; the report last.

Each step is a Prefect task of tasks/. In a flow run (``Runtime.tracked``) it runs as a
task run named after the step ("load crm"), so the run's graph in the UI names the steps;
the CLI's dry run, the tests and the randomized harness run the same tasks' functions
(``task.fn``) with their own clock, random source, sleep and connectors.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect.tasks import Task
from prefect.utilities.annotations import quote

from tasks.commit import commit_state_task, settle
from tasks.common import Whole
from tasks.delta import compute_deltas_task
from tasks.extract import extract_apart_task, extract_changes_task
from tasks.idmap import map_ids_task
from tasks.load import confirm_unknown_creates, load_changes_task
from twoway.contract import WriteResult
from twoway.definition import Definition
from twoway.engine import (
    Observer,
    Run,
    Runtime,
    could_trip,
    guard_mass_change,
    hold_run,
    sizes_of,
    together,
)
from twoway.errors import SyncError
from twoway.records import Filtered, Mapping, Plan, PlannedOp
from twoway.report import RunReport
from twoway.retry import RetryPolicy
from twoway.staging import ReadSummary, StagedRead, bucket_of, chunks_of
from twoway.state import StateChanges
from twoway.uuid7 import TimeOrderedIds


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
    return hold_run(
        definition,
        runtime or Runtime(),
        functools.partial(sync_steps, allow_mass_change=allow_mass_change),
        dry_run=dry_run,
        full=full,
        sources=sources,
        targets=targets,
    )


def sync_steps(run: Run, allow_mass_change: bool = False) -> None:
    """The steps of one run, in order, on a run :func:`~twoway.engine.hold_run` opened."""
    definition = run.definition
    run.read(extract(run))
    plan_of = chunk_plan(run)
    run.report.chunks = len(plan_of)
    guarded = allow_mass_change or len(plan_of) > 1
    if not allow_mass_change and len(plan_of) > 1 and could_trip(definition, run.store):
        guard_mass_change(definition, run.store, measure(run, plan_of))
    for index, buckets in enumerate(plan_of):
        final = index == len(plan_of) - 1
        chunk(run, index, len(plan_of), buckets, guarded, final)
        if not final:
            # the collector is paused for the run: what a chunk left in cycles (task runs,
            # futures) goes now. Those are young; a pass over the young generations costs
            # what the chunk allocated, not a walk of every object of the process
            gc.collect(1)
    if not plan_of and not run.report.dry_run:  # nothing to work on: the cursors still move
        commit(run, run.cursors())
    run.finish()


def chunk(run: Run, index: int, total: int, buckets: list[int], guarded: bool, final: bool) -> None:
    """One chunk: map IDs and compute its deltas, then write it and commit its state (a dry
    run only counts what it would write). What a chunk holds goes when it is done."""
    filtered, mapping, plan = plan_chunk(run, buckets, run.new_link)
    run.planned(index, total, plan)
    if not guarded:  # a run of one chunk is judged on that chunk's plan
        guard_mass_change(run.definition, run.store, sizes_of(run.definition, plan))
    if run.report.dry_run:
        run.planned_only(plan)
    else:
        write_chunk(run, filtered, mapping, plan, final)


def step(rt: Runtime, name: str, task: Task, *args: Any, **kwargs: Any) -> Any:
    """Call one step: as a task run named ``name`` in a flow run, else the task's function."""
    with _named(rt, name):
        if rt.tracked:
            # open endpoints and stores are not parameters for Prefect to track
            named = task.with_options(task_run_name=name)
            out = named(*[quote(a) for a in args], **{k: quote(v) for k, v in kwargs.items()})
        else:
            out = task.fn(*args, **kwargs)
    return out.value if isinstance(out, Whole) else out


@contextmanager
def _named(rt: Runtime, name: str) -> Iterator[None]:
    """One step, its observer told before and after; a failure of the step of one system
    ("extract crm") names that system."""
    rt.observer.step(name, False)
    try:
        yield
    except SyncError as exc:
        verb, _, system = name.partition(" ")
        if exc.system is None and verb in ("extract", "load"):
            exc.system = system
        raise
    rt.observer.step(name, True)


def extract(run: Run) -> dict[str, ReadSummary]:
    """Read every source into its staging file: its changes since its cursor, echoes and
    unchanged records told apart. A full read of several systems reads each in a process
    of its own when the runtime allows (``read_apart``): they are CPU-bound."""
    rt, definition, staged = run.rt, run.definition, run.staged
    jobs = run.jobs()
    if run.full and len(jobs) > 1 and rt.read_apart:
        for read in staged.values():
            read.close()  # each process writes its own file; it is opened again after
        calls = [
            functools.partial(
                step,
                rt,
                f"extract {system}",
                extract_apart_task,
                definition,
                system,
                cursor,
                staged[system].path,
                reread,
                run.intents,
            )
            for system, cursor, reread in jobs
        ]
        reads = dict(zip([system for system, _, _ in jobs], together(calls), strict=True))
        for system in staged:
            staged[system] = StagedRead(staged[system].path)
        return reads
    return {
        system: step(
            rt,
            f"extract {system}",
            extract_changes_task,
            definition,
            system,
            run.endpoints[system],
            cursor,
            run.store.system_ids(definition.name, system),
            staged[system],
            reread,
            run.intents,
        )
        for system, cursor, reread in jobs
    }


def chunk_plan(run: Run) -> list[list[int]]:
    """The run's chunks: lists of buckets of about ``chunk_size`` records, the records of
    one link (and of links that merge) always in one chunk."""
    sizes = [read.bucket_sizes() for read in run.staged.values()]
    sizes.append(dict.fromkeys((bucket_of(link) for link in run.pending), 1))
    merges = [m for read in run.reads.values() for m in read.merges]
    return chunks_of(sizes, merges, run.rt.chunk_size or run.definition.chunk_size)


def plan_chunk(
    run: Run, buckets: list[int], new_link: Callable[[], str]
) -> tuple[dict[str, Filtered], Mapping, Plan]:
    """Map IDs and compute field deltas for the records of ``buckets``."""
    rt, store, sync = run.rt, run.store, run.definition.name
    inside = set(buckets)
    filtered: dict[str, Filtered] = {s: read.filtered(s, buckets) for s, read in run.staged.items()}
    pending = {link for link in run.pending if bucket_of(link) in inside}
    intents = [i for i in run.intents if bucket_of(i.link_id) in inside]
    mapping = step(
        rt,
        "map IDs",
        map_ids_task,
        run.definition,
        filtered,
        {s: f.members for s, f in filtered.items()},
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
    plan = step(
        rt,
        "compute field deltas",
        compute_deltas_task,
        run.definition,
        mapping,
        sources=run.sources,
        targets=run.targets,
        open_conflicts=open_conflicts,
        decisions={(c["link_id"], c["field"]): (c["id"], c["chosen"]) for c in decided},
    )
    return filtered, mapping, plan


def measure(run: Run, plan_of: list[list[int]]) -> dict[str, list[int]]:
    """What the whole run would delete and overwrite, planned chunk by chunk before any
    write (link ids drawn here are thrown away): the mass-change guard judges the run."""
    throwaway = TimeOrderedIds(run.rt.clock, random.Random(0))
    probe = dataclasses.replace(run, rt=dataclasses.replace(run.rt, observer=Observer()))
    total: dict[str, list[int]] = {}
    for buckets in plan_of:
        _, _, plan = plan_chunk(probe, buckets, throwaway)
        for system, size in sizes_of(run.definition, plan).items():
            total[system] = [a + b for a, b in zip(total.get(system, [0, 0, 0]), size, strict=True)]
    return total


def write_chunk(
    run: Run, filtered: dict[str, Filtered], mapping: Mapping, plan: Plan, final: bool
) -> None:
    """Write a planned chunk: its conflicts and intents first, then each target's load,
    then the chunk's state in one transaction (the cursors with the last chunk)."""
    definition, store = run.definition, run.store
    run.before_writes(mapping, plan)
    results = {system: load(run, system, ops) for system, ops in plan.ops.items() if ops}
    changes, counts = settle(
        definition, mapping, plan, results, filtered, run.due, run.scope, store.now()
    )
    run.settled(mapping, plan, changes, counts, final)
    commit(run, changes)
    run.committed(changes)


def load(run: Run, system: str, planned: list[PlannedOp]) -> list[WriteResult]:
    """Write ``planned`` to ``system`` (spread over a task runner in a sharded run), then
    look for the creates whose answer was lost among the records our account made."""
    rt, definition, sync = run.rt, run.definition, run.definition.name
    total = len(planned)
    args = (
        run.endpoints[system],
        planned,
        RetryPolicy(attempts=definition.systems[system].retry_attempts),
        rt.sleep,
        rt.rng,
        lambda done: rt.observer.wrote(system, done, total),
        definition.systems[system].batch_size,
    )
    name = f"load {system}"
    if rt.spread_load is not None:
        with _named(rt, name):
            results = rt.spread_load(*args)
    else:
        results = step(rt, name, load_changes_task, *args)
    if system not in run.reads:
        return results
    return confirm_unknown_creates(
        definition,
        system,
        run.endpoints[system],
        run.reads[system].cursor,
        planned,
        results,
        lambda keys: set(run.store.members_by_key(sync, system, keys)),
    )


def commit(run: Run, changes: StateChanges) -> None:
    """Commit ``changes`` to the state store in one transaction."""
    step(
        run.rt,
        "commit state",
        commit_state_task,
        run.store,
        run.definition.name,
        changes,
        run.report.run_id,
    )
