"""The records the steps of a run hand to each other: a record read, one system's read with
its echoes dropped, a write of the plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twoway.contract import Op
from twoway.state import Member


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
    lost: set[str] = field(default_factory=set)  # keys the system lost: created there again
    cursor: str | None = None
    full: bool = False
    requests: int = 0  # calls the read made
    extracted: int = 0
    echo_skipped: int = 0
    unchanged: int = 0
    reread: int = 0  # unchanged records read again only because of the overlap window
    parked: list[dict] = field(default_factory=list)  # records no key can identify
    members: dict[str, Member] = field(default_factory=dict)  # ID-map rows of changed/deleted/lost
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
