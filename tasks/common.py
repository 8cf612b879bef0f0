"""Types the steps of a run hand to each other, and the Prefect task options they share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect.cache_policies import NO_CACHE

from twoway.contract import Op
from twoway.retry import RetryPolicy, prefect_retry_condition
from twoway.state import Member

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


@dataclass(slots=True)
class Observed:
    """A record read in this run, in canonical form (canonical field -> value)."""

    system: str
    key: str
    values: dict[str, Any]
    hash: str
    modified_at: datetime | None
    modified_by: str | None
    version: str | None
    link: str | None = None  # the link marker twoway stamped on a record it created


@dataclass(slots=True)
class Filtered:
    """One system's read, echoes and unchanged records dropped: its changes, the keys known
    deleted, the ID-map rows of both, and the cursor to store once the run commits."""

    system: str
    changed: list[Observed]
    deleted: set[str]
    cursor: str | None = None
    full: bool = False
    requests: int = 0  # calls the read made
    extracted: int = 0
    echo_skipped: int = 0
    unchanged: int = 0
    reread: int = 0  # unchanged records read again only because of the overlap window
    parked: list[dict] = field(default_factory=list)  # records no key can identify
    members: dict[str, Member] = field(default_factory=dict)  # ID-map rows of changed/deleted
    # echoes and unchanged records whose version moved (a write applied again, a system-only
    # bump): their ID-map rows with the version the system holds now, so that a
    # compare-and-set on the old version never defers their next update
    refreshed: dict[str, Member] = field(default_factory=dict)


@dataclass(slots=True)
class PlannedOp:
    """One write of the plan: which link it serves and the canonical fields it sets."""

    link_id: str
    system: str
    op: Op
    fields: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)  # the target's values it replaces
    # a create's hash (its intent's) of its values over every field the target maps
    created_hash: str | None = None
