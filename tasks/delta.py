"""Step: compute field deltas against the merge base and plan the writes.

Per link and field, every system whose value differs from the merge base (the last
converged value) proposes its value. One distinct proposal wins outright; different
proposals are a conflict, settled by the policy: last writer wins by modification time,
prefer a system, or manual (the field is held and the conflict recorded for a person).
Different fields changed on different systems merge. Writes go only where the value
differs and the field's direction allows it; the plan is a pure function of its inputs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from prefect import task

from tasks.common import PURE_TASK_OPTIONS, whole
from tasks.idmap import match_key
from twoway.contract import Create, Delete, Update
from twoway.definition import Definition
from twoway.records import LinkPlan, Mapping, Observed, Plan, PlannedOp
from twoway.values import canonical

_MISSING = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_SCALARS = (str, int, bool, type(None))

#: ``LinkPlan.left_behind`` of a whole record (a deletion, a create) a one-direction run
#: cannot carry to every system
WHOLE_RECORD: frozenset[str] = frozenset({"(record)"})

#: the systems a field must still be written to are frozen sets, shared between links (a run
#: of 100,000 new records would otherwise hold two million small sets)
_NOBODY: frozenset[str] = frozenset()


@lru_cache(maxsize=1024)
def _plus(need: frozenset[str], system: str) -> frozenset[str]:
    return need | {system}


def _same(a: Any, b: Any) -> bool:
    if a is b or (a == b and type(a) is type(b)):
        return True
    if type(a) in _SCALARS and type(b) in _SCALARS:
        return False  # unequal text, whole numbers, flags or null never encode alike
    return json.dumps(a) == json.dumps(b)


def compute_deltas(
    definition: Definition,
    mapping: Mapping,
    *,
    sources: set[str],
    targets: set[str],
    open_conflicts: set[tuple[str, str]],
    decisions: dict[tuple[str, str], tuple[int, Any]] | None = None,
) -> Plan:
    """Plan the writes for every touched link (pure: reads nothing, writes nothing)."""
    plan = Plan(ops={s: [] for s in definition.systems})
    decisions = decisions or {}
    policy, preferred = definition.policy
    # per field, computed once: who may propose a value, and which way it flows
    specs = [
        (
            fname,
            fmap,
            {s for s in fmap.columns if s in sources and (fmap.source is None or s == fmap.source)},
            {(a, b) for a in definition.systems for b in definition.systems if fmap.flows(a, b)},
        )
        for fname, fmap in definition.field_maps.items()
    ]
    # per field, the systems that may propose it but this run does not read (one direction):
    # a change they hold that the base has not taken waits for a run that reads them
    unread = {
        fname: {
            s
            for s in fmap.columns
            if s not in sources and (fmap.source is None or s == fmap.source)
        }
        for fname, fmap in definition.field_maps.items()
    }
    creates = _create_specs(definition)
    renames = _renames(definition)
    proposable = {s: [f for f, _, who, _ in specs if s in who] for s in definition.systems}
    if decisions:  # a field a person settled takes the full path below
        proposable = {}
    for link_id in sorted(mapping.observed.keys() | mapping.deleted.keys()):
        link = mapping.links.get(link_id)
        observed = mapping.observed.get(link_id, {})
        members = mapping.members.get(link_id, [])
        # a record its system lost is forgotten where this run writes to that system, so the
        # link creates it there again; a run that does not write there leaves it as it is
        gone = mapping.lost.get(link_id)
        lost = tuple(sorted((s, k) for s, k in gone.items() if s in targets)) if gone else ()
        live = {
            m.system: m
            for m in members
            if m.deleted_at is None and (m.system, m.external_id) not in lost
        }
        tombstoned = {m.system for m in members if m.deleted_at is not None}
        if lost:
            tombstoned.difference_update(s for s, _ in lost)
        deleted_now = mapping.deleted.get(link_id, set()) & live.keys()
        base = dict(link.base) if link else {}
        current = {
            s: (observed[s].values if s in observed else (m.seen or {})) for s, m in live.items()
        }
        lp = LinkPlan(
            link_id=link_id,
            base=base,
            proposed={},
            needs={},
            current=current,
            observed=observed,
            deleted_now=deleted_now,
            lost=lost,
        )
        plan.links[link_id] = lp
        link_gone = link is not None and link.deleted_at is not None

        if link_gone or (deleted_now and definition.deletes == "propagate"):
            lp.delete_link = True
            if any(s not in targets and s not in deleted_now for s in live):
                lp.left_behind = WHOLE_RECORD  # a one-direction run: the deletion waits too
            for system, member in sorted(live.items()):
                if system in deleted_now or system not in targets:
                    continue
                version = observed[system].version if system in observed else member.version
                plan.ops[system].append(
                    PlannedOp(
                        link_id, system, Delete(member.external_id, version), before=current[system]
                    )
                )
                edits = _changed_fields(definition, base, current[system], system)
                if edits and system in observed:
                    plan.conflicts.append(
                        {
                            "link_id": link_id,
                            "field": "(record)",
                            "status": "resolved",
                            "policy": "delete wins over edit",
                            "winner": sorted(deleted_now)[0] if deleted_now else None,
                            "candidates": {system: edits, **{s: "(deleted)" for s in deleted_now}},
                            "chosen": "(deleted)",
                        }
                    )
            continue
        for system in deleted_now:  # deletes: ignore — forget the record, keep the link
            current.pop(system)
            live.pop(system)
            tombstoned.add(system)

        if link is None and proposable and len(observed) == 1 and observed.keys() == current.keys():
            # a new record, seen in one system: each of its values it may send is proposed
            # (what the loop below decides for this case, without its per-field work)
            ((source, values),) = current.items()
            lp.proposed = {f: v for f in proposable[source] if (v := values.get(f)) is not None}
            lp.needs = dict.fromkeys(lp.proposed, _NOBODY)
            fields_left: list = []
        else:
            fields_left = specs
        for fname, fmap, proposers, flows in fields_left:
            if decisions and (link_id, fname) in decisions:  # a person settled this field
                conflict_id, chosen = decisions[(link_id, fname)]
                value = canonical(chosen)  # a person's value takes the form read values have
                plan.decided.setdefault(link_id, []).append(conflict_id)
                lp.proposed[fname] = value
                behind = {
                    t
                    for t, values in current.items()
                    if t in fmap.columns
                    and fmap.source != t
                    and not _same(values.get(fname), value)
                }
                lp.needs[fname] = frozenset(behind & targets)
                if behind - targets:
                    lp.left_behind |= {fname}
                continue
            proposals: dict[str, Any] = {}
            unread_change: set[str] = set()  # systems holding a change this run does not read
            prior = base.get(fname, _MISSING)
            for system, values in current.items():
                # only sources that map the field propose; a one-way field never flows back
                if system not in proposers and system not in unread[fname]:
                    continue
                if system not in observed and live[system].seen is None:
                    continue  # known by key only (a crashed run's new link): its values are unknown
                value = values.get(fname)
                if prior is _MISSING and value is None:
                    continue  # no value yet is not a change: never write a blank over data
                if prior is _MISSING or not _same(value, prior):
                    if system in proposers:
                        proposals[system] = value
                    else:  # a change of a system this run does not read
                        unread_change.add(system)
                        lp.left_behind |= {fname}
            if not proposals:
                continue
            if len(proposals) == 1:
                winner = next(iter(proposals))
            elif len({json.dumps(v, sort_keys=True) for v in proposals.values()}) == 1:
                winner = sorted(proposals)[0]
            else:
                winner = _settle(policy, preferred, proposals, observed)
                conflict = {
                    "link_id": link_id,
                    "field": fname,
                    "policy": definition.conflicts,
                    "candidates": proposals,
                    "changed_at": _changed_at(proposals, observed),
                    "winner": winner,
                    "chosen": proposals[winner] if winner else None,
                    "status": "resolved" if winner else "open",
                }
                if winner is None and (link_id, fname) in open_conflicts:
                    continue  # held and already waiting for a person
                plan.conflicts.append(conflict)
                if winner is None:
                    continue  # manual: hold the field everywhere
            value = proposals[winner]
            lp.proposed[fname] = value
            need = _NOBODY
            for target, values in current.items():
                if (winner, target) in flows and not _same(values.get(fname), value):
                    if target in unread_change:
                        # it holds a change of its own that this run does not read: the run
                        # that reads it settles the two, rather than this one overwrite it
                        lp.left_behind |= {fname}
                    elif (
                        target not in sources
                        and target not in observed
                        and live[target].seen is None
                    ):
                        # a record known by key only, in a system this run does not read:
                        # what it holds is unknown, so the run that reads it decides
                        lp.left_behind |= {fname}
                    elif target in targets:
                        need = _plus(need, target)
                    else:  # a one-direction run: the base waits for the run that writes there
                        lp.left_behind |= {fname}
            lp.needs[fname] = need

        lp.match_key = (
            match_key(definition, {**base, **lp.proposed}) if definition.match_on else None
        )
        # a create a crashed run may have applied in a system this run does not read waits
        unread_creates = {s for s in mapping.unsettled.get(link_id, ()) if s not in sources}
        _plan_writes(
            definition, plan, lp, live, tombstoned | unread_creates, targets, creates, renames
        )
        if unread_creates and any(s not in live for s in unread_creates):
            # the record that create made holds values this run cannot see: the base, the
            # last values every system agreed on, waits for the run that reads it
            lp.left_behind |= WHOLE_RECORD | lp.proposed.keys()
    return plan


def _changed_fields(
    definition: Definition, base: dict[str, Any], values: dict[str, Any], system: str
) -> dict[str, Any]:
    return {
        f: v
        for f, v in values.items()
        if f in definition.field_maps and f in base and not _same(base[f], v)
    }


def _changed_at(proposals: dict[str, Any], observed: dict[str, Observed]) -> dict[str, str]:
    """When each proposing system's record last changed (ISO 8601), where it says."""
    return {
        system: record.modified_at.isoformat()
        for system in proposals
        if (record := observed.get(system)) is not None and record.modified_at is not None
    }


def _settle(
    policy: str, preferred: str | None, proposals: dict[str, Any], observed: dict[str, Observed]
) -> str | None:
    """The system whose value wins a conflict, or None to hold it for a person."""
    if policy == "manual":
        return None
    if policy == "prefer" and preferred in proposals:
        return preferred

    def when(system: str) -> tuple[datetime, str]:
        record = observed.get(system)
        stamp = record.modified_at if record and record.modified_at else _EPOCH
        return stamp, system

    # last writer wins; equal times fall to the system name, so every run decides alike
    return max(proposals, key=when)


def _create_specs(definition: Definition) -> dict[str, list[tuple[str, str, str | None, set]]]:
    """Per system: (field, column, one-way source, systems that send it there) for creates."""
    return {
        system: [
            (
                fname,
                column,
                definition.field_maps[fname].source,
                {s for s in definition.systems if definition.field_maps[fname].flows(s, system)},
            )
            for fname, column in definition.fields_of(system).items()
        ]
        for system in definition.systems
    }


def _plan_writes(
    definition: Definition,
    plan: Plan,
    lp: LinkPlan,
    live: dict,
    tombstoned: set[str],
    targets: set[str],
    creates: dict[str, list[tuple[str, str, str | None, set]]],
    renames: dict[str, dict[str, str] | None],
) -> None:
    needed = set().union(*lp.needs.values())  # systems some field must be written to
    for system, member in live.items():
        if system not in needed:
            continue
        fields = {f: lp.proposed[f] for f, need in lp.needs.items() if system in need}
        version = lp.observed[system].version if system in lp.observed else member.version
        plan.ops[system].append(
            PlannedOp(
                lp.link_id,
                system,
                Update(member.external_id, _by_column(renames[system], fields), version),
                fields=fields,
                before={f: lp.current[system].get(f) for f in fields},
            )
        )
    if not lp.current:
        return
    merged = {**lp.base, **lp.proposed} if lp.base else lp.proposed
    current = lp.current
    holders = current.keys()
    for system in definition.systems:
        if system in live or system in tombstoned:
            continue
        # each field some holder sends here: the merged value, or a one-way field's source's
        fields = {
            fname: value
            for fname, _, source, senders in creates[system]
            if not holders.isdisjoint(senders)
            and (
                value := merged.get(fname)
                if source is None
                else (current[source].get(fname) if source in current else None)
            )
            is not None
        }
        if not fields:
            continue
        if system not in targets:  # a one-direction run: the create waits for a run into it
            lp.left_behind |= WHOLE_RECORD
            continue
        needs = lp.needs
        for fname in fields:
            needs[fname] = _plus(needs.get(fname, _NOBODY), system)
        if not fields.keys() <= lp.proposed.keys():
            lp.proposed = {**fields, **lp.proposed}  # values already proposed stay
        plan.ops[system].append(
            PlannedOp(
                lp.link_id,
                system,
                Create(lp.link_id, _by_column(renames[system], fields)),
                fields=fields,
            )
        )


def _renames(definition: Definition) -> dict[str, dict[str, str] | None]:
    """Per system, field -> column; None where every field is named as its column."""
    out: dict[str, dict[str, str] | None] = {}
    for system in definition.systems:
        columns = definition.fields_of(system)
        out[system] = None if all(f == c for f, c in columns.items()) else columns
    return out


def _by_column(renames: dict[str, str] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """Field values keyed by the system's column names: the same dict where every field is
    named as its column (no second copy of each planned record's values)."""
    if renames is None:
        return fields
    return {renames[f]: v for f, v in fields.items()}


compute_deltas_task = task(whole(compute_deltas), name="compute field deltas", **PURE_TASK_OPTIONS)
