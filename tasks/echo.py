"""Step: filter out the integration account's own edits (echoes) and unchanged records.

A record counts as unchanged when its values hash equals what we last saw or wrote there,
whoever modified it (a live key that we hold as deleted is a new record: some databases
reuse keys); a record last modified by the integration account whose values differ
from what we wrote is a real change (someone edited between our write and this read).
"""

from __future__ import annotations

from prefect import task

from tasks.common import TASK_OPTIONS, Extract, Filtered
from twoway.state import Member


def filter_echoes(
    extract: Extract, integration_account: str | None, known: dict[str, Member]
) -> Filtered:
    """Split one system's extract into real changes, echoes and unchanged records."""
    changed = []
    echo = unchanged = 0
    seen_keys: set[str] = set()
    for record in extract.records:
        if record.key in seen_keys:  # overlapping pages or windows: one record once
            continue
        seen_keys.add(record.key)
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
        extracted=len(seen_keys),
        echo_skipped=echo,
        unchanged=unchanged,
    )


filter_echoes_task = task(
    filter_echoes, name="filter out integration-account edits", **TASK_OPTIONS
)
