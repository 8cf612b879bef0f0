"""Deliberately broken engines: the harness must catch every one of them.

Run ``python -m tests.convergence.mutants [--seeds N] [--examples M]``: for each mutant it
runs the harness on seeds 0..N-1 and reports which seeds catch it; it exits 1 when a
mutant survives every seed. Each mutant is the smallest change that makes one classic
sync bug, applied by patching the real engine.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from unittest import mock

import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import get_state_machine_test

import twoway.engine as engine
from blocks.sql import SqlTable
from tasks import delta, echo, extract, load
from tests.convergence.machine import OneWayRuns, SyncMachine
from twoway.contract import ChangeSet
from twoway.errors import Retriable
from twoway.state import StateChanges, StateStore
from twoway.values import format_timestamp, parse_timestamp

_read = SqlTable.read_pages


def _incremental(self: SqlTable, cursor: str | None, select: Callable) -> Iterator[ChangeSet]:
    """A read that pages with ``select(conn, since, page_number)``; full reads stay right."""
    if cursor is None:
        yield from _read(self, cursor)
        return
    stamp = self._col(self.modified_at)
    with self._connect() as conn:
        signpost = conn.execute(sa.select(sa.func.max(stamp))).scalar()
        since = parse_timestamp(cursor)
        records, page = [], 0
        while True:
            rows = select(self, conn, since, page)
            records.extend(self._page(rows))
            if len(rows) < self.page_size:
                break
            page += 1
    newest = max(filter(None, [parse_timestamp(signpost), since]))
    yield ChangeSet(records=records, cursor=format_timestamp(newest), full=False)


def _strict_no_overlap(self, conn, since, page):
    stamp, key = self._col(self.modified_at), self._col(self.key)
    query = self._select().where(stamp > self._stamp_value(since)).order_by(stamp, key)
    return conn.execute(query.limit(self.page_size).offset(page * self.page_size)).all()


def _offset_paging(self, conn, since, page):
    stamp, key = self._col(self.modified_at), self._col(self.key)
    lower = self._stamp_value(since - timedelta(seconds=self.overlap_seconds))
    query = self._select().where(stamp >= lower).order_by(stamp, key)
    return conn.execute(query.limit(self.page_size).offset(page * self.page_size)).all()


def _resend_on_timeout(load: Callable) -> Callable:
    def mutant(endpoint, planned, *args, **kwargs):
        results = load(endpoint, planned, *args, **kwargs)
        again = [i for i, r in enumerate(results) if isinstance(r.error, Retriable)]
        if again:  # "it timed out, send it again": creates that were applied go out twice
            redo = endpoint.write([planned[i].op for i in again])
            for i, r in zip(again, redo, strict=True):
                results[i] = r
        return results

    return mutant


def _newest_record_wins(compute: Callable) -> Callable:
    def mutant(definition, mapping, **kwargs):
        for link_id, observed in mapping.observed.items():
            if len(observed) > 1:
                newest = max(observed, key=lambda s: (observed[s].modified_at, s))
                mapping.observed[link_id] = {newest: observed[newest]}
        return compute(definition, mapping, **kwargs)

    return mutant


def _cursor_before_load(extract: Callable) -> Callable:
    def mutant(definition, system, endpoint, cursor, *args):
        result = extract(definition, system, endpoint, cursor, *args)
        store = StateStore(definition.state)
        store.commit(
            definition.name, StateChanges(cursors={(system, engine.SCOPE_ALL): result.cursor})
        )
        store.close()
        return result

    return mutant


@contextlib.contextmanager
def _no_intent_log() -> Iterator[None]:
    with (
        mock.patch.object(StateStore, "open_intents", lambda self, sync: []),
        mock.patch.object(StateStore, "record_intents", lambda self, *a, **k: None),
    ):
        yield


def _echo_by_account_alone(records, integration_account, known):
    """Every record the integration account modified last is taken for an echo, whatever
    its values: an edit made with the integration account's credentials is lost."""
    out = echo.filter_echoes(records, integration_account, known)
    for record in records:
        if integration_account and record.modified_by == integration_account:
            out[record.key] = echo.ECHO
    return out


def _before_deltas(change: Callable[[Any], None]) -> Callable:
    """``compute_deltas`` after ``change`` was made to the run's mapping."""

    def mutant(definition, mapping, **kwargs):
        change(mapping)
        return delta.compute_deltas(definition, mapping, **kwargs)

    return mutant


def _after_deltas(change: Callable[[Any], None]) -> Callable:
    """``compute_deltas``, with ``change`` made to its plan."""

    def mutant(definition, mapping, **kwargs):
        plan = delta.compute_deltas(definition, mapping, **kwargs)
        change(plan)
        return plan

    return mutant


def _recreate_what_is_missing(mapping) -> None:
    """A deletion is taken for a record missing in one system: its twin re-creates it."""
    for link_id, systems in list(mapping.deleted.items()):
        mapping.members[link_id] = [
            m for m in mapping.members.get(link_id, []) if m.system not in systems
        ]
        mapping.observed.setdefault(link_id, {})
    mapping.deleted.clear()


def _drop_conflict_log(plan) -> None:
    plan.conflicts.clear()


def _forget_left_behind(plan) -> None:
    """A one-direction run settles its links as if every system had taken their values."""
    for lp in plan.links.values():
        lp.left_behind = type(lp.left_behind)()


LOST = "lost update"
DUPLICATE = "values in two records"
UNREAD = "rows changed since the last extraction were not read"
NO_OP = "a write set fields to the values the system held"
RESURRECTED = "came back"
NEVER_SYNCED = "a person's record never synced"
APART = "differ"  # systems that hold different records for none of the reasons above


@dataclass(frozen=True)
class Mutant:
    """A broken engine (a patch), the machine that exercises it, and the invariants its bug
    breaks: the first failure must name one of them (a catch by any other invariant is a
    harness that fails for the wrong reason)."""

    patch: Callable[[], contextlib.AbstractContextManager]
    breaks: tuple[str, ...]
    machine: type[SyncMachine] = SyncMachine
    examples: int = 100  # sequences per seed at most: a catch ends the search early


MUTANTS: dict[str, Mutant] = {
    "cursor '>' without overlap": Mutant(
        lambda: mock.patch.object(
            SqlTable, "read_pages", lambda self, c: _incremental(self, c, _strict_no_overlap)
        ),
        (UNREAD,),
    ),
    "OFFSET paging": Mutant(
        lambda: mock.patch.object(
            SqlTable, "read_pages", lambda self, c: _incremental(self, c, _offset_paging)
        ),
        (UNREAD,),
    ),
    # a create sent again: two copies, or one left after a person deleted its twin, or a
    # copy that leaves the systems apart before a second copy shows
    "create without idempotency": Mutant(
        lambda: mock.patch.object(
            load.load_changes_task, "fn", _resend_on_timeout(load.load_changes)
        ),
        (DUPLICATE, RESURRECTED, APART),
    ),
    # the newest record overwrites the other whole: the other side's fields are written back
    # as they are (no-op writes), or its edit of another field is lost
    "newest wins on the whole record": Mutant(
        lambda: mock.patch.object(
            delta.compute_deltas_task, "fn", _newest_record_wins(delta.compute_deltas)
        ),
        (NO_OP, LOST, APART),
    ),
    "echo write-back": Mutant(
        lambda: mock.patch.object(delta, "_same", lambda a, b: False), (NO_OP,)
    ),
    # the cursor passes changes a crashed run never applied: they are never read again
    "cursor committed before the load": Mutant(
        lambda: mock.patch.object(
            extract.extract_changes_task, "fn", _cursor_before_load(extract.extract_changes)
        ),
        (UNREAD, LOST, APART, NEVER_SYNCED),
    ),
    # creates that a crashed run applied are made again: duplicates, or a copy that stays
    # after a person deleted its twin
    "no intent log": Mutant(_no_intent_log, (DUPLICATE, RESURRECTED, APART)),
    # an edit made with the integration account's credentials is skipped: it never reaches
    # the other systems (and our own unconfirmed creates are skipped, then made again)
    "echo by the account alone": Mutant(
        lambda: mock.patch.object(extract, "filter_echoes", _echo_by_account_alone),
        (LOST, APART, DUPLICATE, NEVER_SYNCED),
    ),
    "deleted record re-created": Mutant(
        lambda: mock.patch.object(
            delta.compute_deltas_task, "fn", _before_deltas(_recreate_what_is_missing)
        ),
        (RESURRECTED, DUPLICATE),  # re-created run after run: copies of it, too
    ),
    "conflict loser dropped": Mutant(
        lambda: mock.patch.object(
            delta.compute_deltas_task, "fn", _after_deltas(_drop_conflict_log)
        ),
        (LOST,),
    ),
    # the base moves past values a third system never got: its old values count as new
    # edits and overwrite the change; a deletion is settled while the third system still
    # holds the record, which then comes back
    "one-way run settles all systems": Mutant(
        lambda: mock.patch.object(
            delta.compute_deltas_task, "fn", _after_deltas(_forget_left_behind)
        ),
        (LOST, APART, RESURRECTED),
        OneWayRuns,
    ),
}

#: the machines the mutants run on, for the unmutated control
MACHINES = sorted({m.machine for m in MUTANTS.values()}, key=lambda m: m.__name__)


def caught(
    mutant: str | None,
    seed_value: int,
    examples: int | None = None,
    machine: type[SyncMachine] | None = None,
) -> str | None:
    """The first line of the invariant the harness found broken with this mutant (None: the
    unmutated engine) on this seed, if any."""
    spec = MUTANTS[mutant] if mutant else None
    test = get_state_machine_test(
        machine or (spec.machine if spec else SyncMachine),
        settings=settings(
            max_examples=examples or (spec.examples if spec else 40),
            stateful_step_count=20,
            deadline=None,
            phases=[Phase.generate],  # catching is the question, not the smallest case
            derandomize=False,  # the seed decides the sequences, whatever profile is loaded
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
    with spec.patch() if spec else contextlib.nullcontext():
        try:
            seed(seed_value)(test)()
        except AssertionError as exc:  # an invariant, not the mutant's own code, failed
            return str(exc).splitlines()[0][:160]
    return None


def names_its_invariant(mutant: Mutant, reason: str) -> bool:
    """Whether a failure names one of the invariants the mutant's bug breaks."""
    return any(invariant in reason for invariant in mutant.breaks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--examples", type=int, help="sequences per seed (default: per mutant)")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)
    survivors = []
    for name in MUTANTS:
        started = time.perf_counter()
        found = {s: caught(name, s, args.examples) for s in range(args.seeds)}
        seeds = [s for s, why in found.items() if why and names_its_invariant(MUTANTS[name], why)]
        took = time.perf_counter() - started
        print(f"{name:34} caught on seeds {seeds} of {args.seeds} ({took:.0f} s)")
        for s in seeds:
            print(f"    seed {s}: {found[s]}")
        if not seeds:
            survivors.append(name)
    if survivors:
        print(f"survived: {', '.join(survivors)}")
        return 1
    print("every mutant was caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
