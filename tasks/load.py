"""Step: load the planned writes into one system, in the batches it supports.

Each batch is retried in place on transient errors (backoff with jitter, Retry-After
honoured); a batch that still fails comes back as failed results, which the run parks as
dead letters: a load is never repeated as a whole, so a create is never sent twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from prefect import task

from tasks.common import TASK_OPTIONS, whole
from twoway.contract import Create, Endpoint, RawRecord, WriteResult, chunks, in_flight
from twoway.definition import Definition
from twoway.errors import Retriable
from twoway.records import PlannedOp
from twoway.retry import RetryPolicy
from twoway.values import canonical, values_hash


def load_changes(
    endpoint: Endpoint,
    planned: list[PlannedOp],
    policy: RetryPolicy,
    sleep: Callable[[float], Any],
    rng: random.Random,
    on_progress: Callable[[int], Any] | None = None,
    batch_size: int | None = None,
) -> list[WriteResult]:
    """Apply ``planned`` in batches (the smaller of ``batch_size`` and what the endpoint
    takes), as many at once as the endpoint allows; one result per planned op, in order."""
    size = min(endpoint.max_batch(), batch_size or endpoint.max_batch())

    def send(batch: Sequence[PlannedOp]) -> list[WriteResult]:
        ops = [p.op for p in batch]
        try:
            out = policy.call(lambda: endpoint.write(ops), sleep=sleep, rng=rng)
        except Retriable as exc:
            out = [WriteResult(op=op, error=exc) for op in ops]
        if len(out) != len(ops):
            raise RuntimeError(f"endpoint returned {len(out)} results for {len(ops)} operations")
        return out

    results: list[WriteResult] = []
    for out in in_flight(send, chunks(planned, size), endpoint.max_writes_in_flight()):
        results.extend(out)
        if on_progress:
            on_progress(len(results))
    return results


load_changes_task = task(
    whole(load_changes), name="load", **{**TASK_OPTIONS, "retries": 0, "retry_condition_fn": None}
)


def confirm_unknown_creates(
    definition: Definition,
    system: str,
    endpoint: Endpoint,
    since: str | None,
    planned: list[PlannedOp],
    results: list[WriteResult],
    known_keys: Callable[[list[str]], set[str]],
) -> list[WriteResult]:
    """When unsure, read back: creates whose answer was lost are looked for among the
    records our account changed since ``since`` (the whole collection when None) that the
    ID map does not hold (``known_keys(keys)`` says which it does), and confirmed when found.

    A create that timed out may have been applied; finding it now, within the run, keeps a
    person from editing or deleting an unknown copy before the next run could recognise it.
    """
    unknown = [
        i
        for i, r in enumerate(results)
        if isinstance(r.error, Retriable) and isinstance(planned[i].op, Create)
    ]
    if not unknown:
        return results
    names = definition.fields_of(system)
    account = definition.systems[system].integration_account
    by_hash: dict[str, list[RawRecord]] = {}
    ours = [
        r
        for page in endpoint.read_pages(since)
        for r in page.records
        if not account or r.modified_by == account
    ]
    linked = known_keys([r.key for r in ours])
    for record in ours:
        if record.key in linked:
            continue
        values = {f: canonical(record.values.get(col)) for f, col in names.items()}
        by_hash.setdefault(values_hash(values), []).append(record)
    confirmed = list(results)
    for i in unknown:
        wanted = values_hash({f: planned[i].fields.get(f) for f in names})  # canonical already
        found = by_hash.get(wanted)
        if found:
            record = found.pop(0)
            confirmed[i] = WriteResult(
                op=planned[i].op, key=record.key, version=record.version, values=record.values
            )
    return confirmed
