"""The REST-collection endpoint block: a JSON collection of an in-house API (Graph's shapes).

Reads page through ``next_link`` (keyset pages served by the API), incrementally from the
cursor minus an overlap window when the API takes a ``cursor_param``; ``@removed`` items of
an incremental read are deletions. Writes go through the optional JSON ``$batch`` endpoint
(or one request per operation), send ``If-Match`` with the version read, and retry only the
operations the API refused for a transient reason (423, 429, 503, 504), honouring
``Retry-After``. The bearer token never appears in a message or log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field

from blocks.credentials import IntegrationAccountCredentials
from blocks.http import (
    RETRIABLE_STATUSES,
    Authenticator,
    BearerToken,
    HttpEndpointBlock,
    NoAuth,
    Reply,
    cursor_text,
    overlap_start,
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
from twoway.definition import RestSystem
from twoway.errors import Fatal, Retriable, SyncError
from twoway.values import as_utc, canonical, parse_timestamp


def dig(document: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a JSON document; a key holding dots (``@odata.nextLink``)
    is matched whole before the path is split. None when absent."""
    if not isinstance(document, dict):
        return None
    if path in document:
        return document[path]
    start = 0
    while (dot := path.find(".", start)) != -1:
        head = path[:dot]
        if head in document and isinstance(document[head], dict):
            found = dig(document[head], path[dot + 1 :])
            if found is not None:
                return found
        start = dot + 1
    return None


#: a path whose characters URLs carry as they are: its call's safe URL is the base's safe
#: form followed by it (RFC 3986 path characters; no query, no fragment)
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:@/]*")
_PROBE = "/twoway-probe"


@dataclass
class _Call:
    """One HTTP request of a set, addressed relative to ``base_url``."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


class RestCollection(HttpEndpointBlock):
    """A JSON collection of a REST API kept in step by twoway.

    ``columns()`` is learnt from the records of the first page: a REST API has no schema
    endpoint, so an empty collection shows no columns and a field that is null in every
    record of that page may be missing.

    Example:
        ```python
        from blocks.rest import RestCollection
        collection = RestCollection.load("orders-api")
        ```
    """

    _block_type_name = "twoway REST Collection"
    _block_type_slug = "twoway-rest-collection"
    _description = "A JSON collection of a REST API that twoway keeps in step."

    base_url: str | None = Field(
        None, description="Base URL of the API, e.g. https://api.example.com"
    )
    collection: str = Field(
        "/items", description="Path of the collection (GET pages, POST creates)"
    )
    item: str = Field("/items/{id}", description="Path of one item (GET, PATCH, DELETE)")
    batch: str | None = Field(None, description="Optional JSON batch endpoint in Graph's shape")
    records: str = Field("value", description="Dotted path of the record list in a page")
    next_link: str = Field("@odata.nextLink", description="Dotted path of the next page's URL")
    cursor_param: str | None = Field(
        None, description="Query parameter for incremental reads (None: every read is full)"
    )
    page_size_param: str | None = Field(None, description="Query parameter for the page size")
    page_size: int = Field(1000, ge=1, description="Records per page asked for")
    key: str = Field("id", description="Field holding the record's id")
    modified_at: str | None = Field(None, description="Field holding the last change time")
    modified_by: str | None = Field(None, description="Field holding the last modifier")
    columns_to_sync: list[str] = Field(default_factory=list, description="Data fields to read")
    retry_attempts: int = Field(5, ge=1, le=50, description="Tries per request, the first included")
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for one HTTP response")
    credentials: IntegrationAccountCredentials | None = Field(
        None, description="Integration account; its static bearer token authenticates requests"
    )
    overlap_seconds: float = Field(300.0, ge=0, description="Look-back window of incremental reads")
    batch_limit: int = Field(20, ge=1, description="Most requests one batch call may carry")
    batch_size: int = Field(1000, ge=1, description="Most operations one write() call should carry")
    retry_deadline_seconds: float = Field(
        900.0, gt=0, description="Most seconds a run waits between retries on this system"
    )

    _retriable = RETRIABLE_STATUSES | {409}  # a conflicting lock, for in-house APIs
    _safe_base: tuple[str, str | None] | None = None  # base_url, its safe form (_where)

    @classmethod
    def _own_settings(cls, system: RestSystem) -> dict[str, Any]:
        """The API's shape, from a ``kind: rest`` system: paths, page fields, page size."""
        return {
            "base_url": system.base_url,
            "collection": system.collection,
            "item": system.item,
            "batch": system.batch,
            "records": system.records,
            "next_link": system.next_link,
            "cursor_param": system.cursor_param,
            "page_size_param": system.page_size_param,
            "page_size": system.page_size,
        }

    # -- plumbing ---------------------------------------------------------------------

    def _base(self) -> httpx.URL:
        if not self.base_url:
            raise Fatal("no base_url configured for the REST collection")
        return httpx.URL(self.base_url.rstrip("/"))

    def _url(self, path: str) -> httpx.URL:
        base = self._base()
        prefix = base.raw_path.split(b"?", 1)[0].rstrip(b"/")
        return base.copy_with(raw_path=prefix + path.encode("ascii"))

    def _where(self, method: str, path: str) -> str:
        """``METHOD url`` of a call, as messages name it (:func:`safe_url`). The base's safe
        form is made once per base: a write of 10,000 records parsed 30,000 URLs for it."""
        base = self.base_url or ""
        if self._safe_base is None or self._safe_base[0] != base:
            probe = safe_url(self._url(_PROBE))
            self._safe_base = (base, probe[: -len(_PROBE)] if probe.endswith(_PROBE) else None)
        prefix = self._safe_base[1]
        if prefix is None or not _PLAIN_PATH.fullmatch(path):
            return f"{method} {safe_url(self._url(path))}"
        return f"{method} {prefix}{path}"

    def _item_path(self, key: str) -> str:
        if "{id}" not in self.item:
            raise Fatal(f"item path {self.item!r} must contain {{id}}")
        return self.item.replace("{id}", quote(key, safe=""))

    def _timeout(self) -> float:
        return self.timeout

    def _origin(self) -> str | None:
        return str(self._base())  # next links to another host are refused

    def _authenticator(self) -> Authenticator:
        """The integration account's static bearer token, or none."""
        token = self.credentials.token if self.credentials else None
        return NoAuth() if token is None else BearerToken(token)

    def max_batch(self) -> int:
        return self.batch_size

    # -- one HTTP exchange --------------------------------------------------------------

    def _send(
        self, method: str, url: httpx.URL, body: Any = None, headers: dict[str, str] | None = None
    ) -> Reply:
        """Send one request, once: transient failures raise Retriable, other answers come
        back whatever their status (the callers retry sets of requests)."""
        send_headers = dict(headers or {})
        content = None
        if body is not None:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            send_headers["Content-Type"] = "application/json"
        return self.http().send(
            method, url, ok=None, retry=False, content=content, headers=send_headers
        )

    # -- reading ------------------------------------------------------------------------

    def _record(self, item: dict[str, Any], where: str) -> RawRecord:
        """A page item as a RawRecord (runs once per record read: kept lean)."""
        get = item.get
        key = get(self.key)
        if key is None:
            raise Fatal(f"{where}: a record has no {self.key!r} field")
        stamp = _field(item, self.modified_at)
        by = _field(item, self.modified_by)
        version = get("version")
        if version is None:
            version = get("@odata.etag") or get("etag") or stamp
        columns = self.columns_to_sync
        return RawRecord(
            key=key if type(key) is str else str(key),
            values=dict(zip(columns, map(get, columns), strict=True)),
            modified_at=_when(stamp),
            modified_by=None if by is None else str(by),
            version=None if version is None else str(version),
        )

    def _pages(self, params: dict[str, str]) -> Iterator[tuple[list[Any], str]]:
        """Each page's records (and where they came from), following next links one page at
        a time; refuses a link that repeats a fetched URL (one that leaves the API's host
        the client refuses)."""
        url = self._url(self.collection).copy_merge_params(params)
        seen: set[str] = set()
        pages: set[str] = set()  # what each page held: a page served again under a new link
        while True:
            seen.add(str(url))
            reply = self.http().send("GET", url)
            where = f"GET {safe_url(url)}"
            items = dig(reply.body, self.records)
            if not isinstance(items, list):
                raise Fatal(f"{where}: the page has no list at {self.records!r}")
            if items:
                ends = (items[0], items[-1], len(items))
                fingerprint = json.dumps(ends, sort_keys=True, default=str)
                if fingerprint in pages:
                    raise Fatal(f"{where}: nextLink loops: the page repeats one already read")
                pages.add(fingerprint)
            yield items, where
            link = dig(reply.body, self.next_link)
            if not link:
                return
            if not isinstance(link, str):
                raise Fatal(f"{where}: {self.next_link!r} is not a URL")
            following = url.join(link)
            if str(following) in seen:
                raise Fatal(
                    f"{where}: nextLink loops back to a page already read ({safe_url(following)})"
                )
            url = following

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        since, start = overlap_start(cursor, self.overlap_seconds)
        incremental = (
            start is not None and self.cursor_param is not None and self.modified_at is not None
        )
        params: dict[str, str] = {}
        if self.page_size_param:
            params[self.page_size_param] = str(self.page_size)
        if incremental:
            params[self.cursor_param] = cursor_text(start)  # type: ignore[index,arg-type]
        newest = since
        http = self.http()
        calls_before = http.requests
        for items, where in self._pages(params):
            latest: dict[str, RawRecord | None] = {}  # key -> record, None when deleted; last wins
            for item in items:
                if not isinstance(item, dict):
                    raise Fatal(f"{where}: a record is not a JSON object")
                if "@removed" in item:
                    key = item.get(self.key)
                    if key is None:
                        raise Fatal(f"{where}: a removed item has no {self.key!r} field")
                    latest.pop(str(key), None)
                    latest[str(key)] = None
                    stamp = _when(_field(item, self.modified_at))
                else:
                    record = self._record(item, where)
                    latest.pop(record.key, None)
                    latest[record.key] = record
                    stamp = record.modified_at
                if stamp is not None and (newest is None or stamp > newest):
                    newest = stamp
            yield ChangeSet(
                records=[r for r in latest.values() if r is not None],
                deleted=[k for k, r in latest.items() if r is None],
                cursor=cursor_text(newest) if newest else cursor,
                full=not incremental,
                requests=http.requests - calls_before,
            )
            calls_before = http.requests

    def read(self, keys: Sequence[str]) -> list[RawRecord]:
        wanted = list(dict.fromkeys(keys))
        calls = [_Call("GET", self._item_path(k)) for k in wanted]
        out: list[RawRecord] = []
        for call, outcome in zip(calls, self._run(calls), strict=True):
            where = self._where("GET", call.path)
            if isinstance(outcome, SyncError):
                raise outcome
            if outcome.status in (404, 410):
                continue
            if not 200 <= outcome.status < 300:
                raise Fatal(f"{where}: answered {outcome.status}{reason(outcome.body)}")
            if not isinstance(outcome.body, dict):
                raise Fatal(f"{where}: the answer is not a JSON object")
            if "@removed" in outcome.body:
                continue
            out.append(self._record(outcome.body, where))
        return out

    def list_keys(self) -> set[str] | None:
        """None when incremental reads report deletions (``cursor_param`` set), else every key."""
        if self.cursor_param is not None and self.modified_at is not None:
            return None
        return {r.key for page in self.read_pages(None) for r in page.records}

    def columns(self) -> set[str]:
        """Union of the fields of the first page's records (a REST API has no schema endpoint)."""
        params = {self.page_size_param: str(self.page_size)} if self.page_size_param else {}
        url = self._url(self.collection).copy_merge_params(params)
        reply = self.http().send("GET", url)
        items = dig(reply.body, self.records)
        if not isinstance(items, list):
            raise Fatal(f"GET {safe_url(url)}: the page has no list at {self.records!r}")
        names: set[str] = set()
        for item in items:
            if isinstance(item, dict) and "@removed" not in item:
                names.update(item)
        return names

    # -- writing ------------------------------------------------------------------------

    def _call_for(self, op: Op) -> _Call:
        if isinstance(op, Create):
            # the link id makes a retried create idempotent on APIs that honour the header
            return _Call("POST", self.collection, {"Idempotency-Key": op.ref}, canonical(op.values))
        headers = {"If-Match": _entity_tag(op.version)} if op.version is not None else {}
        if isinstance(op, Update):
            return _Call("PATCH", self._item_path(op.key), headers, canonical(op.values))
        return _Call("DELETE", self._item_path(op.key), headers)

    def write(self, ops: Sequence[Op]) -> list[WriteResult]:
        if not ops:
            return []
        calls = [self._call_for(op) for op in ops]
        results = []
        for op, call, outcome in zip(ops, calls, self._run(calls), strict=True):
            where = self._where(call.method, call.path)
            if isinstance(outcome, SyncError):
                results.append(WriteResult(op=op, key=_op_key(op), error=outcome))
            else:
                results.append(self._result(op, outcome, where))
        return results

    def _result(self, op: Op, reply: Reply, where: str) -> WriteResult:
        key = _op_key(op)
        status = reply.status
        if not 200 <= status < 300:
            error = record_error(
                status,
                f"{where}: record {key}",
                reason(reply.body),
                deleting=isinstance(op, Delete),
            )
            return WriteResult(op=op, key=key, error=error)
        if isinstance(op, Delete):
            return WriteResult(op=op, key=key)
        body = reply.body
        if not isinstance(body, dict):
            raise Fatal(f"{where}: answered {status} without the record as a JSON object")
        if body.get(self.key) is None:
            raise Fatal(f"{where}: the answer has no {self.key!r} field")
        record = self._record(body, where)
        version = record.version
        if version is None and reply.headers.get("etag"):
            version = reply.headers["etag"].removeprefix("W/").strip('"')
        return WriteResult(op=op, key=record.key, version=version, values=record.values)

    # -- sending sets of requests, retrying only the refused ones -------------------------

    def _run(self, calls: list[_Call]) -> list[Reply | SyncError]:
        """Answers to ``calls`` in order. Calls refused for a transient reason are sent again
        (alone) with backoff, honouring the largest Retry-After; those still refused when the
        tries run out come back as Retriable errors. Authentication failures raise Fatal."""
        outcomes: list[Reply | SyncError | None] = [None] * len(calls)
        http = self.http()

        def send(pending: list[int]) -> dict[int, Retriable]:
            failed: dict[int, Retriable] = {}
            for index, outcome in self._send_calls([(i, calls[i]) for i in pending]):
                where = self._where(calls[index].method, calls[index].path)
                if isinstance(outcome, Reply) and outcome.status in (401, 403):
                    raise Fatal(
                        f"{where}: the integration account was refused "
                        f"({outcome.status}{reason(outcome.body)})",
                        status=outcome.status,
                    )
                error = outcome if isinstance(outcome, Retriable) else http.classify(outcome, where)
                outcomes[index] = error or outcome
                if isinstance(error, Retriable):
                    failed[index] = error
            return failed

        http.retry_failed(range(len(calls)), send)
        return outcomes  # type: ignore[return-value]

    def _send_calls(self, calls: list[tuple[int, _Call]]) -> list[tuple[int, Reply | Retriable]]:
        """One pass over ``calls``: through the batch endpoint in chunks, or one by one."""
        out: list[tuple[int, Reply | Retriable]] = []
        if self.batch is None:
            for index, call in calls:
                try:
                    out.append(
                        (
                            index,
                            self._send(call.method, self._url(call.path), call.body, call.headers),
                        )
                    )
                except Retriable as exc:
                    out.append((index, exc))
            return out
        for part in chunks(calls, self.batch_limit):
            out.extend(self._send_batch(part))
        return out

    def _send_batch(
        self, calls: Sequence[tuple[int, _Call]]
    ) -> list[tuple[int, Reply | Retriable]]:
        url = self._url(self.batch)  # type: ignore[arg-type]
        where = f"POST {safe_url(url)}"
        requests = []
        for index, call in calls:
            sub: dict[str, Any] = {"id": str(index), "method": call.method, "url": call.path}
            headers = dict(call.headers)
            if call.body is not None:
                headers["Content-Type"] = "application/json"
                sub["body"] = call.body
            if headers:
                sub["headers"] = headers
            requests.append(sub)
        try:
            reply = self._send("POST", url, {"requests": requests})
        except Retriable as exc:
            return [(index, exc) for index, _ in calls]
        if reply.status != 200:
            raise Fatal(
                f"{where}: answered {reply.status}{reason(reply.body)}", status=reply.status
            )
        responses = dig(reply.body, "responses")
        if not isinstance(responses, list):
            raise Fatal(f"{where}: the answer has no 'responses' list")
        by_id: dict[str, Reply] = {}
        for answer in responses:
            if not isinstance(answer, dict) or not isinstance(answer.get("status"), int):
                raise Fatal(f"{where}: a batch response has no status")
            headers = answer.get("headers") or {}
            by_id[str(answer.get("id"))] = Reply(
                answer["status"],
                httpx.Headers(
                    {str(k): str(v) for k, v in headers.items()}
                    if isinstance(headers, dict)
                    else {}
                ),
                answer.get("body"),
            )
        out = []
        for index, _ in calls:
            if str(index) not in by_id:
                raise Fatal(f"{where}: the answer lacks the response to request {index}")
            out.append((index, by_id[str(index)]))
        return out


# -- helpers ------------------------------------------------------------------------------


def _field(item: dict[str, Any], path: str | None) -> Any:
    """A record's field by name or dotted path (None when not configured or absent)."""
    if path is None:
        return None
    value = item.get(path)
    if value is None and "." in path:
        value = dig(item, path)
    return value


def _when(value: Any) -> datetime | None:
    """A timestamp as aware UTC; ISO text with ``Z`` takes the fast path."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return parse_timestamp(value)
        return parsed if parsed.tzinfo is UTC else as_utc(parsed)
    return parse_timestamp(value)


def _entity_tag(version: str) -> str:
    """``version`` as an If-Match value: an ETag read as such is sent as is, else quoted."""
    if version.startswith(('"', 'W/"')):
        return version
    return f'"{version}"'


def _op_key(op: Op) -> str | None:
    return None if isinstance(op, Create) else op.key
