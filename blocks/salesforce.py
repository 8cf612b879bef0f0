"""The Salesforce-object endpoint block: one sObject of an org through the REST API.

Reads run SOQL ordered by ``(SystemModstamp, Id)`` from the cursor minus an overlap window,
paging with ``nextRecordsUrl``; deletions come from ``/sobjects/X/deleted/``. One DML call
stamps all its records with one SystemModstamp, so many records share a stamp: the query
takes ``>=`` the cursor, and the cursor is never past a record not yet read (the server's
clock when the read began, held under getDeleted's ``latestDateCovered``), so records
tied at a page or cursor boundary are read again rather than missed.

A record's version is its SystemModstamp (the stamp the cursor follows); when it was last
*edited* is its LastModifiedDate (``edited_at``). The two part when a system process
touches a record without editing it (a roll-up summary recalculated, an automated
process): SystemModstamp moves, LastModifiedDate and LastModifiedById stay. Such a record
is read again once (its values unchanged, the run writes nothing for it); conflicts
compare LastModifiedDate, so a bump never makes an old edit look new, and the version
check below takes only an edit for a change.

Writes use sObject Collections (at most 200 records a call) and check every item's
result, since a 200 answer can hold failed items. A create with ``external_id_field`` set
is an upsert keyed by the link id, so a retried create never duplicates. Updates and
deletes that carry a version are checked first: the block reads the batch's stamps (one
collection retrieve) and refuses, as PreconditionFailed, the records edited since they
were read (LastModifiedDate past the version read). sObject Collections take no
per-record precondition, so an edit landing between that check and a collections write
would be overwritten. With ``guarded_updates`` (the default) the updates that carry a
version are sent instead as sObject Rows PATCHes with ``If-Unmodified-Since``, 25 to a
composite call: the org refuses, with 412, a record edited after the version read, and
the run defers it. The cost: one API call per 25 such updates instead of one per 200
(creates, unversioned updates and deletes stay in collections); an org short of API calls
can turn it off and keep the check-then-write window (docs/operations.md, "Salesforce").
What the header cannot see: it has whole seconds, so an edit made after the check and in
the same second as the version read still goes unseen; deletes take no condition at all.

The write answers carry ids only, so the new SystemModstamps (the versions the next read
will show) are read back once per ``write()`` call: a collection retrieve sent by POST,
the ids in the body, up to 2,000 records a call.

The integration account is the integration user's 18-character User Id. Left empty, it is
taken from the OAuth token response's ``id`` URL (``.../id/<orgId>/<userId>``); an admin
finds it on the user's detail page URL or with ``SELECT Id FROM User WHERE Username = '...'``.
The client secret and access token never appear in a message or log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, PrivateAttr

from blocks.credentials import IntegrationAccountCredentials
from blocks.http import (
    OUTCOME_UNKNOWN,
    Authenticator,
    ClientCredentials,
    HttpEndpointBlock,
    Reply,
    cursor_text,
    error_of,
    overlap_start,
    reason,
)
from twoway import sfid
from twoway.contract import (
    ChangeSet,
    Create,
    Delete,
    Op,
    RawRecord,
    Update,
    WriteResult,
    chunks,
)
from twoway.definition import SalesforceSystem
from twoway.errors import Fatal, PreconditionFailed, Retriable, Skippable
from twoway.values import canonical, parse_timestamp

logger = logging.getLogger("twoway.salesforce")

COLLECTION_LIMIT = 200  # records per sObject Collections write
COMPOSITE_LIMIT = 25  # subrequests per composite call (guarded sObject Rows PATCHes)
READ_CHUNK = 200  # ids per collection GET (keeps the URL short)
RETRIEVE_LIMIT = 2000  # ids per collection retrieve sent by POST (ids in the body)
SOQL_STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
#: row errors that say "already gone" (a delete's goal holds)
GONE_CODES = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND"})


class SalesforceObject(HttpEndpointBlock):
    """An sObject (Contact, Account, Invoice__c, ...) of a Salesforce org kept in step by twoway.

    Example:
        ```python
        from blocks.salesforce import SalesforceObject
        contacts = SalesforceObject.load("crm-contacts")
        ```
    """

    _block_type_name = "twoway Salesforce Object"
    _block_type_slug = "twoway-salesforce-object"
    _description = "An sObject of a Salesforce org that twoway keeps in step through the REST API."

    instance_url: str | None = Field(
        None, description="The org's URL, e.g. https://acme.my.salesforce.com"
    )
    token_url: str | None = Field(
        None, description="OAuth2 token endpoint; default {instance_url}/services/oauth2/token"
    )
    api_version: str = Field("v60.0", description="REST API version, e.g. v60.0")
    object: str = Field("Contact", description="sObject API name")
    external_id_field: str | None = Field(
        None, description="External-ID field holding twoway's link id; creates become upserts"
    )
    key: str = Field("Id", description="Field holding the record's id")
    modified_at: str = Field("SystemModstamp", description="Field holding the last change time")
    edited_at: str | None = Field(
        "LastModifiedDate",
        description="Field holding when the record was last edited (not moved by system-only "
        "changes); conflicts and version checks compare it. Empty: modified_at",
    )
    modified_by: str = Field(
        "LastModifiedById", description="Field holding the last modifier's User Id"
    )
    integration_account: str | None = Field(
        None, description="User Id twoway writes as; empty: taken from the OAuth token response"
    )
    columns_to_sync: list[str] = Field(default_factory=list, description="Fields to read and write")
    page_size: int = Field(2000, ge=1, le=2000, description="Records per query page (batchSize)")
    retry_attempts: int = Field(5, ge=1, le=50, description="Tries per request, the first included")
    overlap_seconds: float = Field(300.0, ge=0, description="Look-back window of incremental reads")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one HTTP response")
    credentials: IntegrationAccountCredentials | None = Field(
        None, description="Connected app's client id and secret (client credentials flow)"
    )
    batch_size: int = Field(1000, ge=1, description="Most operations one write() call should carry")
    guarded_updates: bool = Field(
        True,
        description="Send updates that carry a version as sObject Rows PATCHes with "
        "If-Unmodified-Since (25 a call) so an edit made meanwhile is refused, not "
        "overwritten; off: sObject Collections (200 a call), checked just before",
    )
    writes_in_flight: int = Field(
        2, ge=1, le=8, description="write() calls sent at once; 1 sends them one after another"
    )
    retry_deadline_seconds: float = Field(
        900.0, gt=0, description="Most seconds a run waits between retries on this system"
    )

    #: a locked row is worth another try; a spent API allocation (REQUEST_LIMIT_EXCEEDED
    #: with no Retry-After) stops the run at once: each retry would spend more of it
    _codes = {"UNABLE_TO_LOCK_ROW": Retriable, "REQUEST_LIMIT_EXCEEDED": Fatal}

    _base: str | None = PrivateAttr(None)  # the instance URL the token answer names
    _server_now: datetime | None = PrivateAttr(None)  # the org's clock at the last replication call
    _fresh_when_pickled = {**HttpEndpointBlock._fresh_when_pickled, "_base": None}

    @classmethod
    def _own_settings(cls, system: SalesforceSystem) -> dict[str, Any]:
        """Which org and sObject, from a ``kind: salesforce`` system, and its upsert field."""
        return {
            "instance_url": system.instance_url,
            "token_url": system.token_url,
            "api_version": system.api_version,
            "object": system.object,
            "external_id_field": system.external_id_field,
        }

    # -- plumbing ---------------------------------------------------------------------

    def max_batch(self) -> int:
        return self.batch_size

    def max_writes_in_flight(self) -> int:
        return self.writes_in_flight

    def _timeout(self) -> float:
        return self.timeout

    def _authenticator(self) -> Authenticator:
        """The connected app's client credentials, at the org's token endpoint."""
        if not self.instance_url and not self.token_url:
            raise Fatal("no instance_url configured for the Salesforce object")
        creds = self.credentials
        if creds is None or not creds.client_id or creds.client_secret is None:
            raise Fatal("the Salesforce object needs credentials with client_id and client_secret")
        url = self.token_url or f"{(self.instance_url or '').rstrip('/')}/services/oauth2/token"
        return ClientCredentials(url, creds.client_id, creds.client_secret, on_grant=self._granted)

    def _granted(self, body: dict[str, Any]) -> None:
        """Take the instance URL to call, and the integration user, from a token answer."""
        base = str(body.get("instance_url") or self.instance_url or "").rstrip("/")
        if not base:
            raise Fatal("the token response has no instance_url")
        self._base = base
        identity = str(body.get("id") or "")
        if self.integration_account is None and identity:
            user_id = identity.rstrip("/").rsplit("/", 1)[-1]
            if sfid.is_valid(user_id, strict=False):
                self.integration_account = sfid.to18(user_id)
        elif self.integration_account and sfid.is_valid(self.integration_account, strict=False):
            self.integration_account = sfid.to18(self.integration_account)

    def _note(self, reply: Reply) -> str:
        """The org's API use, from the Sforce-Limit-Info header every answer carries."""
        usage = reply.headers.get("sforce-limit-info")
        return f" (the org's API requests: {usage})" if usage else ""

    def _version(self) -> str:
        version = self.api_version.strip()
        return version if version.startswith("v") else f"v{version}"

    def _data_path(self, path: str) -> str:
        return f"/services/data/{self._version()}{path}"

    def _request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> Reply:
        """One API call on the org's instance, under the endpoint's retries and token
        renewal (see HttpClient.send); the instance is named by the first token answer."""
        http = self.http()
        if self._base is None:
            http.auth.authorization(http)
        return http.send(method, f"{self._base}{path}", ok=ok, **kwargs)

    # -- reading ------------------------------------------------------------------------

    def _fields(self) -> list[str]:
        names = [self.key, *self.columns_to_sync, self.modified_at, self.modified_by]
        if self.edited_at:
            names.append(self.edited_at)
        if self.external_id_field:  # the link marker of the records twoway created
            names.append(self.external_id_field)
        return list(dict.fromkeys(names))

    def _record(self, item: dict[str, Any]) -> RawRecord:
        key = item.get(self.key)
        if not isinstance(key, str):
            raise Fatal(f"a {self.object} record has no {self.key!r}")
        values = {c: item.get(c) for c in self.columns_to_sync}
        stamp = item.get(self.modified_at)
        edited = item.get(self.edited_at) if self.edited_at else None
        by = item.get(self.modified_by)
        return RawRecord(
            # an id that is not a Salesforce id identifies nothing: the run parks that record
            key=sfid.to18(key) if sfid.is_valid(key, strict=False) else "",
            values=values,
            modified_at=parse_timestamp(edited if edited is not None else stamp),
            modified_by=sfid.to18(by)
            if isinstance(by, str) and sfid.is_valid(by, strict=False)
            else by,
            version=str(stamp) if stamp is not None else None,
            link=item.get(self.external_id_field) if self.external_id_field else None,
        )

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        """Records changed since ``cursor`` minus the overlap (all when None), a query page at
        a time; the last page carries the deletions, asked for first.

        The new cursor is the server's time when the read began (its Date header), never past
        the ``latestDateCovered`` asked for before the query (getDeleted's, or on a full read
        getUpdated's): a change committed while the read pages has a later SystemModstamp and
        is read next time, and one in a transaction still open keeps the cursor below its
        stamp. When getDeleted no longer reaches back to the cursor (its 15 days, or a purged
        Recycle Bin), the read is a full one: the run finds the deletions by comparing the
        keys read with its ID map."""
        since, start = overlap_start(cursor, self.overlap_seconds)
        deleted: list[str] = []
        covered: datetime | None = None
        if start is not None:
            window = self._deleted_since(start)
            if window is None:
                logger.warning(
                    "getDeleted of %s no longer reaches back to %s; reading every record "
                    "instead, deletions found against the ID map",
                    self.object,
                    cursor_text(start),
                )
                since = start = None
            else:
                deleted, covered = window
        if start is None:
            covered = self._covered_now()
        soql = f"SELECT {', '.join(self._fields())} FROM {self.object}"
        if start is not None:
            soql += (
                f" WHERE {self.modified_at} >= {start.astimezone(UTC).strftime(SOQL_STAMP)[:-4]}Z"
            )
        soql += f" ORDER BY {self.modified_at}, {self.key}"
        headers = {"Sforce-Query-Options": f"batchSize={self.page_size}"}
        http = self.http()
        counted = http.requests
        reply = self._request("GET", self._data_path("/query"), params={"q": soql}, headers=headers)
        body = reply.body
        signpost = _server_time(reply.headers)
        logger.info(
            "reading %s; the org's API requests: %s",
            self.object,
            reply.headers.get("sforce-limit-info", "not reported"),
        )
        read: set[str] = set()  # keys read live, when deletions are asked for after the pages
        newest: datetime | None = None
        seen_urls: set[str] = set()
        while True:
            if not isinstance(body, dict) or not isinstance(body.get("records"), list):
                raise Fatal(f"GET query on {self.object}: the answer has no records list")
            latest: dict[str, RawRecord] = {}
            for item in body["records"]:
                record = self._record(item)
                latest.pop(record.key, None)
                latest[record.key] = record
                stamped = parse_timestamp(record.version)  # SystemModstamp, as the cursor
                if stamped is not None and (newest is None or stamped > newest):
                    newest = stamped
            if since is not None:
                read.update(latest)
            next_url = body.get("nextRecordsUrl")
            last = body.get("done", True) or not next_url
            page = ChangeSet(records=list(latest.values()), cursor=cursor, full=since is None)
            if not last:
                page.requests, counted = http.requests - counted, http.requests
                yield page
                if next_url in seen_urls:
                    raise Fatal(f"GET query on {self.object}: the server repeated page {next_url}")
                seen_urls.add(next_url)
                body = self._request("GET", str(next_url), headers=headers).body
                continue
            if start is not None:
                page.deleted = [k for k in dict.fromkeys(deleted) if k not in read]
            marks = [m for m in (signpost, covered) if m is not None]
            mark = min(marks) if marks else newest or since
            page.cursor = cursor_text(mark) if mark else cursor
            page.requests = http.requests - counted
            yield page
            return

    def _deleted_since(self, start: datetime) -> tuple[list[str], datetime | None] | None:
        """Ids deleted since ``start`` and the ``latestDateCovered``; None when getDeleted
        no longer reaches back that far (INVALID_REPLICATION_DATE). The window ends a minute
        past our clock (and ``start``): the server caps it at its own clock. When the org's
        clock (its Date header) is past that end and the window was covered to it, the rest
        up to the org's clock is asked for too."""
        end = max(datetime.now(UTC), start) + timedelta(seconds=60)
        keys: list[str] = []
        while True:
            window = self._deleted_between(start, end)
            if window is None:
                return None
            keys += window[0]
            covered, server = window[1], self._server_now
            # our clock behind the org's: the window ended before the org's clock did, so
            # ask for the rest rather than hold the cursor there (and deletions with it)
            sent_end = end.replace(microsecond=0)
            if covered is None or server is None or covered < sent_end or server <= sent_end:
                return keys, covered
            start, end = sent_end, server + timedelta(seconds=60)

    def _covered_now(self) -> datetime | None:
        """getUpdated's ``latestDateCovered`` over the last minute: the org's clock, held
        below the stamp of any transaction still open (whose record a query cannot see yet,
        stamped before it commits). A window our clock places outside the org's 30 days is
        asked for again by the org's clock (its Date header)."""
        path = self._data_path(f"/sobjects/{self.object}/updated/")
        now = self._server_now or datetime.now(UTC)
        for by_the_orgs_clock in (False, True):
            params = _window(now - timedelta(seconds=60), now + timedelta(seconds=60))
            reply = self._request("GET", path, ok=(200, 400), params=params)
            server = self._server_now = _server_time(reply.headers)
            body = reply.body
            if reply.status == 200:
                if not isinstance(body, dict) or "latestDateCovered" not in body:
                    raise Fatal(f"GET updated {self.object}: the answer has no latestDateCovered")
                return parse_timestamp(body["latestDateCovered"])
            code, _ = error_of(body)
            if code != "INVALID_REPLICATION_DATE" or server is None or by_the_orgs_clock:
                break
            now = server
        raise Fatal(f"GET {path}: answered 400{reason(body)}", status=400)

    def _deleted_between(
        self, start: datetime, end: datetime
    ) -> tuple[list[str], datetime | None] | None:
        """getDeleted over ``[start, end]``; a window holding more ids than the server
        answers for (EXCEEDED_ID_LIMIT) is asked for again in halves."""
        path = self._data_path(f"/sobjects/{self.object}/deleted/")
        reply = self._request("GET", path, ok=(200, 400), params=_window(start, end))
        self._server_now = _server_time(reply.headers)
        body = reply.body
        if reply.status == 400:
            code, _ = error_of(body)
            if code == "INVALID_REPLICATION_DATE":
                return None
            if code == "EXCEEDED_ID_LIMIT" and end - start > timedelta(minutes=1):
                middle = start + (end - start) / 2
                first = self._deleted_between(start, middle)
                second = self._deleted_between(middle, end)
                if first is None or second is None:
                    return None
                return first[0] + second[0], second[1]
            raise Fatal(f"GET {path}: answered 400{reason(body)}", status=400)
        if not isinstance(body, dict) or not isinstance(body.get("deletedRecords"), list):
            raise Fatal(f"GET deleted {self.object}: the answer has no deletedRecords list")
        keys = [
            sfid.to18(d["id"])
            for d in body["deletedRecords"]
            if isinstance(d, dict) and d.get("id")
        ]
        return keys, parse_timestamp(body.get("latestDateCovered"))

    def _get_many(
        self, keys: Sequence[str], fields: list[str], *, post: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Live records by 18-character id, read with collection retrieves (missing ones
        left out): GETs of 200 ids, or with ``post`` POSTs of up to 2,000 ids in the body,
        which the write path uses to read back versions in as few calls as it can."""
        found: dict[str, dict[str, Any]] = {}
        path = self._data_path(f"/composite/sobjects/{self.object}")
        for part in chunks(list(keys), RETRIEVE_LIMIT if post else READ_CHUNK):
            if post:
                body = self._request("POST", path, json={"ids": part, "fields": fields}).body
            else:
                params = {"ids": ",".join(part), "fields": ",".join(fields)}
                body = self._request("GET", path, params=params).body
            if not isinstance(body, list):
                raise Fatal(f"retrieving records of {self.object}: the answer is not a list")
            for item in body:
                if isinstance(item, dict) and isinstance(item.get(self.key), str):
                    found[sfid.to18(item[self.key])] = item
        return found

    def read(self, keys: Sequence[str]) -> list[RawRecord]:
        wanted = list(dict.fromkeys(sfid.to18(k) for k in keys if sfid.is_valid(k, strict=False)))
        found = self._get_many(wanted, self._fields())
        return [self._record(found[k]) for k in wanted if k in found]

    def list_keys(self) -> set[str] | None:
        """None: deletions come from getDeleted, so the keys need no listing."""
        return None

    def columns(self) -> set[str]:
        body = self._request("GET", self._data_path(f"/sobjects/{self.object}/describe")).body
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, list):
            raise Fatal(f"GET describe {self.object}: the answer has no fields list")
        return {f["name"] for f in fields if isinstance(f, dict) and isinstance(f.get("name"), str)}

    # -- writing ------------------------------------------------------------------------

    def write(self, ops: Sequence[Op]) -> list[WriteResult]:
        """Apply ``ops`` in collections of 200. Raises only while nothing may have been
        applied; after that, a failing call becomes the error of every operation left."""
        results: dict[int, WriteResult] = {}
        sent: list[bool] = []  # one entry per collection call that may have been applied
        try:
            for part_start in range(0, len(ops), COLLECTION_LIMIT):
                part = list(
                    enumerate(ops[part_start : part_start + COLLECTION_LIMIT], start=part_start)
                )
                self._write_part(part, results, sent)
        except (Retriable, Fatal) as exc:
            if not sent:
                raise
            logger.warning("a write to %s failed part-way: %s", self.object, exc)
            for index, op in enumerate(ops):
                if index not in results:
                    key = None if isinstance(op, Create) else op.key
                    results[index] = WriteResult(op=op, key=key, error=exc)
        self._add_versions(results)
        return [results[i] for i in range(len(ops))]

    def _add_versions(self, results: dict[int, WriteResult]) -> None:
        """Fill in the SystemModstamp of written records (one collection retrieve per 2,000
        ids); when that read fails the writes stand and the versions stay unknown."""
        written = [
            r.key for r in results.values() if r.ok and r.key and not isinstance(r.op, Delete)
        ]
        if not written:
            return
        try:
            stamps = self._get_many(
                list(dict.fromkeys(written)), [self.key, self.modified_at], post=True
            )
        except (Retriable, Fatal) as exc:
            logger.warning("could not read the new versions of %s records: %s", self.object, exc)
            return
        for index, result in results.items():
            if result.ok and result.key in stamps and not isinstance(result.op, Delete):
                version = stamps[result.key].get(self.modified_at)
                results[index] = WriteResult(
                    op=result.op, key=result.key, version=str(version) if version else None
                )

    def _write_part(
        self, part: list[tuple[int, Op]], results: dict[int, WriteResult], sent: list[bool]
    ) -> None:
        """Check versions, then create, update and delete; outcomes go into ``results``."""
        checked = [
            (i, op) for i, op in part if not isinstance(op, Create) and op.version is not None
        ]
        keyed: dict[int, str] = {}
        for i, op in part:
            if isinstance(op, Create):
                continue
            if not sfid.is_valid(op.key, strict=False):
                error = (
                    None
                    if isinstance(op, Delete)
                    else Skippable(f"{op.key!r} is not a Salesforce id")
                )
                results[i] = WriteResult(op=op, key=op.key, error=error)
                continue
            keyed[i] = sfid.to18(op.key)
        if checked:
            current = self._get_many(
                [keyed[i] for i, _ in checked if i in keyed],
                self._stamp_fields(),
                post=True,
            )
            for i, op in checked:
                if i not in keyed:
                    continue
                record = current.get(keyed[i])
                if record is None:
                    error = (
                        None
                        if isinstance(op, Delete)
                        else Skippable(
                            f"{self.object} {keyed[i]} does not exist (deleted since it was read)"
                        )
                    )
                    results[i] = WriteResult(op=op, key=keyed[i], error=error)
                elif self._edited_since(record, op.version):
                    results[i] = WriteResult(
                        op=op,
                        key=keyed[i],
                        error=PreconditionFailed(
                            f"{self.object} {keyed[i]} changed since it was read", status=412
                        ),
                    )
        todo = [(i, op) for i, op in part if i not in results]
        keyed = {i: k for i, k in keyed.items() if i not in results}
        creates = [(i, op) for i, op in todo if isinstance(op, Create)]
        updates = [(i, op) for i, op in todo if isinstance(op, Update)]
        guarded = [
            (i, op)
            for i, op in updates
            if self.guarded_updates and parse_timestamp(op.version) is not None
        ]
        taken = {i for i, _ in guarded}
        updates = [(i, op) for i, op in updates if i not in taken]
        deletes = [(i, op) for i, op in todo if isinstance(op, Delete)]
        for group, build in (
            (creates, self._create_call),
            (updates, self._update_call),
            (deletes, self._delete_call),
        ):
            if group:
                self._send_items(group, build, keyed, results, sent)
        for start in range(0, len(guarded), COMPOSITE_LIMIT):
            self._send_items(
                guarded[start : start + COMPOSITE_LIMIT],
                self._guarded_call,
                keyed,
                results,
                sent,
                unpack=_composite_answers,
                judge=self._sub_result,
            )

    def _stamp_fields(self) -> list[str]:
        """The fields a version check reads: the id, the version and the edit time."""
        return list(dict.fromkeys(f for f in (self.key, self.modified_at, self.edited_at) if f))

    def _edited_since(self, record: dict[str, Any], version: str | None) -> bool:
        """Whether ``record`` (as read now) was edited after ``version`` was read: its
        LastModifiedDate is past that version (a system-only bump moves SystemModstamp
        alone, and is no edit); without ``edited_at``, whether SystemModstamp moved."""
        read = parse_timestamp(version)
        edited = parse_timestamp(record.get(self.edited_at)) if self.edited_at else None
        if edited is not None and read is not None:
            return edited > read
        return parse_timestamp(record.get(self.modified_at)) != read

    def _create_call(
        self, items: list[tuple[int, Op]], keyed: dict[int, str]
    ) -> tuple[str, str, dict[str, str] | None, Any]:
        records = []
        for _, op in items:
            record = {"attributes": {"type": self.object}, **canonical(op.values)}  # type: ignore[union-attr]
            if self.external_id_field:
                record[self.external_id_field] = op.ref  # type: ignore[union-attr]
            records.append(record)
        body = {"allOrNone": False, "records": records}
        if self.external_id_field:
            path = self._data_path(
                f"/composite/sobjects/{self.object}/{quote(self.external_id_field)}"
            )
            return "PATCH", path, None, body
        return "POST", self._data_path("/composite/sobjects"), None, body

    def _update_call(
        self, items: list[tuple[int, Op]], keyed: dict[int, str]
    ) -> tuple[str, str, dict[str, str] | None, Any]:
        records = [
            {"attributes": {"type": self.object}, "id": keyed[i], **canonical(op.values)}  # type: ignore[union-attr]
            for i, op in items
        ]
        return (
            "PATCH",
            self._data_path("/composite/sobjects"),
            None,
            {"allOrNone": False, "records": records},
        )

    def _guarded_call(
        self, items: list[tuple[int, Op]], keyed: dict[int, str]
    ) -> tuple[str, str, dict[str, str] | None, Any]:
        """A composite call of sObject Rows PATCHes, each refused by the org (412) when the
        record's LastModifiedDate is past the version read. The header has whole seconds:
        the version's second, so an edit in any later second is refused."""
        subrequests = []
        for i, op in items:
            read = parse_timestamp(op.version)
            if read is None:
                raise Fatal(f"{self.object} {keyed[i]}: a guarded update without a version")
            subrequests.append(
                {
                    "method": "PATCH",
                    "url": self._data_path(f"/sobjects/{self.object}/{keyed[i]}"),
                    "referenceId": f"u{i}",
                    "body": canonical(op.values),  # type: ignore[union-attr]
                    "httpHeaders": {
                        "If-Unmodified-Since": format_datetime(
                            read.astimezone(UTC).replace(microsecond=0), usegmt=True
                        )
                    },
                }
            )
        body = {"allOrNone": False, "compositeRequest": subrequests}
        return "POST", self._data_path("/composite"), None, body

    def _sub_result(self, op: Op, key: str | None, item: Any, where: str) -> WriteResult:
        """One guarded PATCH's outcome from its composite subrequest answer."""
        if not isinstance(item, dict) or not isinstance(item.get("httpStatusCode"), int):
            raise Fatal(f"{where}: a subrequest answer has no httpStatusCode")
        status = item["httpStatusCode"]
        if 200 <= status < 300:
            return WriteResult(op=op, key=key)
        code, text = error_of(item.get("body"))
        message = f"{self.object} {key}: {status} {code or ''}: {(text or '')[:300]}"
        if status == 412:
            return WriteResult(
                op=op,
                key=key,
                error=PreconditionFailed(
                    f"{self.object} {key} was edited since it was read (412)", status=412
                ),
            )
        if self._codes.get(code or "") is Retriable or status in self.http().retriable:
            return WriteResult(op=op, key=key, error=Retriable(message, status=status))
        if status == 404 or code in GONE_CODES:
            message = f"{self.object} {key} does not exist (deleted since it was read)"
        return WriteResult(op=op, key=key, error=Skippable(message, status=status))

    def _delete_call(
        self, items: list[tuple[int, Op]], keyed: dict[int, str]
    ) -> tuple[str, str, dict[str, str] | None, Any]:
        params = {"ids": ",".join(keyed[i] for i, _ in items), "allOrNone": "false"}
        return "DELETE", self._data_path("/composite/sobjects"), params, None

    def _send_items(
        self,
        items: list[tuple[int, Op]],
        build: Callable[..., Any],
        keyed: dict[int, str],
        results: dict[int, WriteResult],
        sent: list[bool],
        *,
        unpack: Callable[[Any], Any] = lambda body: body,
        judge: Callable[..., WriteResult] | None = None,
    ) -> None:
        """Send one collection (or composite) call; items refused with UNABLE_TO_LOCK_ROW
        are sent again (only them) with backoff; those still locked come back as Retriable
        errors. ``unpack`` finds the item answers in the body, ``judge`` reads one. Each
        call that may have been applied adds to ``sent``."""
        ops = dict(items)
        judge = judge or self._item_result

        def send(pending: list[int]) -> dict[int, Retriable]:
            part = [(i, ops[i]) for i in pending]
            method, path, params, body = build(part, keyed)
            try:
                # a create is sent once (an upsert by external ID may be sent again), and so
                # is a guarded PATCH: sent again after it applied, it would meet its own edit
                reply = self._request(
                    method, path, ok=None, params=params, json=body, once=method == "POST"
                )
            except (Retriable, Fatal) as exc:
                if exc.status is None or exc.status in OUTCOME_UNKNOWN:
                    sent.append(True)  # no answer: it may have been applied
                raise
            sent.append(True)
            answer = unpack(reply.body) if reply.status == 200 else reply.body
            if reply.status != 200 or not isinstance(answer, list) or len(answer) != len(part):
                raise Fatal(
                    f"{method} {path}: answered {reply.status}{reason(reply.body)}",
                    status=reply.status,
                )
            locked: dict[int, Retriable] = {}
            for (i, op), item in zip(part, answer, strict=True):
                results[i] = judge(op, keyed.get(i), item, f"{method} {path}")
                if isinstance(results[i].error, Retriable):
                    locked[i] = results[i].error  # type: ignore[assignment]
            return locked

        self.http().retry_failed(list(ops), send)

    def _item_result(self, op: Op, key: str | None, item: Any, where: str) -> WriteResult:
        if not isinstance(item, dict):
            raise Fatal(f"{where}: an item result is not a JSON object")
        if item.get("success"):
            rid = item.get("id")
            return WriteResult(op=op, key=sfid.to18(rid) if isinstance(rid, str) and rid else key)
        errors = item.get("errors") or [{}]
        first = errors[0] if isinstance(errors[0], dict) else {}
        code = str(first.get("statusCode") or "UNKNOWN_EXCEPTION")
        message = (
            f"{self.object} {key or 'new record'}: {code}: {str(first.get('message') or '')[:300]}"
        )
        if self._codes.get(code) is Retriable:
            return WriteResult(op=op, key=key, error=Retriable(message, status=400))
        if isinstance(op, Delete) and code in GONE_CODES:
            return WriteResult(op=op, key=key)
        return WriteResult(op=op, key=key, error=Skippable(message, status=400))


# -- helpers ------------------------------------------------------------------------------


def _composite_answers(body: Any) -> Any:
    """The subrequest answers of a composite call (None when the body has none)."""
    return body.get("compositeResponse") if isinstance(body, dict) else None


def _window(start: datetime, end: datetime) -> dict[str, str]:
    """A getUpdated/getDeleted window as the API takes it: UTC, to the second."""
    return {
        "start": start.astimezone(UTC).isoformat(timespec="seconds"),
        "end": end.astimezone(UTC).isoformat(timespec="seconds"),
    }


def _server_time(headers: httpx.Headers) -> datetime | None:
    """The server's clock from a Date header (whole seconds, so never ahead of it)."""
    value = headers.get("date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        return None
