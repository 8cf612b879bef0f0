"""Decisions a person makes about a sync: held conflicts and dead letters.

The command line (``twoway conflicts resolve``, ``twoway deadletters retry``) and the
``twoway-review`` flow (a form in the Prefect UI) both decide through these functions, so a
decision reads and applies the same wherever it was made; the next run writes it and its
report names it (:func:`decision_line`).
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twoway.definition import Definition
from twoway.errors import TwowayError
from twoway.state import StateChanges, StateStore


def command_line_user() -> str:
    """Who decides from a shell: the operating system's user name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        return "cli"


@dataclass
class HeldConflict:
    """An open conflict as a person needs to see it."""

    id: int
    field: str
    link_id: str
    candidates: dict[str, Any]  # system -> value
    changed_at: dict[str, str]  # system -> ISO time its value changed, where known
    detected_at: datetime | None
    match: str  # the record's match value (e.g. its e-mail), or its record ids
    records: dict[str, str] = field(default_factory=dict)  # system -> external id


@dataclass
class ParkedRecord:
    """An open dead letter as a person needs to see it."""

    id: int
    system: str
    record: str  # the match value, else the record's id in its system
    operation: str
    kind: str
    error: str
    attempts: int
    first_seen: datetime


@dataclass
class Pending:
    """What waits for a person in one sync."""

    sync: str
    conflicts: list[HeldConflict]  # the oldest first, up to the limit asked for
    letters: list[ParkedRecord]
    conflicts_open: int = 0  # all of them
    letters_open: int = 0

    def __bool__(self) -> bool:
        return bool(self.conflicts or self.letters)


def record_names(
    definition: Definition, store: StateStore, link_ids: set[str]
) -> dict[str, tuple[str, dict[str, str]]]:
    """Per link: its match value (``match_on`` joined, from the merge base or else a record's
    last seen values; its record ids when it has none) and its record ids per system."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    members = store.members_of(definition.name, link_ids)
    bases = store.links(definition.name, link_ids)
    for link_id in link_ids:
        rows = members.get(link_id, [])
        ids = {m.system: m.external_id for m in rows}
        sources = [bases[link_id].base] if link_id in bases else []
        sources += [m.seen for m in rows if m.seen]
        match = ""
        for values in sources:
            parts = [values.get(f) for f in definition.match_on]
            if parts and all(p not in (None, "") for p in parts):
                match = ", ".join(str(p) for p in parts)
                break
        if not match:
            match = ", ".join(f"{s} {k}" for s, k in sorted(ids.items())) or f"link {link_id}"
        out[link_id] = (match, ids)
    return out


def pending(definition: Definition, store: StateStore, limit: int | None = None) -> Pending:
    """The sync's open conflicts and open dead letters (the oldest ``limit`` of each), with
    the records named."""
    sync = definition.name
    all_held = store.open_conflicts(sync)
    all_letters = store.open_dead_letters(sync)
    held, letters = all_held[:limit], all_letters[:limit]
    links = {c["link_id"] for c in held} | {d["link_id"] for d in letters if d["link_id"]}
    names = record_names(definition, store, links)
    conflicts = [
        HeldConflict(
            id=c["id"],
            field=c["field"],
            link_id=c["link_id"],
            candidates=c["candidates"],
            changed_at=c["changed_at"],
            detected_at=c["detected_at"],
            match=names[c["link_id"]][0],
            records=names[c["link_id"]][1],
        )
        for c in held
    ]
    parked = [
        ParkedRecord(
            id=d["id"],
            system=d["system"],
            record=names[d["link_id"]][0]
            if d["link_id"]
            else f"{d['system']} {d['external_id'] or '(new)'}",
            operation=d["operation"],
            kind=d["kind"],
            error=d["error"],
            attempts=d["attempts"],
            first_seen=d["first_seen"],
        )
        for d in letters
    ]
    return Pending(sync, conflicts, parked, len(all_held), len(all_letters))


def resolve_conflict(
    definition: Definition,
    store: StateStore,
    conflict_id: int,
    *,
    keep: str | None = None,
    value: Any = None,
    by: str,
) -> dict[str, Any]:
    """Decide an open conflict: ``keep`` a system's value (a text that names no system of the
    conflict is kept as the value itself), or keep ``value``. The next run applies it.

    Raises TwowayError when the conflict is not open (decided elsewhere meanwhile, or applied).
    """
    system = None
    if keep is not None:
        conflict = next(
            (c for c in store.open_conflicts(definition.name) if c["id"] == conflict_id), None
        )
        if conflict is None:
            raise TwowayError(
                f"sync {definition.name!r} has no open conflict #{conflict_id} "
                f"(twoway conflicts list {definition.name})"
            )
        if keep in conflict["candidates"]:
            system = keep
        elif keep in definition.systems:
            raise TwowayError(
                f"conflict #{conflict_id} has no value from {keep!r}; "
                "use --value to keep that text as the value"
            )
        else:
            value = keep
    decided = store.decide_conflict(definition.name, conflict_id, system=system, value=value, by=by)
    return {**decided, "system": system}


def applied_decisions(
    decided: list[dict[str, Any]], due: list[dict[str, Any]], changes: StateChanges
) -> list[dict[str, Any]]:
    """What a run did with people's decisions: the decided conflicts it wrote (or could not
    write yet) and the dead letters a person asked to retry (written, or parked again)."""
    written = set(changes.resolved_conflicts)
    out: list[dict[str, Any]] = [
        {
            "kind": "conflict",
            "id": c["id"],
            "field": c["field"],
            "kept": c["winner"],
            "value": c["chosen"],
            "by": c.get("decided_by"),
            "at": c.get("decided_at"),
            "applied": c["id"] in written,
        }
        for c in decided
    ]
    retried = set(changes.resolved_dead_letters)
    out += [
        {
            "kind": "dead letter",
            "id": d["id"],
            "system": d["system"],
            "by": d.get("decided_by"),
            "at": d.get("decided_at"),
            "applied": d["id"] in retried,
        }
        for d in due
        if d.get("decision") == "retry"
    ]
    return out


def decision_line(decision: dict[str, Any]) -> str:
    """One line for a run's report and log: ``conflict #3 decided: kept portal``."""
    who = ""
    if decision.get("by"):
        who = f" (by {decision['by']}"
        who += f", {decision['at']:%Y-%m-%d %H:%M} UTC)" if decision.get("at") else ")"
    if decision["kind"] == "conflict":
        kept = decision["kept"]
        choice = (
            f"kept {kept}"
            if kept and kept != "(person)"
            else f"set to {json.dumps(decision['value'], ensure_ascii=False)}"
        )
        outcome = "" if decision["applied"] else "; not written yet (a write failed)"
        return f"conflict #{decision['id']} decided: {choice} for {decision['field']}{who}{outcome}"
    outcome = "written" if decision["applied"] else "failed again"
    return f"dead letter #{decision['id']} retried{who}: {outcome}"


def decisions_markdown(decisions: list[dict[str, Any]]) -> list[str]:
    """The run report's section on people's decisions (nothing when there were none)."""
    if not decisions:
        return []
    return ["", f"## Decided by a person ({len(decisions)})", ""] + [
        f"- {decision_line(d)}" for d in decisions
    ]


@dataclass
class Decisions:
    """What a person decided in one review: per conflict id, a system whose value to keep
    or a value of their own; per dead letter id, ``retry`` or ``drop``."""

    keep: dict[int, str] = field(default_factory=dict)
    values: dict[int, Any] = field(default_factory=dict)
    letters: dict[int, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keep or self.values or self.letters)


def apply_decisions(
    definition: Definition, store: StateStore, decisions: Decisions, *, by: str
) -> tuple[int, list[str]]:
    """Record a review's decisions, as the command line would: how many were recorded, and
    one line per decision saying what became of it. A conflict decided elsewhere meanwhile
    keeps that decision; a dead letter no longer open is left alone."""
    sync = definition.name
    made, lines = 0, []
    for conflict_id in sorted({*decisions.keep, *decisions.values}):
        try:
            if conflict_id in decisions.keep:
                decided = resolve_conflict(
                    definition, store, conflict_id, keep=decisions.keep[conflict_id], by=by
                )
                choice = f"keep {decisions.keep[conflict_id]}"
            else:
                decided = resolve_conflict(
                    definition, store, conflict_id, value=decisions.values[conflict_id], by=by
                )
                choice = f"set to {json.dumps(decided['chosen'], ensure_ascii=False)}"
        except TwowayError as exc:
            lines.append(f"conflict #{conflict_id}: left as it is ({exc})")
            continue
        made += 1
        lines.append(f"conflict #{conflict_id} decided: {choice} for {decided['field']}")
    for action, verb, apply in (
        ("retry", "retried on the next run", store.retry_dead_letters),
        ("drop", "dropped", store.drop_dead_letters),
    ):
        for letter_id in sorted(i for i, a in decisions.letters.items() if a == action):
            if apply(sync, [letter_id], by=by):
                made += 1
                lines.append(f"dead letter #{letter_id} {verb}")
            else:
                lines.append(f"dead letter #{letter_id}: left as it is (it is no longer open)")
    return made, lines
