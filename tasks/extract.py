"""Step: extract one system's changes since its cursor, in canonical form, a page at a time:
each page is told apart against the ID map and staged on disk as it arrives (twoway/staging.py),
so a run holds one page of a read, never the whole read."""

from __future__ import annotations

import gc
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace

from prefect import task

from tasks import echo
from tasks.common import TASK_OPTIONS, whole
from tasks.echo import filter_echoes
from tasks.idmap import match_key
from twoway.contract import ChangeSet, Endpoint, RawRecord, read_ahead
from twoway.definition import Definition
from twoway.errors import Fatal
from twoway.records import Observed
from twoway.staging import (
    CHANGED,
    DELETED,
    ECHO,
    LOST,
    PARKED,
    UNCHANGED,
    ReadSummary,
    StagedRead,
    bucket_of,
)
from twoway.state import Intent, Member, SystemIds
from twoway.values import as_utc, canonical, parse_timestamp, values_hash

log = logging.getLogger("twoway")


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
    """A system's read, page by page, into its staging file: each page's records are made
    canonical, told apart (change, echo, unchanged, parked) against the ID map, given the
    bucket of the link they belong to, and staged; a later page replaces what an earlier
    one said of a key (a record edited or deleted while the read paged comes again)."""

    def __init__(
        self,
        definition: Definition,
        system: str,
        ids: SystemIds,
        staged: StagedRead,
        cursor: str | None = None,
        intents: Sequence[Intent] = (),
    ):
        self.definition = definition
        self.system = system
        self.columns = definition.fields_of(system)
        self.account = definition.systems[system].integration_account
        self.ids = ids
        self.staged = staged
        # a cursor that is a time: records stamped at or before it were read by an earlier
        # run, and come again only because of the overlap window
        self.since = parse_timestamp(cursor) if cursor else None
        # a crashed run's creates in this system, by what identifies the records they made
        mine = [i for i in intents if i.system == system]
        self.by_member = {m: i.link_id for i in intents for m in i.members if m[0] == system}
        self.by_hash: dict[str, list[str]] = {}
        for intent in mine:
            self.by_hash.setdefault(intent.values_hash, []).append(intent.link_id)

    def page(self, raw: list[RawRecord], deleted: Iterable[str] = ()) -> None:
        """Fold one page in; its raw records go as their canonical form is made."""
        raw.reverse()
        records = []
        while raw:
            records.append(_canonicalise(self.columns, self.system, raw.pop()))
        overlap: dict[str, int] = {}
        if self.since is not None:
            for r in records:
                overlap[r.key] = int(
                    r.modified_at is not None and as_utc(r.modified_at) <= self.since
                )
        gone = list(deleted)
        members = self.ids.members([r.key for r in records] + gone)
        outcome = filter_echoes(records, self.account, members)
        self.staged.park_unkeyed(outcome.pop("", []))  # type: ignore[arg-type]
        versions = {r.key: r.version for r in records}
        rows: list[tuple] = []
        fresh = {k: r for k, r in outcome.items() if isinstance(r, Observed)}
        routes = self._routes(fresh, members)
        for key, result in outcome.items():
            member = members.get(key)
            linked = member.link_id if member is not None else ""
            if isinstance(result, Observed):
                live = member is not None and member.deleted_at is None
                rows.append(
                    (
                        key,
                        CHANGED,
                        routes[key],
                        overlap.get(key, 0),
                        int(not live),
                        (result, member),
                    )
                )
            elif isinstance(result, list):
                rows.append((key, PARKED, bucket_of(linked), 0, 0, result))
            else:
                moved = member is not None and member.version != versions[key]
                status = ECHO if result == echo.ECHO else UNCHANGED
                refreshed = replace(member, version=versions[key]) if moved else None
                rows.append((key, status, bucket_of(linked), overlap.get(key, 0), 0, refreshed))
        for key in dict.fromkeys(gone):
            if key in outcome:
                continue  # a page's record of a key outweighs its deletion on that page
            member = members.get(key)
            route = bucket_of(member.link_id) if member is not None else 0
            rows.append((key, DELETED, route, 0, 0, member))
        self.staged.put(rows)

    def lost(self, keys: Sequence[str]) -> None:
        """Stage linked keys the system lost (absent from a read that says it may have lost
        records): their links create them there again."""
        members = self.ids.members(keys)
        self.staged.put([(k, LOST, bucket_of(m.link_id), 0, 0, m) for k, m in members.items()])

    def _routes(self, fresh: dict[str, Observed], members: dict[str, Member]) -> dict[str, int]:
        """The bucket of each changed record: its link's, else the link a crashed run's
        intent or its link marker names, else its match key's. A record that ties two links
        together (a key our own create reused, an old row a new record took) merges their
        buckets."""
        out: dict[str, int] = {}
        unlinked: dict[str, str] = {}  # key -> match key
        for key, record in fresh.items():
            member = members.get(key)
            ties = list(self.by_hash.get(record.hash, ()))
            if member is not None and member.deleted_at is None:
                route = member.link_id
                if member.seen_hash is None and self.definition.match_on:
                    # a link a crashed run announced: the store holds no match key for it
                    # yet, so a record another system holds by that key must meet it here
                    match = match_key(self.definition, record.values)
                    if match is not None:
                        self.staged.merge(route, f"m:{match}")
            else:
                if member is not None:
                    ties.append(member.link_id)
                intent = self.by_member.get((self.system, key))
                if intent is not None:
                    route = intent
                elif record.link:
                    route = record.link
                elif ties:
                    route = ties[0]
                else:
                    match = match_key(self.definition, record.values)
                    if match is not None:
                        unlinked[key] = match
                        continue
                    route = f"r:{self.system}:{key}"
            for tie in ties:
                self.staged.merge(route, tie)
            out[key] = bucket_of(route)
        if unlinked:
            store, sync = self.ids.store, self.ids.sync
            existing = store.links_by_match_key(sync, set(unlinked.values()))
            for key, match in unlinked.items():
                links = existing.get(match, [])
                # one link holds the match key: the record joins it; otherwise it waits with
                # the other records that share the key (a new link, or parked as ambiguous)
                out[key] = bucket_of(links[0] if len(links) == 1 else f"m:{match}")
        return out

    def accounts_for(self, endpoint: Endpoint) -> bool:
        """Whether the system holds exactly the keys the ID map holds as live plus the new
        ones this read found: then no record went without a trace and its keys need no
        listing. (A hard delete offset by a new record that the read missed, one stamped
        before the cursor, would hide here; ``--full`` compares every key.)"""
        counts = self.staged.counts()
        if counts.get(DELETED) or counts.get(PARKED) or counts[-1]:
            return False
        total = endpoint.count_keys()
        return total is not None and total == self.ids.live_count() + self.staged.new_changes()


def extract_changes(
    definition: Definition,
    system: str,
    endpoint: Endpoint,
    cursor: str | None,
    ids: SystemIds,
    staged: StagedRead,
    reread: Sequence[str] = (),
    intents: Sequence[Intent] = (),
) -> ReadSummary:
    """Stage the records changed since ``cursor`` (echoes and unchanged ones told apart) and
    the keys deleted since, with their ID-map rows (from ``ids``, the system's part of the
    ID map), in ``staged``; return what the read came to.

    Deletions come from the system's change feed where it has one. Otherwise the keys the
    ID map holds as live are compared with the keys a full read returned or, after an
    incremental read, with the system's key list (hard deletes), unless the system's count
    of keys is just what the ID map and this read account for. ``reread`` are keys to read
    again whatever their cursor (records parked before they were linked); ``intents`` are
    the open intents of crashed runs, whose records must fall in their links' buckets.
    """
    read = _Read(definition, system, ids, staged, cursor, intents)
    requests = 0
    last = ChangeSet(records=[], cursor=cursor)  # a read of no page changes nothing
    pages = endpoint.read_pages(cursor)
    for page in read_ahead(pages) if endpoint.reads_ahead() else pages:
        read.page(page.records, page.deleted)
        page.records = []
        requests += page.requests
        last = page
        # the run pauses the cyclic collector, but an HTTP answer is a cycle (httpx binds
        # its stream to it) holding the page's body: a young pass frees each page's now,
        # where a read of a million records would otherwise hold every page until its end.
        # The pass takes the two young generations: the next page's answer, on its way on
        # the read-ahead thread during one pass, survives it into the second and goes at
        # the next pass, not at the end of the run
        gc.collect(1)
    wanted = list(dict.fromkeys(reread))
    again = [k for k in wanted if k not in staged.has(wanted)]
    if again:
        read.page(endpoint.read(again))
    # the keys the system holds: a full read's own, else its key list when the count is off
    whole = last.full or last.absent_lost
    listed = None if whole or read.accounts_for(endpoint) else endpoint.list_keys()
    if whole or listed is not None:
        live = ids.live_keys()
        present = staged.present_of(live) if whole else listed
        missing = [k for k in live if k not in present]  # type: ignore[operator]
        if missing and last.absent_lost:
            log.warning(
                "%s may have lost records: linked records missing from it, created there again: %d",
                system,
                len(missing),
            )
            read.lost(missing)
        elif missing:
            read.page([], missing)
    counts = staged.counts()
    overlap = staged.overlap_counts()
    return ReadSummary(
        system=system,
        path=staged.path,
        cursor=last.cursor,
        full=last.full,
        requests=requests,
        extracted=sum(n for s, n in counts.items() if s != DELETED),
        changed=counts.get(CHANGED, 0),
        echo_skipped=counts.get(ECHO, 0) - overlap.get(ECHO, 0),
        unchanged=counts.get(UNCHANGED, 0) - overlap.get(UNCHANGED, 0),
        reread=overlap.get(ECHO, 0) + overlap.get(UNCHANGED, 0),
        parked=counts.get(PARKED, 0) + counts[-1],
        merges=list(staged.merges),
    )


def extract_apart(
    definition: Definition,
    system: str,
    cursor: str | None,
    staged_path: str,
    reread: Sequence[str] = (),
    intents: Sequence[Intent] = (),
) -> ReadSummary:
    """:func:`extract_changes` in a process of its own, with its own connections to the
    system and the state store, staging into the file ``staged_path``: a full read is
    CPU-bound (canonical values, hashes), so the reads of several systems run at once only
    on several cores.

    The process is a fresh ``python -m tasks.extract`` (not a multiprocessing child, which
    would import the caller's main script again); the job and its outcome, a summary or the
    error it raised, cross its standard input and output pickled."""
    job = pickle.dumps((definition, system, cursor, staged_path, list(reread), list(intents)))
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

    definition, system, cursor, path, reread, intents = pickle.loads(sys.stdin.buffer.read())
    gc.disable()  # as the run does: many live objects, no cycles worth a pass
    store = StateStore(definition.state or "")
    staged = StagedRead(path)
    try:
        with open_endpoint(definition, system) as endpoint:
            ids = store.system_ids(definition.name, system)
            outcome: object = extract_changes(
                definition, system, endpoint, cursor, ids, staged, reread, intents
            )
    except Exception as exc:  # handed to the caller, which raises it in the run
        outcome = exc
    finally:
        staged.close()
        store.close()
    sys.stdout.buffer.write(pickle.dumps(outcome))


extract_changes_task = task(whole(extract_changes), name="extract changed records", **TASK_OPTIONS)
extract_apart_task = task(whole(extract_apart), name="extract changed records", **TASK_OPTIONS)


if __name__ == "__main__":
    _extract_alone()
