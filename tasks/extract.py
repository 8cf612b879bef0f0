"""Step: extract changed records from one system since its cursor, in canonical form."""

from __future__ import annotations

from collections.abc import Callable

from prefect import task

from tasks.common import TASK_OPTIONS, Extract, Observed
from twoway.contract import Endpoint, RawRecord
from twoway.definition import Definition
from twoway.values import canonical, values_hash


def canonicalise(definition: Definition, system: str, record: RawRecord) -> Observed:
    """A system's record as canonical fields (names per the mapping, values normalised)."""
    return _canonicalise(definition.fields_of(system), system, record)


def _canonicalise(columns: dict[str, str], system: str, record: RawRecord) -> Observed:
    raw = record.values
    values = {f: canonical(raw.get(col)) for f, col in columns.items()}
    return Observed(
        system=system,
        key=record.key,
        values=values,
        hash=values_hash(values),
        modified_at=record.modified_at,
        modified_by=record.modified_by,
        version=record.version,
    )


def extract_changes(
    definition: Definition,
    system: str,
    endpoint: Endpoint,
    cursor: str | None,
    known_live: Callable[[], set[str]],
) -> Extract:
    """Records changed since ``cursor`` and the keys deleted since.

    Deletions come from the system's change feed where it has one; otherwise the keys we
    know to be live (``known_live()``, asked only then) are compared with the system's key
    list or, after a full read, with the keys read (hard deletes).
    """
    changes = endpoint.read_changes(cursor)
    columns = definition.fields_of(system)
    # each record as read goes as soon as its canonical form exists: one copy at a time
    raw, changes.records = changes.records, []
    raw.reverse()
    records = []
    while raw:
        records.append(_canonicalise(columns, system, raw.pop()))
    deleted = set(changes.deleted)
    keys = endpoint.list_keys()
    if changes.full or keys is not None:
        live = known_live()
        if changes.full:
            deleted |= live - {r.key for r in records}
        if keys is not None:
            deleted |= live - keys
        deleted &= live | set(changes.deleted)
    return Extract(
        system=system,
        records=records,
        deleted=deleted,
        cursor=changes.cursor,
        full=changes.full,
        requests=changes.requests,
    )


extract_changes_task = task(extract_changes, name="extract changed records", **TASK_OPTIONS)
