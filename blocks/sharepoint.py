"""The SharePoint-list endpoint block: a list's items through Microsoft Graph.

Reads follow the list's delta feed: the cursor is the ``@odata.deltaLink``; deletions come
from the feed itself, and ``410 Gone`` starts a full read over (after
``resyncChangesUploadDifferences`` one whose absent items were lost by the list, not deleted:
Graph asks the client to upload them, so their links create them again).
Records are made from the feed's own items (read with ``$expand=fields``): values, eTag,
change time, and who changed them when ``modified_by`` names a column. Graph's feed leaves
out the ``lastModifiedBy`` item property, so an item that comes without it is read again
through ``$batch`` (20 a call) to learn who changed it; that is what lets the sync tell its
own echoes from people's edits. Writes go through ``$batch`` too, updates with ``If-Match`` on the eTag read, and
only the sub-requests that failed transiently are retried, honouring ``Retry-After``.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, field_validator

from blocks.credentials import IntegrationAccountCredentials
from blocks.http import (
    OUTCOME_UNKNOWN,
    RETRIABLE_STATUSES,
    Authenticator,
    ClientCredentials,
    HttpEndpointBlock,
    Reply,
    error_of,
    reason,
    record_error,
    safe_url,
)
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
from twoway.definition import SharePointSystem
from twoway.errors import DefinitionError, Fatal, Retriable, Skippable
from twoway.retry import retry_after_seconds
from twoway.urls import is_public_https
from twoway.values import as_utc, canonical, parse_timestamp

logger = logging.getLogger("twoway.sharepoint")

BATCH_LIMIT = 20  # requests per Graph $batch call
#: the delta 410 after which the list may lack items the other systems hold
UPLOAD_DIFFERENCES = "resyncChangesUploadDifferences"


class _DeltaGone(Exception):
    """The delta token is no longer valid (410 Gone): read everything again. ``code`` is
    Graph's resync code: after ``resyncChangesUploadDifferences`` the list may lack items
    it should hold, so an item missing from it is not a deletion."""

    def __init__(self, code: str | None):
        super().__init__(code)
        self.code = code


class SharePointList(HttpEndpointBlock):
    """A SharePoint list kept in step by twoway, through Microsoft Graph.

    Example:
        ```python
        from blocks.sharepoint import SharePointList
        contacts = SharePointList.load("sales-contacts")
        ```
    """

    _block_type_name = "twoway SharePoint List"
    _block_type_slug = "twoway-sharepoint-list"
    _description = "A SharePoint list, read and written through Microsoft Graph by twoway."

    graph_url: str = Field("https://graph.microsoft.com", description="Graph base URL")
    token_url: str | None = Field(
        None, description="OAuth2 token endpoint; derived from the tenant when empty"
    )
    tenant: str | None = Field(None, description="Directory (tenant) id or domain")
    site: str = Field("root", description="Site id, or 'root'")
    list: str = Field("Contacts", description="List id or title")
    key: str = Field("id", description="Item property holding the record's id (always 'id')")
    modified_at: str | None = Field(
        "lastModifiedDateTime", description="Item property (or field) holding the last change time"
    )
    modified_by: str | None = Field(
        "lastModifiedBy", description="Item property (or field) holding who made the last change"
    )
    integration_account: str | None = Field(
        None, description="Display name of the app registration twoway writes as"
    )
    columns_to_sync: builtins.list[str] = Field(
        default_factory=builtins.list, description="Fields (column internal names) to read"
    )
    link_column: str | None = Field(
        None, description="Column stamped with the link id of each item twoway creates"
    )
    page_size: int = Field(200, ge=1, le=5000, description="Items per read page ($top)")
    retry_attempts: int = Field(5, ge=1, le=50, description="Tries per request or batch")
    read_modifiers: bool = Field(
        True,
        description="Read changed items again ($batch, 20 a call) when the delta feed does "
        "not carry who changed them (Graph's leaves out lastModifiedBy); when off, echoes are "
        "caught by the values hash only",
    )
    timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one HTTP request")
    credentials: IntegrationAccountCredentials | None = Field(
        None, description="The app registration's client id and client secret"
    )
    writes_in_flight: int = Field(
        2,
        ge=1,
        le=8,
        description="Write batches (of 200 items: ten $batch calls) on their way at once; 1 "
        "sends them one after another",
    )
    retry_deadline_seconds: float = Field(
        900.0, gt=0, description="Most seconds a run waits between retries on this system"
    )

    _retriable = RETRIABLE_STATUSES | {509}  # Graph's bandwidth limit exceeded

    @field_validator("key")
    @classmethod
    def _key_is_item_id(cls, value: str) -> str:
        if value != "id":
            raise ValueError("SharePoint list items are keyed by their item id; key must be 'id'")
        return value

    @classmethod
    def _own_settings(cls, system: SharePointSystem) -> dict[str, Any]:
        """Where the list is, from a ``kind: sharepoint`` system: Graph, tenant, site, list."""
        return {
            "graph_url": system.graph_url,
            "token_url": system.token_url,
            "tenant": system.tenant,
            "site": system.site,
            "list": system.list,
            "link_column": system.link_column,
        }

    # -- plumbing ---------------------------------------------------------------------

    def _where(self) -> str:
        return f"SharePoint list {self.list!r} on {safe_url(self.graph_url, query=False)}"

    def _timeout(self) -> float:
        return self.timeout_seconds

    def _origin(self) -> str | None:
        return self.graph_url  # never send the token to another host

    def _authenticator(self) -> Authenticator:
        """The app registration's client credentials, for Graph's ``.default`` scope."""
        creds = self.credentials
        if creds is None or not creds.client_id or creds.client_secret is None:
            raise Fatal(f"{self._where()}: no client id and client secret in the credentials")
        return ClientCredentials(
            self._token_endpoint(),
            creds.client_id,
            creds.client_secret,
            scope=f"{self.graph_url.rstrip('/')}/.default",
        )

    def _note(self, reply: Reply) -> str:
        """The app's resource units, from the RateLimit headers SharePoint adds once 80% of
        the minute's budget is spent (a throttled answer says why it came)."""
        limit = reply.headers.get("ratelimit-limit")
        remaining = reply.headers.get("ratelimit-remaining")
        if limit is None or remaining is None:
            return ""
        reset = reply.headers.get("ratelimit-reset")
        resets = f", the budget renews in {reset} s" if reset else ""
        return f" (the app's resource units this minute: {remaining} of {limit} left{resets})"

    def _api(self, path: str) -> str:
        return f"{self.graph_url.rstrip('/')}/v1.0/{path.lstrip('/')}"

    def _list_path(self) -> str:
        return f"sites/{quote(self.site, safe=',')}/lists/{quote(self.list, safe='')}"

    def _token_endpoint(self) -> str:
        if self.token_url:
            return self.token_url
        if not self.tenant:
            raise Fatal(f"{self._where()}: set 'tenant' or 'token_url' to get an access token")
        return f"https://login.microsoftonline.com/{quote(self.tenant)}/oauth2/v2.0/token"

    def _call(self, method: str, url: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Reply:
        """A request with retries; any status outside ``ok`` is Fatal (see HttpClient.send)."""
        return self.http().send(method, url, ok=ok, **kwargs)

    def _batch(
        self, requests: dict[str, dict[str, Any]], *, keep_failures: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Run at most 20 sub-requests in one ``$batch``; retry only the transient failures.

        Returns each sub-response by its id. Sub-requests that still fail transiently after
        the last try raise Retriable, or with ``keep_failures`` come back as their last
        answer (writes: the others of the batch were applied and must be reported).
        Creates (POST) are never sent twice: one answered with a status that leaves open
        whether it was applied, or not answered, comes back as that answer at once, and a
        batch holding creates is not sent again when its own answer leaves that open.
        """
        if len(requests) > BATCH_LIMIT:
            raise ValueError(f"a $batch holds at most {BATCH_LIMIT} requests")
        done: dict[str, dict[str, Any]] = {}
        last: dict[str, dict[str, Any]] = {}

        def send(pending: builtins.list[str]) -> dict[str, Retriable]:
            envelope = {"requests": [{"id": rid, **requests[rid]} for rid in pending]}
            creates = any(requests[rid]["method"] == "POST" for rid in pending)
            reply = self._call("POST", self._api("$batch"), json=envelope, once=creates)
            try:
                answers = {str(r["id"]): r for r in reply.body["responses"]}
            except (KeyError, TypeError):
                raise Fatal(f"unreadable $batch answer from {self._where()}") from None
            failed: dict[str, Retriable] = {}
            for rid in pending:
                req, answer = requests[rid], answers.get(rid)
                status = int(answer.get("status", 0)) if answer else 0
                if req["method"] == "POST" and (answer is None or status in OUTCOME_UNKNOWN):
                    done[rid] = answer or {"id": rid, "status": 504, "body": {}}
                elif answer is None or status in self._retriable:
                    last[rid] = answer or {"id": rid, "status": 503, "body": {}}
                    failed[rid] = Retriable(
                        f"{req['method']} {req['url']} inside $batch: {status}",
                        status=status or None,
                        retry_after=retry_after_seconds(_header(answer or {}, "Retry-After")),
                    )
                elif status == 401:
                    raise Fatal(
                        f"{req['method']} {req['url']}: access refused inside $batch", status=401
                    )
                else:
                    done[rid] = answer
            return failed

        failed = self.http().retry_failed(builtins.list(requests), send)
        if failed and not keep_failures:
            statuses = sorted({e.status or 0 for e in failed.values()})
            waits = [e.retry_after for e in failed.values() if e.retry_after is not None]
            raise Retriable(
                f"{len(failed)} request(s) in a $batch to {self._where()} still failing after "
                f"{self.retry_attempts} tries (status {', '.join(str(s) for s in statuses)})",
                status=statuses[0] or None,
                retry_after=max(waits) if waits else None,
            )
        return done | {rid: last[rid] for rid in failed}

    # -- change notifications ---------------------------------------------------------

    def subscribe(
        self, notification_url: str, client_state: SecretStr, minutes: int
    ) -> dict[str, Any]:
        """Create, or renew, the Graph subscription that sends this list's changes to
        ``notification_url``, signed with ``client_state``; an existing one (same URL and
        list) gets a new expiration. Returns a summary without the secret.

        Microsoft Graph calls only public HTTPS URLs back, so against its own hosts a
        plain-HTTP or loopback ``notification_url`` is refused before any request."""
        check_notification_url(self.graph_url, notification_url)
        site = self._call("GET", self._api(f"sites/{quote(self.site, safe=',')}")).body
        path = f"sites/{quote(site['id'], safe=',')}/lists/{quote(self.list, safe='')}"
        lst = self._call("GET", self._api(path)).body
        resource = f"sites/{site['id']}/lists/{lst['id']}"
        expires = (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
        existing = [
            s
            for s in self._subscriptions()
            if s.get("notificationUrl") == notification_url
            and s.get("resource", "").strip("/") == resource
        ]
        if existing:
            sub = self._call(
                "PATCH",
                self._api(f"subscriptions/{existing[0]['id']}"),
                json={"expirationDateTime": expires},
            ).body
            action = "renewed"
        else:
            sub = self._call(
                "POST",
                self._api("subscriptions"),
                ok=(200, 201),
                json={
                    "changeType": "updated",
                    "notificationUrl": notification_url,
                    "resource": resource,
                    "expirationDateTime": expires,
                    "clientState": client_state.get_secret_value(),
                },
            ).body
            action = "created"
        return {
            "action": action,
            "id": sub.get("id"),
            "resource": resource,
            "notificationUrl": notification_url,
            "expirationDateTime": sub.get("expirationDateTime"),
        }

    def _subscriptions(self) -> Iterator[dict[str, Any]]:
        """The app's subscriptions, following ``@odata.nextLink`` page after page."""
        url: str | None = self._api("subscriptions")
        seen: set[str] = set()
        while url:
            if url in seen:
                raise Fatal(f"{self._where()}: the subscription pages repeat a next link")
            seen.add(url)
            page = self._call("GET", url).body or {}
            yield from page.get("value", [])
            url = page.get("@odata.nextLink")

    # -- reading ----------------------------------------------------------------------

    def _expand(self) -> str:
        wanted = builtins.list(dict.fromkeys(self.columns_to_sync))
        for extra in (self.modified_at, self.modified_by, self.link_column):
            if extra and extra not in _ITEM_PROPERTIES and extra not in wanted:
                wanted.append(extra)
        return f"fields($select={','.join(wanted)})" if wanted else "fields"

    def _record(self, item: dict[str, Any]) -> RawRecord:
        fields = item.get("fields") or {}
        stamp = None
        if self.modified_at:
            stamp = item.get(self.modified_at, fields.get(self.modified_at))
        by = None
        if self.modified_by:
            by = _display_name(item.get(self.modified_by, fields.get(self.modified_by)))
        return RawRecord(
            key=str(item["id"]),
            values={c: fields.get(c) for c in self.columns_to_sync},
            modified_at=parse_timestamp(stamp),
            modified_by=by,
            version=_etag(item),
            link=fields.get(self.link_column) if self.link_column else None,
        )

    def _complete(self, item: dict[str, Any]) -> bool:
        """Whether a delta item carries all a record needs: its fields (the feed is read
        with ``$expand=fields``) and who changed it. The modifier comes with the fields
        when ``modified_by`` names a column; an item property (``lastModifiedBy``) only
        when the feed holds it, which Graph's does not: such items are read again. With
        ``read_modifiers`` off, the feed's item is taken as it is."""
        if not self.read_modifiers:
            return True
        if not isinstance(item.get("fields"), dict):
            return False
        if not self.modified_by or self.modified_by not in _ITEM_PROPERTIES:
            return True
        return _display_name(item.get(self.modified_by)) is not None

    def columns(self) -> set[str]:
        """The list's columns, plus the item properties records are read from (``id``,
        ``lastModifiedDateTime``, ``lastModifiedBy``, ...): ``twoway check`` looks for the
        ``key``, ``modified_at`` and ``modified_by`` defaults among these."""
        body = self._call("GET", self._api(f"{self._list_path()}/columns")).body or {}
        names = {str(c["name"]) for c in body.get("value", []) if c.get("name")}
        return names | {"id"} | set(_ITEM_PROPERTIES)

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        if cursor is not None:
            pages = self._read_delta(cursor)
            try:
                first = next(pages)
            except _DeltaGone as gone:
                # the token expired: read everything and start a new feed
                if gone.code == UPLOAD_DIFFERENCES:
                    logger.warning(
                        "%s: the delta feed answered 410 %s: reading every item again; linked "
                        "items missing from the list are created there again",
                        self._where(),
                        gone.code,
                    )
                    for page in self._read_all():
                        page.full, page.absent_lost = False, True  # absent is lost, not deleted
                        yield page
                    return
            else:
                yield first
                try:
                    yield from pages
                except _DeltaGone:
                    # pages of the feed are already handed on: the read starts again
                    raise Retriable(f"{self._where()}: the delta token expired mid-read") from None
                return
        yield from self._read_all()

    def _read_all(self) -> Iterator[ChangeSet]:
        """Every live item, and a delta link taken before the read so nothing is missed."""
        if not self.read_modifiers:
            yield from self._read_delta(None)
            return
        start = self._call(
            "GET",
            self._api(f"{self._list_path()}/items/delta"),
            params={"token": "latest", "$expand": self._expand(), "$top": str(self.page_size)},
        )
        requests = 1
        delta_link = (start.body or {}).get("@odata.deltaLink")
        if not delta_link:
            raise Fatal(f"{self._where()}: the delta feed gave no @odata.deltaLink")
        url: str | None = self._api(f"{self._list_path()}/items")
        params: dict[str, str] | None = {"$expand": self._expand(), "$top": str(self.page_size)}
        seen: set[str] = set()
        while url:
            if url in seen:
                raise Fatal(f"{self._where()}: the item pages repeat a next link")
            seen.add(url)
            page = self._call("GET", url, params=params).body or {}
            requests += 1
            records: dict[str, RawRecord] = {}
            for item in page.get("value", []):
                record = self._record(item)
                records[record.key] = record
            url, params = page.get("@odata.nextLink"), None
            yield ChangeSet(
                records=builtins.list(records.values()),
                cursor=delta_link,
                full=True,
                requests=requests,
            )
            requests = 0

    def _read_delta(self, cursor: str | None) -> Iterator[ChangeSet]:
        """Follow the delta feed from ``cursor`` (None: the initial enumeration) to its end,
        a page at a time; the last page carries the feed's new delta link."""
        if cursor is None:
            url = self._api(f"{self._list_path()}/items/delta")
            params: dict[str, str] | None = {"$expand": self._expand(), "$top": str(self.page_size)}
        else:
            url, params = cursor, None
        seen: set[str] = set()
        read_again: dict[str, RawRecord] = {}  # items of this read fetched through $batch
        while True:
            if url in seen:
                raise Fatal(f"{self._where()}: the delta feed repeats a next link")
            seen.add(url)
            reply = self._call("GET", url, ok=(200, 410), params=params)
            requests = 1
            if reply.status == 410:
                raise _DeltaGone(error_of(reply.body)[0])
            page = reply.body or {}
            latest: dict[str, dict[str, Any]] = {}
            deleted: dict[str, None] = {}
            for item in page.get("value", []):
                key = str(item["id"])
                if "deleted" in item:
                    latest.pop(key, None)
                    deleted[key] = None
                else:
                    deleted.pop(key, None)
                    latest[key] = item  # the last occurrence is the latest state
            params = None
            following = page.get("@odata.nextLink")
            delta_link = page.get("@odata.deltaLink")
            if not following and not delta_link:
                raise Fatal(f"{self._where()}: a delta page had neither nextLink nor deltaLink")
            carried = {k: self._record(i) for k, i in latest.items() if self._complete(i)}
            for key, item in latest.items():
                known = read_again.get(key)
                if key not in carried and known and known.version == _etag(item):
                    carried[key] = known  # repeated from an earlier page, unchanged
            missing = [k for k in latest if k not in carried]
            if missing:
                # Graph's feed leaves out lastModifiedBy: read those items again, 20 a call;
                # an item gone meanwhile is reported deleted by the next round of the feed
                fetched, calls = self._read_items(missing)
                requests += calls
                read_again |= {r.key: r for r in fetched}
                carried |= {r.key: r for r in fetched}
            records = [carried[k] for k in latest if k in carried]
            yield ChangeSet(
                records=records,
                deleted=builtins.list(deleted) if cursor is not None else [],
                cursor=cursor if following else delta_link,
                full=cursor is None,
                requests=requests,
            )
            if not following:
                return
            url = following

    def read(self, keys: Sequence[str]) -> builtins.list[RawRecord]:
        records, _ = self._read_items(keys)
        return records

    def _read_items(self, keys: Sequence[str]) -> tuple[builtins.list[RawRecord], int]:
        """Items by id through ``$batch``; missing ids are left out. Returns records and calls."""
        wanted = [k for k in dict.fromkeys(str(k) for k in keys) if k.isdigit()]
        expand = quote(self._expand(), safe="($=,)")
        out: builtins.list[RawRecord] = []
        calls = 0
        for part in chunks(wanted, BATCH_LIMIT):
            requests = {
                str(i): {
                    "method": "GET",
                    "url": f"/{self._list_path()}/items/{key}?$expand={expand}",
                }
                for i, key in enumerate(part)
            }
            answers = self._batch(requests)
            calls += 1
            for i in range(len(part)):
                answer = answers[str(i)]
                status = int(answer.get("status", 0))
                if status == 200:
                    out.append(self._record(answer.get("body") or {}))
                elif status not in (400, 404):
                    raise Fatal(
                        f"reading item {part[i]} of {self._where()} answered {status} "
                        f"({reason(answer.get('body')).removeprefix(': ')})",
                        status=status,
                    )
        return out, calls

    def list_keys(self) -> set[str] | None:
        return None  # the delta feed reports deletions

    # -- writing ----------------------------------------------------------------------

    def max_batch(self) -> int:
        return 200

    def max_writes_in_flight(self) -> int:
        return self.writes_in_flight

    def write(self, ops: Sequence[Op]) -> builtins.list[WriteResult]:
        results: builtins.list[WriteResult | None] = [None] * len(ops)
        indexed = builtins.list(enumerate(ops))
        sendable = []
        for i, op in indexed:
            if not isinstance(op, Create) and not op.key.isdigit():
                # no item can have this id: an update fails, a delete's goal already holds
                error = (
                    Skippable(f"item {op.key!r} does not exist") if isinstance(op, Update) else None
                )
                results[i] = WriteResult(op=op, key=op.key, error=error)
            else:
                sendable.append((i, op))
        for part in chunks(sendable, BATCH_LIMIT):
            try:
                answers = self._batch(
                    {str(i): self._op_request(op) for i, op in part}, keep_failures=True
                )
            except Retriable as exc:  # the whole $batch failed: its outcome is unknown
                for i, op in part:
                    results[i] = WriteResult(op=op, key=getattr(op, "key", None), error=exc)
                continue
            for i, op in part:
                results[i] = self._op_result(op, answers[str(i)])
        return [r for r in results if r is not None]

    def _op_request(self, op: Op) -> dict[str, Any]:
        items = f"/{self._list_path()}/items"
        if isinstance(op, Create):
            fields = {k: _wire(v) for k, v in op.values.items()}
            if self.link_column:  # the link marker: found again if the answer is lost
                fields[self.link_column] = op.ref
            return {
                "method": "POST",
                "url": items,
                "headers": {"Content-Type": "application/json"},
                "body": {"fields": fields},
            }
        headers = {"If-Match": op.version} if op.version else {}
        if isinstance(op, Update):
            return {
                "method": "PATCH",
                "url": f"{items}/{op.key}/fields",
                "headers": {**headers, "Content-Type": "application/json"},
                "body": {k: _wire(v) for k, v in op.values.items()},
            }
        request: dict[str, Any] = {"method": "DELETE", "url": f"{items}/{op.key}"}
        if headers:
            request["headers"] = headers
        return request

    def _op_result(self, op: Op, answer: dict[str, Any]) -> WriteResult:
        status = int(answer.get("status", 0))
        body = answer.get("body") if isinstance(answer.get("body"), dict) else {}
        key = op.key if not isinstance(op, Create) else None
        if 200 <= status < 300:
            if isinstance(op, Delete):
                return WriteResult(op=op, key=op.key)
            if isinstance(op, Create):
                fields = body.get("fields") or {}
                key = str(body.get("id", fields.get("id", "")))
                version = body.get("eTag") or fields.get("@odata.etag")
            else:
                fields = body
                version = body.get("@odata.etag") or _header(answer, "ETag")
            if not key:
                raise Fatal(f"{self._where()}: a create answered {status} without an item id")
            return WriteResult(
                op=op, key=key, version=version, values=_rewritten(op.values, fields)
            )
        what = f"item {key} of {self._where()}" if key else f"new item of {self._where()}"
        error = record_error(
            status,
            what,
            reason(answer.get("body")),
            deleting=isinstance(op, Delete),
            retry_after=retry_after_seconds(_header(answer, "Retry-After")),
        )
        return WriteResult(op=op, key=key, error=error)


#: the hosts of Microsoft Graph's national clouds: real tenants, not a simulator
GRAPH_HOSTS = frozenset(
    {
        "graph.microsoft.com",
        "graph.microsoft.us",
        "dod-graph.microsoft.us",
        "microsoftgraph.chinacloudapi.cn",
    }
)


def _graph_host(url: str) -> bool:
    """True when ``url`` is on one of Microsoft Graph's own hosts."""
    return httpx.URL(url).host.lower() in GRAPH_HOSTS


def check_notification_url(graph_url: str, notification_url: str) -> None:
    """Refuse, in one line, a ``notification_url`` that Microsoft Graph at ``graph_url``
    cannot call back: against Graph's own hosts only a public HTTPS URL will do (plain HTTP
    and loopback are refused); a simulator may call what it likes."""
    if _graph_host(graph_url) and not is_public_https(notification_url):
        raise DefinitionError(
            f"notification URL {safe_url(notification_url)}: Microsoft Graph "
            f"({safe_url(graph_url)}) calls only public HTTPS URLs back; give the "
            "receiver's public https:// address"
        )


_ITEM_PROPERTIES = (
    "lastModifiedDateTime",
    "createdDateTime",
    "lastModifiedBy",
    "createdBy",
    "eTag",
)


def _etag(item: dict[str, Any]) -> str | None:
    """A listItem's eTag: the item's own, else its fields' ``@odata.etag``."""
    return item.get("eTag") or (item.get("fields") or {}).get("@odata.etag")


def _display_name(value: Any) -> str | None:
    """Who an identitySet names: the application, else the user (or a plain text field)."""
    if isinstance(value, str):
        return value or None
    if not isinstance(value, dict):
        return None
    for kind in ("application", "user", "device"):
        who = value.get(kind)
        if isinstance(who, dict) and who.get("displayName"):
            return str(who["displayName"])
    return None


def _wire(value: Any) -> Any:
    """A value as Graph takes it in JSON: ISO 8601 UTC for times, numbers for decimals."""
    if isinstance(value, datetime):
        return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _rewritten(sent: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any] | None:
    """The stored values of the fields we sent, when SharePoint changed any of them."""
    values = {k: stored.get(k) for k in sent}
    if all(canonical(_wire(sent[k])) == canonical(values[k]) for k in sent):
        return None
    return values


def _header(answer: dict[str, Any], name: str) -> str | None:
    for key, value in (answer.get("headers") or {}).items():
        if str(key).lower() == name.lower():
            return str(value)
    return None
