"""Step: extract one system's changes since its cursor, in canonical form, a page at a time:
each page's echoes and unchanged records are dropped as the page arrives, so a run holds a
read's changes and one page, never the whole read."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace

from prefect import task

from tasks.common import TASK_OPTIONS, Filtered, Observed
from tasks.echo import ECHO, UNCHANGED, Outcome, filter_echoes
from twoway.contract import ChangeSet, Endpoint, RawRecord, later_page_wins, read_ahead
from twoway.definition import Definition
from twoway.errors import Fatal
from twoway.state import Member, SystemIds
from twoway.values import as_utc, canonical, parse_timestamp, values_hash


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
        link=record.link,
    )


class _Read:
    """What a read has said so far, key by key: a later page replaces what an earlier one
    said of a key (a record edited or deleted while the read paged comes again)."""

    def __init__(
        self, definition: Definition, system: str, ids: SystemIds, cursor: str | None = None
    ):
        self.system = system
        self.columns = definition.fields_of(system)
        self.account = definition.systems[system].integration_account
        self.ids = ids
        self.outcome: dict[str, Outcome] = {}
        self.unkeyed: list[dict] = []  # records with no key: each page's stay parked
        self.deleted: dict[str, None] = {}
        self.members: dict[str, Member] = {}  # of the keys changed or deleted so far
        self.refreshed: dict[str, Member] = {}  # skipped records whose version moved
        # a cursor that is a time: records stamped at or before it were read by an earlier
        # run, and come again only because of the overlap window
        self.since = parse_timestamp(cursor) if cursor else None
        self.overlap: set[str] = set()  # keys whose last record is such a re-read

    def page(self, raw: list[RawRecord], deleted: Iterable[str] = ()) -> None:
        """Fold one page in; its raw records go as their canonical form is made."""
        raw.reverse()
        records = []
        while raw:
            records.append(_canonicalise(self.columns, self.system, raw.pop()))
        if self.since is not None:
            for r in records:
                if r.modified_at is not None and as_utc(r.modified_at) <= self.since:
                    self.overlap.add(r.key)
                else:
                    self.overlap.discard(r.key)
        gone = list(deleted)
        members = self.ids.members([r.key for r in records] + gone)
        outcome = filter_echoes(records, self.account, members)
        self.unkeyed += outcome.pop("", [])  # type: ignore[arg-type]
        later_page_wins(self.outcome, self.deleted, outcome, gone)
        for key in gone:
            if key in members:
                self.members[key] = members[key]
        versions = {r.key: r.version for r in records}
        for key in gone:
            self.refreshed.pop(key, None)
        for key, result in outcome.items():
            self.refreshed.pop(key, None)
            if isinstance(result, Observed) and key in members:
                self.members[key] = members[key]
            else:
                self.members.pop(key, None)
                member = members.get(key)
                if (
                    result in (ECHO, UNCHANGED)
                    and member is not None
                    and member.version != versions[key]
                ):
                    self.refreshed[key] = replace(member, version=versions[key])

    def accounts_for(self, endpoint: Endpoint) -> bool:
        """Whether the system holds exactly the keys the ID map holds as live plus the new
        ones this read found: then no record went without a trace and its keys need no
        listing. (A hard delete offset by a new record that the read missed, one stamped
        before the cursor, would hide here; ``--full`` compares every key.)"""
        if self.deleted or self.unkeyed:
            return False
        new = 0
        for key, result in self.outcome.items():
            if isinstance(result, list):
                return False  # parked records: their keys may count once or twice
            if isinstance(result, Observed):
                member = self.members.get(key)
                new += member is None or member.deleted_at is not None
        total = endpoint.count_keys()
        return total is not None and total == self.ids.live_count() + new


def extract_changes(
    definition: Definition,
    system: str,
    endpoint: Endpoint,
    cursor: str | None,
    ids: SystemIds,
    reread: Sequence[str] = (),
) -> Filtered:
    """The records changed since ``cursor`` (echoes and unchanged ones dropped) and the
    keys deleted since, with their ID-map rows (from ``ids``, the system's part of the ID map).

    Deletions come from the system's change feed where it has one. Otherwise the keys the
    ID map holds as live are compared with the keys a full read returned or, after an
    incremental read, with the system's key list (hard deletes), unless the system's count
    of keys is just what the ID map and this read account for. ``reread`` are keys to read
    again whatever their cursor (records parked before they were linked).
    """
    read = _Read(definition, system, ids, cursor)
    reported: set[str] = set()
    requests = 0
    last = ChangeSet(records=[], cursor=cursor)  # a read of no page changes nothing
    pages = endpoint.read_pages(cursor)
    for page in read_ahead(pages) if endpoint.reads_ahead() else pages:
        read.page(page.records, page.deleted)
        page.records = []
        reported.update(page.deleted)
        requests += page.requests
        last = page
    again = [k for k in dict.fromkeys(reread) if k not in read.outcome]
    if again:
        read.page(endpoint.read(again))
    deleted = set(read.deleted)
    # the keys the system holds: a full read's own, else its key list when the count is off
    listed = None if last.full or read.accounts_for(endpoint) else endpoint.list_keys()
    if last.full or listed is not None:
        live = ids.live_keys()
        deleted |= live - (read.outcome.keys() if last.full else listed)  # type: ignore[operator]
        deleted &= live | reported
    hard = [k for k in deleted if k not in read.members]
    if hard:
        read.members.update(ids.members(hard))
    changed: list[Observed] = []
    parked = list(read.unkeyed)
    echo = unchanged = overlap = 0
    for key, result in read.outcome.items():
        if isinstance(result, Observed):
            changed.append(result)
        elif isinstance(result, list):
            parked += result
        elif key in read.overlap:
            overlap += 1
        elif result == ECHO:
            echo += 1
        elif result == UNCHANGED:
            unchanged += 1
    wanted = {r.key for r in changed} | deleted
    return Filtered(
        system=system,
        changed=changed,
        deleted=deleted,
        cursor=last.cursor,
        full=last.full,
        requests=requests,
        extracted=len(read.outcome) + len(read.unkeyed),
        echo_skipped=echo,
        unchanged=unchanged,
        reread=overlap,
        parked=parked,
        members={k: m for k, m in read.members.items() if k in wanted},
        refreshed={k: m for k, m in read.refreshed.items() if k not in deleted},
    )


def extract_apart(
    definition: Definition, system: str, cursor: str | None, reread: Sequence[str] = ()
) -> Filtered:
    """:func:`extract_changes` in a process of its own, with its own connections to the
    system and the state store: a full read is CPU-bound (canonical values, hashes), so
    the reads of several systems run at once only on several cores.

    The process is a fresh ``python -m tasks.extract`` (not a multiprocessing child, which
    would import the caller's main script again); the job and its outcome, a result or the
    error it raised, cross its standard input and output pickled."""
    job = pickle.dumps((definition, system, cursor, list(reread)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, "-m", "tasks.extract"], input=job, capture_output=True, env=env
    )
    if done.returncode != 0 or not done.stdout:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise Fatal(f"reading {system} in a process of its own failed: {detail[0]}")
    outcome = pickle.loads(done.stdout)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _extract_alone() -> None:
    """The process :func:`extract_apart` starts: one job from stdin, its outcome to stdout."""
    from twoway.connectors import open_endpoint
    from twoway.state import StateStore

    definition, system, cursor, reread = pickle.loads(sys.stdin.buffer.read())
    gc.disable()  # as the run does: millions of live objects, no cycles worth a pass
    store = StateStore(definition.state or "")
    try:
        with open_endpoint(definition, system) as endpoint:
            ids = store.system_ids(definition.name, system)
            outcome: object = extract_changes(definition, system, endpoint, cursor, ids, reread)
    except Exception as exc:  # handed to the caller, which raises it in the run
        outcome = exc
    finally:
        store.close()
    sys.stdout.buffer.write(pickle.dumps(outcome))


extract_changes_task = task(extract_changes, name="extract changed records", **TASK_OPTIONS)
extract_apart_task = task(extract_apart, name="extract changed records", **TASK_OPTIONS)


if __name__ == "__main__":
    _extract_alone()
