"""Step: load the planned writes into one system, in the batches it supports.

Each batch is retried in place on transient errors (backoff with jitter, Retry-After
honoured); a batch that still fails comes back as failed results, which the run parks as
dead letters: a load is never repeated as a whole, so a create is never sent twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from prefect import task

from tasks.common import TASK_OPTIONS, PlannedOp
from twoway.contract import Endpoint, WriteResult, chunks
from twoway.errors import Retriable
from twoway.retry import RetryPolicy


def load_changes(
    endpoint: Endpoint,
    planned: list[PlannedOp],
    policy: RetryPolicy,
    sleep: Callable[[float], Any],
    rng: random.Random,
    on_progress: Callable[[int], Any] | None = None,
) -> list[WriteResult]:
    """Apply ``planned`` in batches; one result per planned op, in order."""
    results: list[WriteResult] = []
    for batch in chunks(planned, endpoint.max_batch()):
        ops = [p.op for p in batch]
        try:
            out = policy.call(lambda ops=ops: endpoint.write(ops), sleep=sleep, rng=rng)
        except Retriable as exc:
            out = [WriteResult(op=op, error=exc) for op in ops]
        if len(out) != len(ops):
            raise RuntimeError(f"endpoint returned {len(out)} results for {len(ops)} operations")
        results.extend(out)
        if on_progress:
            on_progress(len(results))
    return results


load_changes_task = task(
    load_changes, name="load", **{**TASK_OPTIONS, "retries": 0, "retry_condition_fn": None}
)
