"""Filter out the integration account's own edits (echoes) and unchanged records.

A record counts as unchanged when its values hash equals what we last saw or wrote there,
whoever modified it (a live key that we hold as deleted is a new record: some databases
reuse keys); a record last modified by the integration account whose values differ
from what we wrote is a real change (someone edited between our write and this read).

The extract step applies this to each page of a read as it arrives, so that a run keeps a
read's changes and not the whole read.
"""

from __future__ import annotations

from typing import Any

from twoway.records import Observed
from twoway.state import Member

ECHO = "echo"
UNCHANGED = "unchanged"

Outcome = Observed | list[dict[str, Any]] | str
"""What a key's records come to: a change (the record), parked (its dead letters), or
:data:`ECHO` / :data:`UNCHANGED`."""


def filter_echoes(
    records: list[Observed], integration_account: str | None, known: dict[str, Member]
) -> dict[str, Outcome]:
    """One page's records by key: real changes, parked records, echoes and unchanged ones.

    Records of the page that share a key are one record when their values are equal (an
    overlapping read) and otherwise ambiguous: both are parked. Records with no key are
    parked under the key ``""``.
    """
    by_key: dict[str, list[Observed]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record)
    out: dict[str, Outcome] = {}
    for key, same in by_key.items():
        distinct = {r.hash: r for r in same}
        if not key or len(distinct) > 1:
            reason = (
                "the record has no key"
                if not key
                else f"{len(distinct)} records share the key {key!r}"
            )
            out[key] = [_unidentified(r.system, key, r, reason) for r in distinct.values()]
            continue
        record = same[-1]
        member = known.get(key)
        if member is not None and member.deleted_at is None and member.seen_hash == record.hash:
            echo = integration_account and record.modified_by == integration_account
            out[key] = ECHO if echo else UNCHANGED
            continue
        out[key] = record
    return out


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
