"""The one retry policy: exponential backoff with jitter, honouring ``Retry-After``.

Used in two places with the same numbers: inside a connector around each request (so a
429 in the middle of a batch waits as the service asks), and as the Prefect task retry
condition (so a step that still fails after that is run again by Prefect).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twoway.errors import Retriable, is_retriable

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure."""

    attempts: int = 5  # total tries, the first included
    base_delay: float = 0.5  # seconds before the second try
    max_delay: float = 30.0  # a backoff wait never exceeds this
    #: nor a wait a service asked for; an HTTP endpoint's client raises it to its retry
    #: deadline, since Graph asks for minutes when it throttles
    max_retry_after: float = 30.0
    jitter: float = 0.5  # +/- share of the delay drawn at random

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based): the service's
        ``retry_after`` when it gave one (up to ``max_retry_after``), else exponential
        backoff with jitter."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after)
        raw = min(self.base_delay * (2 ** (attempt - 1)), self.max_delay)
        spread = raw * self.jitter
        return max(0.0, raw + rng.uniform(-spread, spread))

    def call(
        self,
        fn: Callable[[], T],
        *,
        sleep: Callable[[float], Any] = time.sleep,
        rng: random.Random | None = None,
    ) -> T:
        """Call ``fn`` until it succeeds, raises a non-retriable error, or tries run out."""
        rng = rng or random.Random()
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_retriable(exc) or attempt >= self.attempts:
                    raise
                retry_after = exc.retry_after if isinstance(exc, Retriable) else None
                sleep(self.delay(attempt, rng, retry_after))
                attempt += 1


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def prefect_retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a task only when its error is transient."""
    try:
        state.result()
    except Exception as exc:  # the task's own exception is re-raised here
        return is_retriable(exc)
    return False
