"""The records the steps of a run hand to each other: a record read, one system's read with
its echoes dropped, the links a chunk touches (the ID mapping), the plan and its writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twoway.contract import Op
from twoway.state import Link, Member


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


@dataclass
class Mapping:
    """The links a run touches, with what each system reported for them."""

    observed: dict[str, dict[str, Observed]] = field(
        default_factory=dict
    )  # link -> system -> record
    deleted: dict[str, set[str]] = field(default_factory=dict)  # link -> systems that deleted it
    # link -> system -> key of the record the system lost (it is created there again)
    lost: dict[str, dict[str, str]] = field(default_factory=dict)
    members: dict[str, list[Member]] = field(default_factory=dict)  # link -> id_map rows
    links: dict[str, Link] = field(default_factory=dict)  # existing merge bases
    new_links: set[str] = field(default_factory=set)
    parked: list[dict[str, Any]] = field(default_factory=list)  # ambiguous matches
    # intents whose created record was found (system, link)
    recovered: list[tuple[str, str]] = field(default_factory=list)
    # tombstones whose key a new record took
    reused: list[Member] = field(default_factory=list)
    # link -> systems with an open intent whose created record this run did not find (it
    # may exist unread: a run that does not read the system must not create it again)
    unsettled: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class LinkPlan:
    """What a run intends for one link; settled into state once the writes are done."""

    link_id: str
    base: dict[str, Any]  # the merge base before this run
    proposed: dict[str, Any]  # field -> value the base moves to when its writes succeed
    needs: dict[str, frozenset[str]]  # field -> systems that must accept a write first
    current: dict[str, dict[str, Any]]  # system -> values it holds now (read or last seen)
    observed: dict[str, Observed]  # records read this run
    deleted_now: set[str]  # systems whose record was deleted this run
    delete_link: bool = False
    match_key: str | None = None
    # fields whose base stays: a system this run does not write to must still take the value
    # (the empty set is shared: a run plans 100,000s of links)
    left_behind: frozenset[str] = frozenset()
    # (system, key) of records the systems lost: their ID-map rows go, the link creates them
    # there again
    lost: tuple[tuple[str, str], ...] = ()


@dataclass
class Plan:
    """Every write a run intends, the conflicts it found, and what each link moves to."""

    ops: dict[str, list[PlannedOp]] = field(default_factory=dict)
    links: dict[str, LinkPlan] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    decided: dict[str, list[int]] = field(default_factory=dict)  # link -> conflicts applied

    def count(self, system: str, kind: type) -> int:
        return sum(isinstance(p.op, kind) for p in self.ops.get(system, []))
