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
from datetime import timedelta
from unittest import mock

import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import get_state_machine_test

import twoway.engine as engine
from blocks.sql import SqlTable
from tasks import delta
from tests.convergence.machine import SyncMachine
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


MUTANTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "cursor '>' without overlap": lambda: mock.patch.object(
        SqlTable, "read_pages", lambda self, c: _incremental(self, c, _strict_no_overlap)
    ),
    "OFFSET paging": lambda: mock.patch.object(
        SqlTable, "read_pages", lambda self, c: _incremental(self, c, _offset_paging)
    ),
    "create without idempotency": lambda: mock.patch.object(
        engine, "load_changes", _resend_on_timeout(engine.load_changes)
    ),
    "newest wins on the whole record": lambda: mock.patch.object(
        engine, "compute_deltas", _newest_record_wins(engine.compute_deltas)
    ),
    "echo write-back": lambda: mock.patch.object(delta, "_same", lambda a, b: False),
    "cursor committed before the load": lambda: mock.patch.object(
        engine, "extract_changes", _cursor_before_load(engine.extract_changes)
    ),
    "no intent log": lambda: _no_intent_log(),
}


def caught(mutant: str, seed_value: int, examples: int) -> str | None:
    """The invariant the harness found broken with this mutant on this seed, if any."""
    test = get_state_machine_test(
        SyncMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=20,
            deadline=None,
            phases=[Phase.generate],  # catching is the question, not the smallest case
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
    with MUTANTS[mutant]():
        try:
            seed(seed_value)(test)()
        except AssertionError as exc:  # an invariant, not the mutant's own code, failed
            return str(exc).splitlines()[0][:90]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=60)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)
    survivors = []
    for name in MUTANTS:
        started = time.perf_counter()
        found = {s: caught(name, s, args.examples) for s in range(args.seeds)}
        seeds = [s for s, why in found.items() if why]
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
