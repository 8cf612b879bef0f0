"""A Graph-style JSON REST collection: the in-house API shape the generic REST connector targets.

Used by tests, the benchmark suite and anyone trying a definition offline::

    python -m twoway.simulators.rest --port 8765 --token token-sync=sync-bot

Endpoints (paths configurable): ``GET /items?modified_since=ISO&$top=N`` pages records in
``(modified_at, id)`` order with a keyset ``$skiptoken`` in ``@odata.nextLink``;
``POST /items`` creates; ``GET/PATCH/DELETE /items/{id}`` with ``If-Match`` (412 when stale);
``POST /$batch`` takes Graph's JSON batch shape. Deleted records stay in incremental reads as
``{"id": ..., "@removed": {"reason": "deleted"}, ...}`` tombstones; full reads leave them out.

Records live in memory (a dict, plus an index sorted by ``(modified_at, id)`` for keyset
paging), each kept as its JSON text, so a page of a million-record collection is a join of
ready texts and the records take little memory.
``modified_at`` is assigned by the server and strictly increases from write to write, so a
reader paging by ``(modified_at, id)`` never skips a record written while it pages.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import secrets
import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twoway.simulators.faults import FaultPlan
from twoway.values import parse_timestamp

#: fields the server owns; a client may not set them
RESERVED = frozenset({"id", "modified_at", "modified_by", "version", "@removed"})
DEFAULT_TOKENS = {"token-sync": "sync-bot", "token-alice": "alice"}


def format_stamp(value: datetime) -> str:
    """ISO 8601 UTC with microseconds and ``Z``; sorts as text in time order."""
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")[:26] + "Z"  # drops "+00:00"


def _json_default(value: Any) -> Any:
    """JSON for the Python values the in-process API accepts (the HTTP API is JSON already)."""
    if isinstance(value, datetime):
        return format_stamp(value)
    if hasattr(value, "isoformat"):  # date, time
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default).encode


class NotFound(KeyError):
    """No live record has this id."""


class Stale(ValueError):
    """The caller's If-Match version is not the record's version."""


class _Item:
    """One record (or its tombstone), kept as its JSON text only: pages join the texts as
    they are, and a million records take a fraction of the memory dicts would."""

    __slots__ = ("id", "modified_at", "modified_by", "version", "deleted", "raw")

    def __init__(
        self,
        id: str,
        fields: dict[str, Any],
        modified_at: str,
        modified_by: str,
        version: int,
    ):
        self.id = id
        self.modified_at = modified_at
        self.modified_by = modified_by
        self.version = version
        self.deleted = False
        self.raw = _encode(self._shape(fields)).encode("utf-8")

    def _shape(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The record as the API shows it; a tombstone in Graph's ``@removed`` shape."""
        if self.deleted:
            return {
                "id": self.id,
                "@removed": {"reason": "deleted"},
                "modified_at": self.modified_at,
                "modified_by": self.modified_by,
                "version": self.version,
            }
        return {
            "id": self.id,
            **fields,
            "modified_at": self.modified_at,
            "modified_by": self.modified_by,
            "version": self.version,
        }

    def public(self) -> dict[str, Any]:
        """The record as the API shows it."""
        return json.loads(self.raw)

    def fields(self) -> dict[str, Any]:
        """The record's own fields (without the server's)."""
        record = json.loads(self.raw)
        for name in RESERVED:
            record.pop(name, None)
        return record

    def rewrite(
        self, fields: dict[str, Any], modified_at: str, modified_by: str, deleted: bool
    ) -> dict[str, Any]:
        """Apply a write: new fields, stamps and version; returns the record as shown."""
        self.modified_at = modified_at
        self.modified_by = modified_by
        self.version += 1
        self.deleted = deleted
        record = self._shape(fields)
        self.raw = _encode(record).encode("utf-8")
        return record

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


_NATIVE = frozenset({str, int, float, bool, type(None), list, dict})


def _json_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields without the server's own, non-JSON values (datetime, Decimal...) converted
    once, on write (the common all-JSON case skips the per-field loop: bulk loads)."""
    fields = dict(values)
    for name in RESERVED:
        fields.pop(name, None)
    if not _NATIVE.issuperset(map(type, fields.values())):
        for name, value in fields.items():
            if type(value) not in _NATIVE:
                fields[name] = _json_default(value)
    return fields


def _check_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    bad = sorted(k for k in values if k in RESERVED)
    if bad:
        raise ValueError(f"field(s) {', '.join(bad)} are set by the server and cannot be written")
    return _json_fields(values)


class RestState:
    """The collection's records, in memory and thread-safe (one lock around every operation).

    ``clock`` gives write times (tests may pass a virtual clock); the server bumps a time
    that is not after the previous write's by one microsecond, so stamps strictly increase.
    """

    def __init__(self, clock: Callable[[], datetime] | None = None):
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._items: dict[str, _Item] = {}
        self._index: list[tuple[str, str]] = []  # (modified_at, id), sorted; may hold stale entries
        self._stale = 0
        self._last_stamp = ""
        self._idempotency: dict[str, str] = {}  # Idempotency-Key -> id of the record it created

    # -- bookkeeping ------------------------------------------------------------------

    def _stamp(self) -> str:
        now = self._clock()
        stamp = format_stamp(now)
        if stamp <= self._last_stamp:
            last = datetime.fromisoformat(self._last_stamp)
            stamp = format_stamp(last + timedelta(microseconds=1))
        self._last_stamp = stamp
        return stamp

    def _index_add(self, item: _Item) -> None:
        entry = (item.modified_at, item.id)
        if not self._index or entry > self._index[-1]:
            self._index.append(entry)
        else:
            insort(self._index, entry)

    def _write(
        self, item: _Item, fields: dict[str, Any], user: str, deleted: bool = False
    ) -> dict[str, Any]:
        """Stamp a write (new modified_at, modifier, version) and re-index the record."""
        record = item.rewrite(fields, self._stamp(), user, deleted)
        self._stale += 1  # the old index entry no longer matches the item
        self._index_add(item)
        if self._stale > 1024 and self._stale * 2 > len(self._index):
            self._compact()
        return record

    def _compact(self) -> None:
        """Drop index entries of superseded writes (and repeats of one entry)."""
        items, kept = self._items, []
        for entry in self._index:
            if items[entry[1]].modified_at == entry[0] and (not kept or kept[-1] != entry):
                kept.append(entry)
        self._index = kept
        self._stale = 0

    def _live(self, id: str) -> _Item:
        item = self._items.get(id)
        if item is None or item.deleted:
            raise NotFound(id)
        return item

    @staticmethod
    def _check_version(item: _Item, if_match: str | None) -> None:
        if if_match is None:
            return
        for tag in if_match.split(","):
            tag = tag.strip()
            if tag == "*":
                return
            if tag.startswith("W/"):
                tag = tag[2:]
            if tag.strip('"') == str(item.version):
                return
        raise Stale(item.id)

    # -- operations (HTTP and in-process) ---------------------------------------------

    def create(
        self, values: Mapping[str, Any], user: str, idempotency_key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Create a record; returns it and whether it is new (False: an idempotent replay)."""
        fields = _check_fields(values)
        with self._lock:
            if idempotency_key is not None and idempotency_key in self._idempotency:
                return self._items[self._idempotency[idempotency_key]].public(), False
            stamp = self._stamp()
            item = _Item(secrets.token_hex(16), fields, stamp, user, 1)
            self._items[item.id] = item
            self._index_add(item)
            if idempotency_key is not None:
                self._idempotency[idempotency_key] = item.id
            return item.public(), True

    def get(self, id: str) -> dict[str, Any]:
        """The live record ``id``; NotFound when missing or deleted."""
        with self._lock:
            return self._live(id).public()

    def get_raw(self, id: str) -> tuple[bytes, str]:
        """The live record's JSON text and ETag."""
        with self._lock:
            item = self._live(id)
            return item.raw, item.etag

    def update(
        self, id: str, values: Mapping[str, Any], user: str, if_match: str | None = None
    ) -> dict[str, Any]:
        """Merge ``values`` into record ``id``; Stale when ``if_match`` is not its version."""
        fields = _check_fields(values)
        with self._lock:
            item = self._live(id)
            self._check_version(item, if_match)
            merged = item.fields()
            merged.update(fields)
            return self._write(item, merged, user)

    def delete(self, id: str, user: str, if_match: str | None = None) -> None:
        """Delete record ``id``, leaving a tombstone for incremental readers."""
        with self._lock:
            item = self._live(id)
            self._check_version(item, if_match)
            self._write(item, {}, user, deleted=True)

    def page(
        self, since: str | None, after: tuple[str, str] | None, top: int
    ) -> tuple[list[bytes], tuple[str, str] | None]:
        """Up to ``top`` records in ``(modified_at, id)`` order, as JSON texts, and the keyset
        position to continue from (None on the last page).

        ``since`` (inclusive) makes an incremental read, which shows tombstones; None is a
        full read of live records. ``after`` continues past that ``(modified_at, id)``.
        """
        with self._lock:
            index, items = self._index, self._items
            if after is not None:
                pos = bisect_right(index, after)
            elif since is not None:
                pos = bisect_left(index, (since,))
            else:
                pos = 0
            found: list[_Item] = []
            end = len(index)
            while pos < end and len(found) <= top:
                stamp, id = index[pos]
                pos += 1
                item = items[id]
                if item.modified_at != stamp or (item.deleted and since is None):
                    continue
                found.append(item)
            more = len(found) > top
            found = found[:top]
            last = (found[-1].modified_at, found[-1].id) if more else None
            return [item.raw for item in found], last

    # -- the people's API: tests play users through these ------------------------------

    def user_create(self, values: Mapping[str, Any], user: str = "alice") -> dict[str, Any]:
        """Create a record as ``user`` (someone other than the integration account)."""
        return self.create(values, user)[0]

    def user_update(
        self, id: str, values: Mapping[str, Any], user: str = "alice"
    ) -> dict[str, Any]:
        """Change some fields of record ``id`` as ``user``."""
        return self.update(id, values, user)

    def user_delete(self, id: str, user: str = "alice") -> None:
        """Delete record ``id`` as ``user``."""
        self.delete(id, user)

    def load(self, records: Iterable[Mapping[str, Any]], user: str = "loader") -> int:
        """Bulk-load records (benchmarks); each may carry ``id``, ``modified_at``,
        ``modified_by`` and ``version``, else the server assigns them. Returns the count."""
        count = 0
        with self._lock:
            stamp = self._stamp()
            for record in records:
                fields = _json_fields(record)
                id = str(record.get("id") or secrets.token_hex(16))
                when = record.get("modified_at")
                if when is None:
                    at = stamp
                elif isinstance(when, datetime):
                    at = format_stamp(when)
                else:
                    parsed = parse_timestamp(when)
                    if parsed is None:
                        raise ValueError(f"record {id}: unreadable modified_at {when!r}")
                    at = format_stamp(parsed)
                if id in self._items:
                    self._stale += 1
                item = _Item(
                    id,
                    fields,
                    at,
                    str(record.get("modified_by") or user),
                    int(record.get("version") or 1),
                )
                self._items[id] = item
                self._index.append((at, id))
                count += 1
            self._index.sort()
            if self._stale:
                self._compact()
            self._last_stamp = max(self._last_stamp, self._index[-1][0] if self._index else "")
        return count

    def records(self) -> list[dict[str, Any]]:
        """Every live record (tests)."""
        with self._lock:
            return [i.public() for i in self._items.values() if not i.deleted]

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for i in self._items.values() if not i.deleted)


# -- HTTP ---------------------------------------------------------------------------------


@dataclass
class _Answer:
    """One response, as bytes of JSON (or no body)."""

    status: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> _Answer:
    body = _encode({"error": {"code": code, "message": message}}).encode("utf-8")
    return _Answer(status, body, headers or {})


def _encode_token(since: str | None, last: tuple[str, str], top: int) -> str:
    text = _encode([since, last[0], last[1], top]).encode("utf-8")
    return base64.urlsafe_b64encode(text).decode("ascii").rstrip("=")


def _decode_token(token: str) -> tuple[str | None, tuple[str, str], int]:
    try:
        padded = token + "=" * (-len(token) % 4)
        since, stamp, id, top = json.loads(base64.urlsafe_b64decode(padded))
        if not (isinstance(stamp, str) and isinstance(id, str) and isinstance(top, int)):
            raise ValueError
        return since, (stamp, id), top
    except (ValueError, TypeError, binascii.Error):
        raise ValueError("$skiptoken is not one this server issued") from None


class RestApp:
    """The HTTP face of a :class:`RestState`: routing, auth, faults, batch."""

    def __init__(
        self,
        state: RestState,
        *,
        collection: str = "/items",
        item: str = "/items/{id}",
        batch: str | None = "/$batch",
        cursor_param: str = "modified_since",
        tokens: Mapping[str, str] | None = None,
        require_auth: bool | None = None,
        default_user: str = "anonymous",
        faults: FaultPlan | None = None,
        max_batch: int = 20,
        default_page_size: int = 100,
        max_page_size: int = 10_000,
    ):
        if "{id}" not in item:
            raise ValueError(f"item path {item!r} must contain {{id}}")
        self.state = state
        self.collection = collection.rstrip("/") or "/"
        self.item_prefix, _, self.item_suffix = item.partition("{id}")
        self.batch = batch
        self.cursor_param = cursor_param
        self.tokens = dict(tokens or {})
        self.require_auth = bool(self.tokens) if require_auth is None else require_auth
        self.default_user = default_user
        self.faults = faults or FaultPlan()
        self.max_batch = max_batch
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size

    # -- plumbing ---------------------------------------------------------------------

    def caller(self, authorization: str | None) -> str | None:
        """The account a request acts as; None when it must be refused (401)."""
        token = None
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        if token is not None and token in self.tokens:
            return self.tokens[token]
        return None if self.require_auth else self.default_user

    def fault_answer(self, fault: str) -> _Answer | None:
        """The answer a drawn fault gives (None for ``slow``, which only delays)."""
        retry = {"Retry-After": str(self.faults.retry_after)}
        if fault == "lock":
            return _error(423, "resourceLocked", "the record is locked by another operation")
        if fault == "throttle":
            return _error(429, "tooManyRequests", "too many requests; retry later", retry)
        if fault == "unavailable":
            return _error(
                503, "serviceUnavailable", "the service is unavailable; retry later", retry
            )
        if fault == "timeout":
            return _error(504, "gatewayTimeout", "the request timed out")
        return None

    def lost_answer(self, fault: str | None, answer: _Answer) -> _Answer:
        """The answer the client gets: a ``lost`` fault replaces it, after the request was
        applied, with a gateway timeout."""
        if fault == "lost":
            return _error(504, "gatewayTimeout", "the request timed out")
        return answer

    async def fault_delay(self, fault: str | None) -> None:
        if fault == "timeout":
            await asyncio.sleep(self.faults.timeout_seconds)
        elif fault == "slow":
            await asyncio.sleep(self.faults.slow_seconds)

    def _item_id(self, path: str) -> str | None:
        prefix, suffix = self.item_prefix, self.item_suffix
        if (
            path.startswith(prefix)
            and path.endswith(suffix)
            and len(path) > len(prefix) + len(suffix)
        ):
            id = path[len(prefix) : len(path) - len(suffix)] if suffix else path[len(prefix) :]
            if "/" not in id:
                return unquote(id)
        return None

    # -- one request, shared by plain HTTP and batch items ------------------------------

    def dispatch(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: Any,
        user: str,
        base: str,
    ) -> _Answer:
        """Answer one request; ``headers`` have lower-case names; ``body`` is parsed JSON."""
        path = path.rstrip("/") or "/"
        if path == self.collection:
            if method == "GET":
                return self._list(query, base)
            if method == "POST":
                if not isinstance(body, dict):
                    return _error(400, "invalidRequest", "the body must be a JSON object")
                try:
                    record, new = self.state.create(body, user, headers.get("idempotency-key"))
                except ValueError as exc:
                    return _error(400, "invalidRequest", str(exc))
                return self._record(201 if new else 200, record, base)
            return _error(405, "methodNotAllowed", f"{method} is not allowed on {path}")
        id = self._item_id(path)
        if id is None:
            return _error(404, "notFound", f"no such resource {path}")
        try:
            if method == "GET":
                raw, etag = self.state.get_raw(id)
                return _Answer(200, raw, {"ETag": etag})
            if method == "PATCH":
                if not isinstance(body, dict):
                    return _error(400, "invalidRequest", "the body must be a JSON object")
                record = self.state.update(id, body, user, headers.get("if-match"))
                return self._record(200, record, base)
            if method == "DELETE":
                self.state.delete(id, user, headers.get("if-match"))
                return _Answer(204)
        except NotFound:
            return _error(404, "itemNotFound", f"record {id} does not exist")
        except Stale:
            return _error(412, "preconditionFailed", f"record {id} changed since the given version")
        except ValueError as exc:
            return _error(400, "invalidRequest", str(exc))
        return _error(405, "methodNotAllowed", f"{method} is not allowed on {path}")

    def _record(self, status: int, record: dict[str, Any], base: str) -> _Answer:
        headers = {"ETag": f'"{record["version"]}"'}
        if status == 201:
            headers["Location"] = base + self.item_prefix + record["id"] + self.item_suffix
        return _Answer(status, _encode(record).encode("utf-8"), headers)

    def _list(self, query: Mapping[str, str], base: str) -> _Answer:
        after = None
        try:
            if "$skiptoken" in query:
                since, after, top = _decode_token(query["$skiptoken"])
            else:
                since = None
                text = query.get(self.cursor_param)
                if text:
                    parsed = parse_timestamp(text)
                    if parsed is None:
                        raise ValueError(
                            f"{self.cursor_param} {text!r} is not an ISO 8601 timestamp"
                        )
                    since = format_stamp(parsed)
                top = self.default_page_size
                if "$top" in query:
                    try:
                        top = int(query["$top"])
                    except ValueError:
                        raise ValueError(f"$top {query['$top']!r} is not a whole number") from None
                    if top < 1:
                        raise ValueError("$top must be at least 1")
        except ValueError as exc:
            return _error(400, "invalidRequest", str(exc))
        top = min(top, self.max_page_size)
        raws, last = self.state.page(since, after, top)
        parts = [b'{"value":[', b",".join(raws), b"]"]
        if last is not None:
            link = f"{base}{self.collection}?$skiptoken={_encode_token(since, last, top)}"
            parts += [b',"@odata.nextLink":', _encode(link).encode("utf-8")]
        parts.append(b"}")
        return _Answer(200, b"".join(parts))

    # -- ASGI -----------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        user = self.caller(request.headers.get("authorization"))
        if user is None:
            answer = _error(
                401,
                "unauthenticated",
                "a valid bearer token is required",
                {"WWW-Authenticate": "Bearer"},
            )
            return _response(answer)
        base = f"{request.url.scheme}://{request.url.netloc}"
        path = request.url.path
        if self.batch is not None and path == self.batch:
            if request.method != "POST":
                return _response(_error(405, "methodNotAllowed", "the batch endpoint takes POST"))
            return _response(await self._batch(request, user, base))
        fault = self.faults.draw()
        await self.fault_delay(fault)
        answer = self.fault_answer(fault) if fault else None
        if answer is not None:
            return _response(answer)
        body = None
        if request.method in ("POST", "PATCH", "PUT"):
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return _response(_error(400, "invalidRequest", "the body is not valid JSON"))
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer = self.dispatch(
            request.method, path, dict(request.query_params), headers, body, user, base
        )
        return _response(self.lost_answer(fault, answer))

    async def _batch(self, request: Request, user: str, base: str) -> _Answer:
        """Graph's JSON batch: each request gets its own status; faults are drawn per request."""
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalidRequest", "the body is not valid JSON")
        requests = payload.get("requests") if isinstance(payload, dict) else None
        if not isinstance(requests, list) or not requests:
            return _error(400, "invalidRequest", "the body needs a non-empty 'requests' list")
        if len(requests) > self.max_batch:
            return _error(
                400,
                "invalidRequest",
                f"a batch holds at most {self.max_batch} requests, got {len(requests)}",
            )
        seen: set[str] = set()
        for sub in requests:
            if not isinstance(sub, dict) or not all(
                isinstance(sub.get(k), str) for k in ("id", "method", "url")
            ):
                return _error(
                    400, "invalidRequest", "each request needs string 'id', 'method' and 'url'"
                )
            if sub["id"] in seen:
                return _error(400, "invalidRequest", f"request id {sub['id']!r} is used twice")
            seen.add(sub["id"])
        faults = [self.faults.draw() for _ in requests]
        if "timeout" in faults:
            await self.fault_delay("timeout")
        elif "slow" in faults:
            await self.fault_delay("slow")
        parts = []
        for sub, fault in zip(requests, faults, strict=True):
            answer = self.fault_answer(fault) if fault else None
            if answer is None:
                answer = self.lost_answer(fault, self._batch_item(sub, user, base))
            head = _encode({"id": sub["id"], "status": answer.status, "headers": answer.headers})
            body = answer.body if answer.body is not None else b"null"
            parts.append(head[:-1].encode("utf-8") + b',"body":' + body + b"}")
        return _Answer(200, b'{"responses":[' + b",".join(parts) + b"]}")

    def _batch_item(self, sub: dict[str, Any], user: str, base: str) -> _Answer:
        split = urlsplit(sub["url"])
        path = split.path if split.path.startswith("/") else "/" + split.path
        if self.batch is not None and path == self.batch:
            return _error(400, "invalidRequest", "a batch cannot contain a batch")
        headers = sub.get("headers") or {}
        if not isinstance(headers, dict):
            return _error(400, "invalidRequest", "'headers' must be an object")
        headers = {str(k).lower(): str(v) for k, v in headers.items()}
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        return self.dispatch(
            sub["method"].upper(), path, query, headers, sub.get("body"), user, base
        )


def _response(answer: _Answer) -> Response:
    headers = dict(answer.headers)
    if answer.body is None:
        return Response(status_code=answer.status, headers=headers)
    return Response(
        answer.body, status_code=answer.status, headers=headers, media_type="application/json"
    )


def create_app(state: RestState | None = None, **options: Any) -> Starlette:
    """The ASGI app serving ``state`` (a fresh one when None).

    ``options`` go to :class:`RestApp` (paths, ``tokens``, ``faults``, ``max_batch``, page
    sizes); ``app.state.rest`` is that RestApp, so tests can reach its settings.
    """
    rest = RestApp(state if state is not None else RestState(), **options)
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    app = Starlette(routes=[Route("/{path:path}", rest.handle, methods=methods)])
    app.state.rest = rest
    return app


def serve(
    port: int = 8765, host: str = "127.0.0.1", state: RestState | None = None, **options: Any
) -> None:
    """Serve the collection until interrupted (blocking; the CLI's entry)."""
    import uvicorn

    uvicorn.run(
        create_app(state, **options), host=host, port=port, log_level="warning", access_log=False
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m twoway.simulators.rest``: serve a collection on 127.0.0.1."""
    parser = argparse.ArgumentParser(
        description="A Graph-style JSON REST collection for trying twoway offline."
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN=ACCOUNT",
        help="a bearer token and the account it acts as (repeatable); none: no auth",
    )
    parser.add_argument("--faults", default="", help="fault rates, e.g. throttle=0.05,lock=0.02")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault draws")
    parser.add_argument("--max-batch", type=int, default=20, help="requests per $batch call")
    parser.add_argument(
        "--load", default=None, help="a JSON file with a list of records to start with"
    )
    args = parser.parse_args(argv)
    tokens = {}
    for pair in args.token:
        token, sep, account = pair.partition("=")
        if not sep or not token or not account:
            parser.error(f"--token {pair!r} must be written TOKEN=ACCOUNT")
        tokens[token] = account
    state = RestState()
    if args.load:
        with open(args.load, encoding="utf-8") as handle:
            state.load(json.load(handle))
    serve(
        args.port,
        args.host,
        state,
        tokens=tokens or None,
        faults=FaultPlan.parse(args.faults, args.seed),
        max_batch=args.max_batch,
    )


if __name__ == "__main__":
    main()
