"""Step: map records to links through the ID map; link unknown records on ``match_on``.

Unknown records are matched on every run (not only the first), so a record that a crashed
run created is found and linked rather than created twice. Several candidates for one
match key link nothing: they are parked as ambiguous and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prefect import task

from tasks.common import TASK_OPTIONS, whole
from twoway.definition import Definition
from twoway.records import Filtered, Mapping, Observed
from twoway.state import Intent, Member, StateStore
from twoway.values import values_hash


def match_key(definition: Definition, values: dict[str, Any]) -> str | None:
    """Hash of the ``match_on`` values (text compared case- and space-insensitively)."""
    if not definition.match_on:
        return None
    parts = []
    for f in definition.match_on:
        value = values.get(f)
        if isinstance(value, str):
            value = " ".join(value.split()).casefold()
        if value is None or value == "":
            return None
        parts.append(value)
    return values_hash({"m": parts})


def map_ids(
    definition: Definition,
    filtered: dict[str, Filtered],
    known: dict[str, dict[str, Member]],
    store: StateStore,
    new_link_id: Callable[[], str],
    pending_links: set[str],
    intents: list[Intent] | None = None,
) -> Mapping:
    """Group this run's changes by link, creating links for new records.

    Open intents (creates a crashed run may have sent) come first: the records they name
    and the records they created rejoin the intent's link instead of starting new ones.
    """
    sync = definition.name
    out = Mapping()
    unlinked: dict[str, dict[str, list[Observed]]] = {}  # match key -> system -> records
    loners: list[Observed] = []
    by_member = {m: i for i in intents or [] for m in i.members}
    by_marker = {(i.system, i.link_id): i for i in intents or []}
    marked: list[Observed] = []  # unknown records whose link marker names no open intent
    by_hash: dict[tuple[str, str], list[Intent]] = {}
    for intent in sorted(intents or [], key=lambda i: i.link_id):
        by_hash.setdefault((intent.system, intent.values_hash), []).append(intent)
    rejoined: list[Member] = []
    accounts = {name: spec.integration_account for name, spec in definition.systems.items()}
    for system, batch in filtered.items():
        for record in sorted(batch.changed, key=lambda r: r.key):
            member = known[system].get(record.key)
            created = by_hash.get((system, record.hash))
            ours = record.modified_by is not None and record.modified_by == accounts[system]
            if (
                member is not None
                and member.deleted_at is None
                and created
                and ours
                and member.seen_hash != record.hash
                and created[0].link_id != member.link_id
            ):
                # our own create for another link got this key: the record we knew by it was
                # deleted before we noticed, and the database reused its key
                out.deleted.setdefault(member.link_id, set()).add(system)
                out.reused.append(member)
                member = None
            if member is not None and member.deleted_at is None:
                out.observed.setdefault(member.link_id, {})[system] = record
                continue
            if member is not None:
                out.reused.append(member)
            intent = by_member.get((system, record.key))
            mark = by_marker.pop((system, record.link), None) if record.link else None
            if intent is None and mark is not None:
                # our own create, found by the link id it carries whatever a person changed
                intent = mark
                out.recovered.append((intent.system, intent.link_id))
                if created and intent in created:
                    created.remove(intent)
            elif intent is None and created:
                intent = created.pop(0)
                out.recovered.append((intent.system, intent.link_id))
            elif intent is None and record.link:
                marked.append(record)
                continue
            if intent is not None:
                out.observed.setdefault(intent.link_id, {})[system] = record
                rejoined.append(_new_member(record, intent.link_id))
                continue
            key = match_key(definition, record.values)
            if key is None:
                loners.append(record)
            else:
                unlinked.setdefault(key, {}).setdefault(system, []).append(record)
        for key in batch.deleted:
            member = known[system].get(key)
            if member is not None and member.deleted_at is None:
                out.deleted.setdefault(member.link_id, set()).add(system)
        for key in batch.lost:
            member = known[system].get(key)
            if member is not None and member.deleted_at is None:
                out.lost.setdefault(member.link_id, {})[system] = key

    loners += _rejoin_marked(store, sync, marked, out, rejoined)
    existing = store.links_by_match_key(sync, unlinked) if unlinked else {}
    # links a crashed run started hold no match key in the store yet: their records read
    # now give it, so a copy that run created and a person edited still joins its link
    uncommitted = _uncommitted_by_match_key(definition, out, known) if unlinked else {}
    for key, link_ids in uncommitted.items():
        if key in unlinked and key not in existing:
            existing[key] = sorted(link_ids)
    candidates_members = store.members_of(sync, {lid for ids in existing.values() for lid in ids})
    open_intent = {(i.system, i.link_id) for i in intents or []}
    joined: list[Member] = []
    for key, by_system in unlinked.items():
        links = existing.get(key, [])
        crowded = [s for s, recs in by_system.items() if len(recs) > 1]
        if crowded or len(links) > 1:
            reason = (
                f"several records in {', '.join(sorted(crowded))} share the match_on values"
                if crowded
                else f"{len(links)} linked records share the match_on values"
            )
            for records in by_system.values():
                out.parked += [_ambiguous(r, reason) for r in records]
            continue
        if links:
            link_id = links[0]
            taken = {m.system for m in candidates_members.get(link_id, []) if m.deleted_at is None}
        else:
            link_id, taken = new_link_id(), set()
            out.new_links.add(link_id)
        for system, (record,) in by_system.items():
            if system in taken:
                out.parked.append(
                    _ambiguous(record, "a linked record with the same match_on values exists")
                )
                continue
            out.observed.setdefault(link_id, {})[system] = record
            joined.append(_new_member(record, link_id))
            if (system, link_id) in open_intent:  # the create that intent announced, edited
                out.recovered.append((system, link_id))
    for record in loners:
        link_id = new_link_id()
        out.new_links.add(link_id)
        out.observed[link_id] = {record.system: record}
        joined.append(_new_member(record, link_id))

    touched = set(out.observed) | set(out.deleted) | set(out.lost) | set(pending_links)
    out.members = store.members_of(sync, touched - out.new_links)
    refreshed = {(s, k): m for s, batch in filtered.items() for k, m in batch.refreshed.items()}
    if refreshed:  # the version each system holds now, for this run's compare-and-set
        for link_id, members in out.members.items():
            out.members[link_id] = [
                replace(m, version=r.version)
                if (r := refreshed.get((m.system, m.external_id))) is not None
                else m
                for m in members
            ]
    out.links = store.links(sync, touched - out.new_links)
    for member in rejoined:
        if member.link_id not in out.links:
            out.new_links.add(member.link_id)
    for member in (*rejoined, *joined):
        out.members.setdefault(member.link_id, []).append(member)
    for link_id in (*pending_links, *out.lost):
        out.observed.setdefault(link_id, {})
    found = set(out.recovered)
    for intent in intents or []:
        if (intent.system, intent.link_id) not in found:
            out.unsettled.setdefault(intent.link_id, set()).add(intent.system)
    return out


def _uncommitted_by_match_key(
    definition: Definition, out: Mapping, known: dict[str, dict[str, Member]]
) -> dict[str, set[str]]:
    """Match keys of the links whose records the ID map holds with no values seen (links a
    run announced and no commit settled), from the records read now."""
    found: dict[str, set[str]] = {}
    for link_id, records in out.observed.items():
        for system, record in records.items():
            member = known[system].get(record.key)
            if member is None or member.seen_hash is not None or member.link_id != link_id:
                continue
            key = match_key(definition, record.values)
            if key is not None:
                found.setdefault(key, set()).add(link_id)
    return found


def _rejoin_marked(
    store: StateStore, sync: str, marked: list[Observed], out: Mapping, rejoined: list[Member]
) -> list[Observed]:
    """Unknown records that carry the marker of a link the state holds rejoin it where the
    link has no live record in their system; the others are new records (a person copied a
    marked row, or the link is gone). Returns those."""
    if not marked:
        return []
    ids = {r.link for r in marked if r.link}
    links = store.links(sync, ids)
    taken = {
        (m.system, m.link_id)
        for members in store.members_of(sync, links.keys()).values()
        for m in members
        if m.deleted_at is None
    }
    strangers = []
    for record in marked:
        link = links.get(record.link or "")
        if link is None or link.deleted_at is not None or (record.system, link.link_id) in taken:
            strangers.append(record)
            continue
        taken.add((record.system, link.link_id))
        out.observed.setdefault(link.link_id, {})[record.system] = record
        rejoined.append(_new_member(record, link.link_id))
    return strangers


def _new_member(record: Observed, link_id: str) -> Member:
    return Member(
        system=record.system,
        external_id=record.key,
        link_id=link_id,
        seen=None,
        seen_hash=None,
        version=record.version,
        deleted_at=None,
    )


def _ambiguous(record: Observed, reason: str) -> dict[str, Any]:
    return {
        "system": record.system,
        "external_id": record.key,
        "link_id": None,
        "operation": "link",
        "kind": "ambiguous",
        "error": f"ambiguous match: {reason}; link them by hand or change match_on",
        "payload": record.values,
    }


map_ids_task = task(whole(map_ids), name="map IDs via the table", **TASK_OPTIONS)
