"""What the steps' Prefect tasks share: the task options (the one retry policy) and the
wrapper that hands a result out in one piece."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect.cache_policies import NO_CACHE

from twoway.retry import RetryPolicy, prefect_retry_condition

#: The one retry policy, as Prefect task options (backoff with jitter, transient errors only).
_POLICY = RetryPolicy()
TASK_OPTIONS: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [_POLICY.base_delay * 2**i for i in range(3)],
    "retry_jitter_factor": _POLICY.jitter,
    "retry_condition_fn": prefect_retry_condition,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}
#: A pure step's task options: what it computes comes out the same on a second try, so it is
#: not retried (retries belong to I/O).
PURE_TASK_OPTIONS: dict[str, Any] = {
    **TASK_OPTIONS,
    "retries": 0,
    "retry_delay_seconds": 0,
    "retry_condition_fn": None,
}


class Whole:
    """A step's result handed out of its Prefect task in one piece. A flow run keeps an
    entry for each item of a list a task returns (to draw data dependencies), so a load's
    results, one per record written, would stay in memory until the run ends."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def whole(step: Callable[..., Any]) -> Callable[..., Whole]:
    """``step`` returning its result as a :class:`Whole` (for a Prefect task of it)."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Whole:
        return Whole(step(*args, **kwargs))

    return run
