"""The SharePoint-list endpoint block: a list's items through Microsoft Graph.

Reads follow the list's delta feed: the cursor is the ``@odata.deltaLink``; deletions come
from the feed itself, and ``410 Gone`` starts a full read over. The delta feed does not
carry ``lastModifiedBy``, so changed items are read again through ``$batch`` (20 a call)
to learn who changed them; that is what lets the sync tell its own echoes from people's
edits. Writes go through ``$batch`` too, updates with ``If-Match`` on the eTag read, and
only the sub-requests that failed transiently are retried, honouring ``Retry-After``.
"""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import Field, PrivateAttr, field_validator

from blocks.base import SETUP_LOCK, EndpointBlock, OutcomeUnknown
from blocks.credentials import IntegrationAccountCredentials
from twoway import jsontext
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
from twoway.errors import Fatal, PreconditionFailed, Retriable, Skippable, SyncError
from twoway.retry import RetryPolicy, retry_after_seconds
from twoway.values import as_utc, canonical, parse_timestamp

BATCH_LIMIT = 20  # requests per Graph $batch call
RETRIABLE_STATUSES = frozenset({408, 423, 429, 500, 502, 503, 504, 509})
#: transient answers after which a request may have been applied (a gateway gave up on a
#: backend still working): sending a create again could make a second item
OUTCOME_UNKNOWN = frozenset({500, 502, 504})
TOKEN_MARGIN = 60.0  # seconds before expiry a cached token is renewed


def safe_url(url: str) -> str:
    """A URL without its query string (delta tokens, skip tokens), for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path


class _DeltaGone(Exception):
    """The delta token is no longer valid (410 Gone): read everything again."""


class SharePointList(EndpointBlock):
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
    page_size: int = Field(200, ge=1, le=5000, description="Items per read page ($top)")
    retry_attempts: int = Field(5, ge=1, le=50, description="Tries per request or batch")
    read_modifiers: bool = Field(
        True,
        description="Read changed items again to learn lastModifiedBy (the delta feed omits "
        "it); when off, echoes are caught by the values hash only",
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

    _client: httpx.Client | None = PrivateAttr(None)
    _token: str | None = PrivateAttr(None)
    _token_expires: float = PrivateAttr(0.0)
    _transport: httpx.BaseTransport | None = PrivateAttr(None)
    _sleep: Callable[[float], Any] = PrivateAttr(time.sleep)
    _rng: random.Random = PrivateAttr(default_factory=random.Random)
    _fresh_when_pickled = {
        "_client": None,
        "_token": None,
        "_token_expires": 0.0,
        "_transport": None,
    }

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
        }

    # -- plumbing ---------------------------------------------------------------------

    def use_transport(self, transport: httpx.BaseTransport | None) -> None:
        """Send requests through ``transport`` (tests, custom proxies); closes the client."""
        self.close()
        self._transport = transport

    def use_sleep(self, sleep: Callable[[float], Any], rng: random.Random | None = None) -> None:
        """Wait between retries with ``sleep`` (tests record the waits instead), drawing the
        jitter from ``rng`` when given (a seeded source makes the waits replayable)."""
        self._sleep = sleep
        if rng is not None:
            self._rng = rng

    def _where(self) -> str:
        return f"SharePoint list {self.list!r} on {safe_url(self.graph_url)}"

    def _policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retry_attempts)

    def client(self) -> httpx.Client:
        """The block's HTTP client, created on first use (one for all of a load's threads)."""
        with SETUP_LOCK:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=self.timeout_seconds,
                    transport=self._transport,
                    headers={"Accept": "application/json"},
                )
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._token = None
        self._token_expires = 0.0

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

    # -- authentication ---------------------------------------------------------------

    def _access_token(self, *, stale: str | None = None) -> str:
        """A cached client-credentials token, renewed near expiry or when it is ``stale``
        (refused); a token another thread renewed meanwhile is taken as it is."""
        with SETUP_LOCK:
            if (
                self._token
                and self._token != stale
                and time.monotonic() < self._token_expires - TOKEN_MARGIN
            ):
                return self._token
            return self._new_token()

    def _new_token(self) -> str:
        """Ask the token endpoint for a client-credentials token and cache it."""
        creds = self.credentials
        if creds is None or not creds.client_id or creds.client_secret is None:
            raise Fatal(f"{self._where()}: no client id and client secret in the credentials")
        url = self._token_endpoint()
        form = {
            "grant_type": "client_credentials",
            "client_id": creds.client_id,
            "client_secret": creds.client_secret.get_secret_value(),
            "scope": f"{self.graph_url.rstrip('/')}/.default",
        }

        def request() -> httpx.Response:
            response = self.client().post(url, data=form)
            if response.status_code in RETRIABLE_STATUSES:
                raise Retriable(
                    f"token endpoint {safe_url(url)} answered {response.status_code}",
                    status=response.status_code,
                    retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                )
            return response

        response = self._with_retries(request, f"POST {safe_url(url)}")
        if response.status_code != 200:
            raise Fatal(
                f"{self._where()}: the token endpoint {safe_url(url)} refused the client "
                f"credentials ({response.status_code} {_aad_error(response)})",
                status=response.status_code,
            )
        try:
            body = response.json()
            token = str(body["access_token"])
            lifetime = float(body.get("expires_in", 3599))
        except (ValueError, KeyError, TypeError):
            raise Fatal(f"{self._where()}: unreadable answer from {safe_url(url)}") from None
        self._token = token
        self._token_expires = time.monotonic() + lifetime
        return token

    # -- requests ---------------------------------------------------------------------

    def _with_retries(self, fn: Callable[[], httpx.Response], what: str) -> httpx.Response:
        """Run ``fn`` under the retry policy; network errors end as Retriable or Fatal."""
        try:
            return self._policy().call(fn, sleep=self._sleep, rng=self._rng)
        except httpx.ConnectError as exc:
            raise Fatal(f"{what}: cannot reach {self._where()} ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise Retriable(f"{what}: {type(exc).__name__} talking to {self._where()}") from None

    def _send_once(self, what: str, send: Callable[[], httpx.Response]) -> httpx.Response:
        """``send``, with the failures after which it may have been applied made final."""
        try:
            return send()
        except Retriable as exc:
            if exc.status in OUTCOME_UNKNOWN:
                raise OutcomeUnknown(exc) from None
            raise
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
            raise  # never sent: safe to send again
        except httpx.TransportError as exc:
            raise OutcomeUnknown(
                Retriable(f"{what}: {type(exc).__name__} talking to {self._where()}")
            ) from None

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One authenticated request; a 401 renews the token once, transient statuses raise."""
        client = self.client()
        headers = dict(kwargs.pop("headers", None) or {})
        token = self._access_token()
        headers["Authorization"] = f"Bearer {token}"
        response = client.request(method, url, headers=headers, **kwargs)
        if response.status_code == 401:
            headers["Authorization"] = f"Bearer {self._access_token(stale=token)}"
            response = client.request(method, url, headers=headers, **kwargs)
            if response.status_code == 401:
                raise Fatal(
                    f"{method} {safe_url(url)}: access refused with a fresh token "
                    f"({_graph_error(response)})",
                    status=401,
                )
        if response.status_code in RETRIABLE_STATUSES:
            raise Retriable(
                f"{method} {safe_url(url)} answered {response.status_code} ({_graph_error(response)})",
                status=response.status_code,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        return response

    def _call(
        self,
        method: str,
        url: str,
        *,
        ok: tuple[int, ...] = (200,),
        once: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """A request with retries; any status outside ``ok`` is Fatal. With ``once`` (the
        request creates items), it is not sent again after an answer that leaves open
        whether it was applied (a gateway timeout, a read timeout): that raises Retriable
        for the caller to report as an unknown outcome."""
        self._check_origin(url)
        what = f"{method} {safe_url(url)}"

        def send() -> httpx.Response:
            if once:
                return self._send_once(what, lambda: self._send(method, url, **kwargs))
            return self._send(method, url, **kwargs)

        try:
            response = self._with_retries(send, what)
        except OutcomeUnknown as exc:
            raise exc.error from None
        if response.status_code not in ok:
            raise Fatal(
                f"{method} {safe_url(url)} answered {response.status_code} "
                f"({_graph_error(response)}) on {self._where()}",
                status=response.status_code,
            )
        return response

    def _check_origin(self, url: str) -> None:
        """Never send our token to a host other than the configured Graph URL."""
        mine, theirs = urlsplit(self.graph_url), urlsplit(url)
        if (mine.scheme, mine.netloc) != (theirs.scheme, theirs.netloc):
            raise Fatal(
                f"refusing to call {safe_url(url)}: it is not on {safe_url(self.graph_url)}"
            )

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
        policy = self._policy()
        pending = dict(requests)
        done: dict[str, dict[str, Any]] = {}
        attempt = 1
        while True:
            envelope = {"requests": [{"id": rid, **req} for rid, req in pending.items()]}
            creates = any(req["method"] == "POST" for req in pending.values())
            response = self._call("POST", self._api("$batch"), json=envelope, once=creates)
            try:
                answers = {str(r["id"]): r for r in response.json()["responses"]}
            except (ValueError, KeyError, TypeError):
                raise Fatal(f"unreadable $batch answer from {self._where()}") from None
            retry: dict[str, dict[str, Any]] = {}
            waits: builtins.list[float] = []
            statuses: builtins.list[int] = []
            for rid, req in pending.items():
                answer = answers.get(rid)
                status = int(answer.get("status", 0)) if answer else 0
                if req["method"] == "POST" and (answer is None or status in OUTCOME_UNKNOWN):
                    done[rid] = answer or {"id": rid, "status": 504, "body": {}}
                elif answer is None or status in RETRIABLE_STATUSES:
                    retry[rid] = req
                    statuses.append(status)
                    wait = retry_after_seconds(_header(answer or {}, "Retry-After"))
                    if wait is not None:
                        waits.append(wait)
                elif status == 401:
                    raise Fatal(
                        f"{req['method']} {req['url']}: access refused inside $batch", status=401
                    )
                else:
                    done[rid] = answer
            if not retry:
                return done
            wait = max(waits) if waits else None
            if attempt >= policy.attempts and keep_failures:
                for rid in retry:
                    done[rid] = answers.get(rid) or {"id": rid, "status": 503, "body": {}}
                return done
            if attempt >= policy.attempts:
                raise Retriable(
                    f"{len(retry)} request(s) in a $batch to {self._where()} still failing after "
                    f"{attempt} tries (status {', '.join(str(s) for s in sorted(set(statuses)))})",
                    status=statuses[0] or None,
                    retry_after=wait,
                )
            self._sleep(policy.delay(attempt, self._rng, wait))
            attempt += 1
            pending = retry

    # -- reading ----------------------------------------------------------------------

    def _expand(self) -> str:
        wanted = builtins.list(dict.fromkeys(self.columns_to_sync))
        for extra in (self.modified_at, self.modified_by):
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
            version=item.get("eTag") or fields.get("@odata.etag"),
        )

    def columns(self) -> set[str]:
        """The list's columns, plus the item properties records are read from (``id``,
        ``lastModifiedDateTime``, ``lastModifiedBy``, ...): ``twoway check`` looks for the
        ``key``, ``modified_at`` and ``modified_by`` defaults among these."""
        response = self._call("GET", self._api(f"{self._list_path()}/columns"))
        names = {str(c["name"]) for c in response.json().get("value", []) if c.get("name")}
        return names | {"id"} | set(_ITEM_PROPERTIES)

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        if cursor is not None:
            pages = self._read_delta(cursor)
            try:
                first = next(pages)
            except _DeltaGone:
                pass  # the token expired: read everything and start a new feed
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
        delta_link = start.json().get("@odata.deltaLink")
        if not delta_link:
            raise Fatal(f"{self._where()}: the delta feed gave no @odata.deltaLink")
        url: str | None = self._api(f"{self._list_path()}/items")
        params: dict[str, str] | None = {"$expand": self._expand(), "$top": str(self.page_size)}
        seen: set[str] = set()
        while url:
            if url in seen:
                raise Fatal(f"{self._where()}: the item pages repeat a next link")
            seen.add(url)
            page = jsontext.loads(self._call("GET", url, params=params).content)
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
        while True:
            if url in seen:
                raise Fatal(f"{self._where()}: the delta feed repeats a next link")
            seen.add(url)
            response = self._call("GET", url, ok=(200, 410), params=params)
            requests = 1
            if response.status_code == 410:
                raise _DeltaGone()
            page = jsontext.loads(response.content)
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
            if self.read_modifiers and latest:
                # the feed leaves out lastModifiedBy: read the changed items again, 20 a call;
                # an item gone meanwhile is reported deleted by the next round of the feed
                records, calls = self._read_items(builtins.list(latest))
                requests += calls
            else:
                records = [self._record(item) for item in latest.values()]
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
                        f"({_sub_error(answer)})",
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
            return {
                "method": "POST",
                "url": items,
                "headers": {"Content-Type": "application/json"},
                "body": {"fields": {k: _wire(v) for k, v in op.values.items()}},
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
        error: SyncError
        what = f"item {key}" if key else "new item"
        if status == 412:
            error = PreconditionFailed(
                f"{what} in {self._where()} changed since it was read (412)", status=412
            )
        elif status == 404 and isinstance(op, Delete):
            return WriteResult(op=op, key=op.key)  # already gone: the delete's goal holds
        elif status == 404:
            error = Skippable(f"{what} does not exist in {self._where()}", status=404)
        elif status in RETRIABLE_STATUSES or status == 0:
            error = Retriable(
                f"{what}: {status} {_sub_error(answer)} after retries",
                status=status or None,
                retry_after=retry_after_seconds(_header(answer, "Retry-After")),
            )
        else:
            error = Skippable(f"{what}: {status} {_sub_error(answer)}", status=status)
        return WriteResult(op=op, key=key, error=error)


_ITEM_PROPERTIES = (
    "lastModifiedDateTime",
    "createdDateTime",
    "lastModifiedBy",
    "createdBy",
    "eTag",
)


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


def _graph_error(response: httpx.Response) -> str:
    """``code: message`` of a Graph error answer (never request data or tokens)."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return response.reason_phrase or str(response.status_code)
    if isinstance(error, dict):
        return f"{error.get('code', 'error')}: {str(error.get('message', ''))[:200]}"
    return str(error)[:200]


def _sub_error(answer: dict[str, Any]) -> str:
    body = answer.get("body")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code', 'error')}: {str(error.get('message', ''))[:200]}"
    return "no error details"


def _aad_error(response: httpx.Response) -> str:
    """The identity platform's error code and AADSTS number, without trace details."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    codes = body.get("error_codes") or []
    number = f" AADSTS{codes[0]}" if codes else ""
    return f"{body.get('error', 'error')}{number}"
