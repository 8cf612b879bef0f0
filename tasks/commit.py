"""Step: settle the write results into state, and commit it in one transaction.

The merge base of a field moves only when every system that had to take the new value
took it; a failed or deferred write leaves the base where it was and parks the record as
a dead letter, so the next run tries again and nothing is lost.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from prefect import task

from tasks.common import TASK_OPTIONS, whole
from twoway.contract import Create, Delete, WriteResult, write_kind
from twoway.definition import Definition
from twoway.errors import PreconditionFailed, Retriable
from twoway.records import Filtered, Mapping, Plan, PlannedOp
from twoway.state import Link, Member, StateChanges, StateStore
from twoway.values import canonical, values_hash


def settle(
    definition: Definition,
    mapping: Mapping,
    plan: Plan,
    results: dict[str, list[WriteResult]],
    reads: dict[str, Filtered],
    due_letters: list[dict[str, Any]],
    scope: str,
    now: datetime,
) -> tuple[StateChanges, dict[str, dict[str, int]]]:
    """The state changes of a run and its per-system write counts."""
    changes = StateChanges()
    counts = {
        s: {"created": 0, "updated": 0, "deleted": 0, "failed": 0, "deferred": 0}
        for s in definition.systems
    }
    outcome: dict[str, list[tuple[PlannedOp, WriteResult]]] = {}
    for system, planned in plan.ops.items():
        for p, r in zip(planned, results.get(system, []), strict=False):
            outcome.setdefault(p.link_id, []).append((p, r))
    failed_links: set[str] = set()
    members_by_link = mapping.members
    columns = {s: definition.fields_of(s) for s in definition.systems}

    for link_id, lp in plan.links.items():
        live = {m.system: m for m in members_by_link.get(link_id, []) if m.deleted_at is None}
        failed: set[str] = set()
        updated: dict[str, Member] = {}
        for system, record in lp.observed.items():
            if system not in live:
                continue
            seen, seen_hash = record.values, record.hash
            if lp.left_behind:
                # a one-direction run left a system behind: for the fields it could not carry
                # the state keeps the record's values as read (what the system holds, so no
                # run writes them to it again) without their hash, so a later run finds the
                # change again (a record new to the state stays unknown)
                known = live[system].seen
                if known is None:
                    seen, seen_hash = None, None
                else:
                    held = {f: known.get(f) for f in lp.left_behind if f in seen}
                    if live[system].seen_hash is None or values_hash({**seen, **held}) != seen_hash:
                        seen_hash = None
            updated[system] = Member(
                system, record.key, link_id, seen, seen_hash, record.version, None
            )
        for p, r in outcome.get(link_id, []):
            kind = write_kind(p.op)
            if not r.ok:
                failed.add(p.system)
                deferred = isinstance(r.error, PreconditionFailed)
                counts[p.system]["deferred" if deferred else "failed"] += 1
                changes.dead_letters.append(
                    {
                        "system": p.system,
                        "link_id": link_id,
                        "external_id": getattr(p.op, "key", None),
                        "operation": kind[:-1] if kind != "created" else "create",
                        "kind": "deferred" if deferred else "failed",
                        "error": str(r.error),
                        "payload": p.fields,
                    }
                )
                continue
            counts[p.system][kind] += 1
            stored = _canonical_stored(columns[p.system], r.values)
            if isinstance(p.op, Delete):
                member = live[p.system]
                updated[p.system] = Member(
                    p.system,
                    member.external_id,
                    link_id,
                    member.seen,
                    member.seen_hash,
                    member.version,
                    now,
                )
            elif isinstance(p.op, Create):
                seen = stored if stored is not None else dict(p.fields)
                # most creates store what was sent: their intent's hash is the hash of it
                known = (
                    p.created_hash
                    if p.created_hash and seen == {f: p.fields.get(f) for f in columns[p.system]}
                    else None
                )
                updated[p.system] = Member(
                    p.system, str(r.key), link_id, seen, known or values_hash(seen), r.version, None
                )
            else:
                prior = updated.get(p.system) or live[p.system]
                seen = (
                    stored if stored is not None else {**lp.current.get(p.system, {}), **p.fields}
                )
                updated[p.system] = Member(
                    p.system, prior.external_id, link_id, seen, values_hash(seen), r.version, None
                )
        # a deletion a one-direction run could not carry to every system is read again by
        # the run that can: until then the deleted record stays known and its link alive
        waits = lp.delete_link and bool(lp.left_behind)
        delete_link = lp.delete_link and not waits
        for system in () if waits else lp.deleted_now:
            member = live[system]
            updated[system] = Member(
                system,
                member.external_id,
                link_id,
                member.seen,
                member.seen_hash,
                member.version,
                now,
            )
        if delete_link:  # a record its system lost goes with its link, as a tombstone
            changes.members.extend(
                replace(m, deleted_at=now)
                for m in members_by_link.get(link_id, [])
                if (m.system, m.external_id) in lp.lost and m.deleted_at is None
            )
        else:  # forgotten: the link creates it there again
            changes.dropped.extend(lp.lost)
        changes.members.extend(updated.values())

        base = dict(lp.base)
        for fname, value in lp.proposed.items():
            if not (lp.needs.get(fname, set()) & failed) and fname not in lp.left_behind:
                base[fname] = value
        link = mapping.links.get(link_id)
        gone = delete_link and not failed
        deleted_at = (
            (link.deleted_at if link and link.deleted_at else now)
            if delete_link
            else (link.deleted_at if link else None)  # a deletion that waits keeps its mark
        )
        if delete_link or base != lp.base or link is None or link.match_key != lp.match_key:
            changes.links.append(
                Link(link_id, base, lp.match_key if not gone else None, deleted_at, link is None)
            )
        if failed:
            failed_links.add(link_id)
        else:
            changes.resolved_conflicts.extend(plan.decided.get(link_id, []))

    for old in mapping.reused:
        if not any(
            m.system == old.system and m.external_id == old.external_id and m.link_id == old.link_id
            for m in changes.members
        ):
            changes.members.append(
                Member(
                    old.system,
                    old.external_id,
                    old.link_id,
                    old.seen,
                    old.seen_hash,
                    old.version,
                    old.deleted_at or now,
                )
            )
    written = {(m.system, m.external_id) for m in changes.members}
    for system, read in reads.items():
        # records skipped as unchanged whose version moved: only their version is written
        # (the read loads their rows without the values seen, which stay as stored)
        changes.versions.update(
            ((system, k), m.version)
            for k, m in read.refreshed.items()
            if (system, k) not in written
        )
    _move_tombstones_off_reused_keys(changes.members)
    # links whose rows, all read by this chunk's mapping, are all written now
    rows = {(m.system, m.external_id) for m in changes.members}
    changes.complete = {
        link.link_id
        for link in changes.links
        if link.link_id in members_by_link
        and all((m.system, m.external_id) in rows for m in members_by_link[link.link_id])
    }
    linked_now = rows | changes.versions.keys()
    parked_now = {(p["system"], p["external_id"]) for p in mapping.parked}
    for letter in due_letters:
        if letter["link_id"]:
            lp = plan.links.get(letter["link_id"])
            # a link a one-direction run left a system behind on keeps its letter for the
            # run that writes there
            if lp is not None and not lp.left_behind and letter["link_id"] not in failed_links:
                changes.resolved_dead_letters.append(letter["id"])
        elif (letter["system"], letter["external_id"]) in linked_now - parked_now:
            changes.resolved_dead_letters.append(letter["id"])
    changes.dead_letters.extend(mapping.parked)
    for system, read in reads.items():
        changes.cursors[(system, scope)] = read.cursor
    # an intent is settled once its create's outcome is known; a create that timed out may
    # have been applied, so its intent stays for the next run to find the record
    changes.settled_intents.extend(mapping.recovered)
    for system, planned in plan.ops.items():
        for p, r in zip(planned, results.get(system, []), strict=False):
            if isinstance(p.op, Create) and not isinstance(r.error, Retriable):
                changes.settled_intents.append((system, p.link_id))
    return changes, counts


def _move_tombstones_off_reused_keys(members: list[Member]) -> None:
    """A key the system gave to a new record belongs to it; the old record's tombstone keeps
    protecting its link under ``key@link``."""
    tombstones = [m for m in members if m.deleted_at is not None]
    if not tombstones:  # most runs delete nothing: no key to compare
        return
    live = {(m.system, m.external_id) for m in members if m.deleted_at is None}
    for m in tombstones:
        if (m.system, m.external_id) in live:
            m.external_id = f"{m.external_id}@{m.link_id}"


def _canonical_stored(
    columns: dict[str, str], values: dict[str, Any] | None
) -> dict[str, Any] | None:
    if values is None:
        return None
    return {f: canonical(values.get(col)) for f, col in columns.items()}


def commit_state(store: StateStore, sync: str, changes: StateChanges, run_id: str) -> None:
    """Write ID map, merge bases, cursors, conflicts and dead letters in one transaction."""
    store.commit(sync, changes, run_id)


commit_state_task = task(whole(commit_state), name="commit state", **TASK_OPTIONS)
