"""Step: filter out the integration account's own edits (echoes) and unchanged records.

A record counts as unchanged when its values hash equals what we last saw or wrote there,
whoever modified it (a live key that we hold as deleted is a new record: some databases
reuse keys); a record last modified by the integration account whose values differ
from what we wrote is a real change (someone edited between our write and this read).
"""

from __future__ import annotations

from prefect import task

from tasks.common import TASK_OPTIONS, Extract, Filtered, Observed
from twoway.state import Member


def filter_echoes(
    extract: Extract, integration_account: str | None, known: dict[str, Member]
) -> Filtered:
    """Split one system's extract into real changes, echoes and unchanged records."""
    changed = []
    parked: list[dict] = []
    echo = unchanged = 0
    by_key: dict[str, list[Observed]] = {}
    for record in extract.records:
        by_key.setdefault(record.key, []).append(record)
    for key, records in by_key.items():
        # overlapping pages or windows may return one record twice: that is one record
        distinct = {r.hash: r for r in records}
        if not key or len(distinct) > 1:
            reason = (
                "the record has no key"
                if not key
                else f"{len(distinct)} records share the key {key!r}"
            )
            parked += [_unidentified(extract.system, key, r, reason) for r in distinct.values()]
            continue
        record = records[-1]
        member = known.get(record.key)
        if member is not None and member.deleted_at is None and member.seen_hash == record.hash:
            if integration_account and record.modified_by == integration_account:
                echo += 1
            else:
                unchanged += 1
            continue
        changed.append(record)
    return Filtered(
        system=extract.system,
        changed=changed,
        deleted=set(extract.deleted),
        extracted=len(by_key),
        echo_skipped=echo,
        unchanged=unchanged,
        parked=parked,
    )


def _unidentified(system: str, key: str, record: Observed, reason: str) -> dict:
    """A dead letter for a record that no key identifies: nothing is written for it."""
    return {
        "system": system,
        "external_id": key,
        "link_id": None,
        "operation": "read",
        "kind": "failed",
        "error": f"{reason}: it is parked until its key is fixed in {system}",
        "payload": record.values,
    }


filter_echoes_task = task(
    filter_echoes, name="filter out integration-account edits", **TASK_OPTIONS
)
