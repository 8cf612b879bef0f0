"""The Directus endpoint block: one collection of a Directus 10 project, through its REST API.

Reads: records whose ``date_updated`` (or, never updated, ``date_created``: Directus leaves
``date_updated`` NULL on create) is at or after the cursor minus an overlap window, sorted
by key and paged by key (``_gt`` the last key read); deletions come from the activity log
(``/activity``, action ``delete``, this collection) since the same cursor. Echoes: the
token's user (``/users/me``) in ``user_updated`` (``user_created`` for records never
updated) is reported as ``integration_account``. Writes: creates as one array per batch;
updates by query, filtered on the key and the ``date_updated`` that was read (``_null``
when it was NULL), so a record changed since it was read matches no row and comes back as
a version mismatch instead of being overwritten; deletes likewise, by query. The token
never appears in a message or log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import Field, PrivateAttr, SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.http import (
    Authenticator,
    BearerToken,
    HttpEndpointBlock,
    cursor_text,
    overlap_start,
    reason,
    record_error,
    safe_url,
)
from twoway.contract import ChangeSet, Create, Delete, Op, RawRecord, Update, WriteResult, chunks
from twoway.definition import DirectusSystem
from twoway.errors import Fatal, PreconditionFailed, Retriable, Skippable, SyncError
from twoway.values import canonical, parse_timestamp

#: the version of a record whose ``date_updated`` is NULL (never updated since its create)
NEVER_UPDATED = "never-updated"
#: Directus key types whose values are numbers: other keys cannot name a record
_INTEGER_KEYS = frozenset({"integer", "bigInteger"})
#: keys named in one request's URL filter: Node refuses request lines of more than 16 KB
KEYS_PER_REQUEST = 100
#: what a 2xx answer to a read is; a write may also meet 400, a value Directus refused
_READ_OK = range(200, 300)
_WRITE_OK = (*_READ_OK, 400)


class DirectusCollection(HttpEndpointBlock):
    """A collection of a Directus 10 project kept in step by twoway.

    Example:
        ```python
        from blocks.directus import DirectusCollection
        contacts = DirectusCollection.load("cms-contacts")
        ```
    """

    _block_type_name = "twoway Directus Collection"
    _block_type_slug = "twoway-directus-collection"
    _description = "A collection of a Directus 10 project that twoway keeps in step."

    url: str | None = Field(None, description="The project's URL, e.g. https://cms.example.com")
    collection: str | None = Field(None, description="The collection's name")
    token: SecretStr | None = Field(None, description="Static token of the integration user")
    token_secret: str | None = Field(
        None, description="Instead of token: the name of a Prefect Secret block holding it"
    )
    key: str = Field("id", description="The collection's primary key field")
    modified_at: str | None = Field("date_updated", description="Field set on every update")
    created_at: str | None = Field("date_created", description="Field set on create")
    modified_by: str | None = Field("user_updated", description="Field naming the last editor")
    created_by: str | None = Field("user_created", description="Field naming the creator")
    columns_to_sync: list[str] = Field(default_factory=list, description="Data fields to read")
    page_size: int = Field(500, ge=1, description="Records per page asked for")
    retry_attempts: int = Field(5, ge=1, le=50, description="Tries per request, the first included")
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for one HTTP response")
    overlap_seconds: float = Field(300.0, ge=0, description="Look-back window of incremental reads")
    batch_size: int = Field(100, ge=1, description="Most operations one write() call carries")
    credentials: IntegrationAccountCredentials | None = Field(
        None, description="Instead of token: a credentials block whose token is used"
    )
    retry_deadline_seconds: float = Field(
        900.0, gt=0, description="Most seconds a run waits between retries on this system"
    )
    link_column: str | None = Field(
        None, description="Field stamped with the link id of every item twoway creates"
    )

    _me: str | None = PrivateAttr(None)  # the token's user id
    _fields: dict[str, str] | None = PrivateAttr(None)  # field -> Directus type

    @classmethod
    def _own_settings(cls, system: DirectusSystem) -> dict[str, Any]:
        """Where the collection is and how its records are stamped, from ``kind: directus``."""
        return {
            "url": system.url,
            "collection": system.collection,
            "token": system.token,
            "token_secret": system.token_secret,
            "created_at": system.created_at,
            "created_by": system.created_by,
            "page_size": system.page_size,
            "link_column": system.link_column,
        }

    # -- HTTP: the token, one request ---------------------------------------------------

    def _authenticator(self) -> Authenticator:
        """The static token: given, from a Prefect Secret block, or from a credentials block."""
        if self.token is not None:
            return BearerToken(self.token)
        if self.token_secret is not None:
            from prefect.blocks.system import Secret

            try:
                return BearerToken(SecretStr(str(Secret.load(self.token_secret).get())))
            except ValueError as exc:
                raise Fatal(f"no Prefect Secret block {self.token_secret!r} ({exc})") from None
        if self.credentials is not None and self.credentials.token is not None:
            return BearerToken(self.credentials.token)
        raise Fatal(f"no token configured for Directus collection {self.collection!r}")

    def _timeout(self) -> float:
        return self.timeout

    def _origin(self) -> str | None:
        return self._base()

    def _base(self) -> str:
        if not self.url or not self.collection:
            raise Fatal("a Directus collection needs 'url' and 'collection'")
        return self.url.rstrip("/")

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: Any = None,
        *,
        once: bool = False,
    ) -> Any:
        """The ``data`` of a 2xx answer, through the endpoint's client (its retries, the
        send-once rule with ``once``: a create); a write Directus refused as invalid (400)
        is the record's Skippable, any other answer Fatal."""
        url = self._base() + path
        ok = _READ_OK if method == "GET" else _WRITE_OK
        reply = self.http().send(method, url, ok=ok, once=once, params=params, json=body)
        if reply.status == 400:  # a value Directus refused: this record's error, not the run's
            where = f"{method} {safe_url(url)}"
            raise record_error(400, where, reason(reply.body), deleting=False)  # type: ignore[misc]
        return reply.body.get("data") if isinstance(reply.body, dict) else None

    # -- what the collection is ---------------------------------------------------------

    def _items(self) -> str:
        return f"/items/{quote(self.collection or '', safe='')}"

    def _schema(self) -> dict[str, str]:
        """The collection's fields and their Directus types (asked once)."""
        if self._fields is None:
            try:
                listed = self._request("GET", f"/fields/{quote(self.collection or '', safe='')}")
            except Fatal as exc:
                if exc.status != 403:
                    raise
                raise Fatal(
                    f"Directus collection {self.collection!r} does not exist, or the token's "
                    f"user may not read it ({exc})",
                    status=403,
                ) from None
            self._fields = {f["field"]: str(f.get("type")) for f in listed or []}
            if self.key not in self._fields:
                raise Fatal(f"Directus collection {self.collection!r} has no field {self.key!r}")
        return self._fields

    def _user(self) -> str:
        """The id of the token's user: its changes are ours (asked once)."""
        if self._me is None:
            me = self._request("GET", "/users/me", {"fields": "id"})
            if not isinstance(me, dict) or not me.get("id"):
                raise Fatal("GET /users/me: the token's user has no id")
            self._me = str(me["id"])
        return self._me

    def _present(self, name: str | None) -> str | None:
        """``name`` when the collection has that field, else None."""
        return name if name is not None and name in self._schema() else None

    def _wanted(self) -> str:
        names = [self.key, *self.columns_to_sync]
        names += [self._present(n) for n in (*self._stamps(), self.link_column)]
        return ",".join(dict.fromkeys(n for n in names if n))

    def _stamps(self) -> tuple[str | None, ...]:
        return (self.modified_at, self.created_at, self.modified_by, self.created_by)

    def columns(self) -> set[str]:
        return set(self._schema())

    def add_link_column(self) -> bool:
        """Add the link marker field (``link_column``) when the collection lacks it: a
        nullable, read-only text field that twoway alone writes, on creates. True when it
        was added (the token's user needs the right to change the data model)."""
        if not self.link_column or self.link_column in self._schema():
            return False
        field = {
            "field": self.link_column,
            "type": "string",
            "meta": {"readonly": True, "note": "Link id stamped by twoway on the items it creates"},
            "schema": {"is_nullable": True, "max_length": 64},
        }
        self._request("POST", f"/fields/{quote(self.collection or '', safe='')}", body=field)
        self._fields = None  # read the fields again on next use
        return True

    def max_batch(self) -> int:
        return self.batch_size

    # -- reading ------------------------------------------------------------------------

    def _record(self, item: dict[str, Any]) -> RawRecord:
        """An item as a RawRecord: changed at ``date_updated`` (or ``date_created``), by
        ``user_updated`` (or ``user_created``), the token's user reported as ours."""
        key = item.get(self.key)
        if key is None:
            raise Fatal(f"Directus collection {self.collection!r}: an item has no {self.key!r}")
        updated = item.get(self.modified_at) if self.modified_at else None
        if updated is not None:
            stamp, by = updated, item.get(self.modified_by) if self.modified_by else None
        else:
            stamp = item.get(self.created_at) if self.created_at else None
            by = item.get(self.created_by) if self.created_by else None
        if isinstance(by, dict):  # a field expanded to the user object
            by = by.get("id")
        if by is not None:
            by = self.integration_account if str(by) == self._user() else str(by)
        columns = self.columns_to_sync
        link = item.get(self.link_column) if self.link_column else None
        return RawRecord(
            key=str(key),
            values={c: item.get(c) for c in columns},
            modified_at=parse_timestamp(stamp),
            modified_by=by,
            version=NEVER_UPDATED if updated is None else str(updated),
            link=None if link is None else str(link),
        )

    def _create_body(self, op: Create) -> dict[str, Any]:
        """The item a create sends: its values, and its link id in the link marker field."""
        values = canonical(op.values)
        return {**values, self.link_column: op.ref} if self.link_column else values

    def _keyset(self, path: str, where: dict[str, Any], key: str, fields: str) -> Iterator[list]:
        """Each page of ``path`` matching ``where``, sorted by ``key`` and paged by it."""
        last: Any = None
        while True:
            rules = [where] if where else []
            if last is not None:
                rules.append({key: {"_gt": last}})
            params = {"fields": fields, "sort": key, "limit": str(self.page_size)}
            if rules:
                params["filter"] = json.dumps({"_and": rules})
            items = self._request("GET", path, params)
            if not isinstance(items, list):
                raise Fatal(f"GET {path}: the answer has no list of items")
            yield items
            if len(items) < self.page_size:
                return
            last = items[-1].get(key)

    def _changed_since(self, since: str) -> dict[str, Any]:
        """The filter of records changed at or after ``since``."""
        updated, created = self._present(self.modified_at), self._present(self.created_at)
        if updated is None:
            return {}
        never = {updated: {"_null": True}}
        if created is not None:
            never = {"_and": [never, {created: {"_gte": since}}]}
        return {"_or": [{updated: {"_gte": since}}, never]}

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        since, start = overlap_start(cursor, self.overlap_seconds)
        where: dict[str, Any] = {}
        lower = ""
        if start is not None:
            lower = cursor_text(start)
            where = self._changed_since(lower)
        incremental = bool(where)
        newest = since
        before = self.http().requests
        for items in self._keyset(self._items(), where, self.key, self._wanted()):
            records = [self._record(item) for item in items]
            for record in records:
                if record.modified_at is not None and (
                    newest is None or record.modified_at > newest
                ):
                    newest = record.modified_at
            yield self._page(records, [], newest, cursor, incremental, before)
            before = self.http().requests
        if incremental:  # deletions: the activity log since the same cursor
            deleted: list[str] = []
            for entries in self._keyset(
                "/activity",
                {
                    "collection": {"_eq": self.collection},
                    "action": {"_eq": "delete"},
                    "timestamp": {"_gte": lower},
                },
                "id",
                "id,item,timestamp",
            ):
                for entry in entries:
                    deleted.append(str(entry["item"]))
                    stamp = parse_timestamp(entry.get("timestamp"))
                    if stamp is not None and (newest is None or stamp > newest):
                        newest = stamp
            yield self._page([], list(dict.fromkeys(deleted)), newest, cursor, True, before)

    def _page(
        self,
        records: list[RawRecord],
        deleted: list[str],
        newest: datetime | None,
        cursor: str | None,
        incremental: bool,
        before: int,
    ) -> ChangeSet:
        return ChangeSet(
            records=records,
            deleted=deleted,
            cursor=cursor_text(newest) if newest else cursor,
            full=not incremental,
            requests=self.http().requests - before,
        )

    def _usable(self, keys: Sequence[str]) -> list[str]:
        """The keys that can name a record (a text key of an integer collection cannot)."""
        if self._schema()[self.key] in _INTEGER_KEYS:
            return [k for k in keys if k.lstrip("-").isdigit()]
        return list(keys)

    def _fetch(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """The items with these keys, as stored now."""
        out: list[dict[str, Any]] = []
        for part in chunks(self._usable(list(dict.fromkeys(keys))), KEYS_PER_REQUEST):
            params = {
                "fields": self._wanted(),
                "filter": json.dumps({self.key: {"_in": list(part)}}),
                "limit": "-1",
            }
            out += self._request("GET", self._items(), params) or []
        return out

    def read(self, keys: Sequence[str]) -> list[RawRecord]:
        return [self._record(item) for item in self._fetch(keys)]

    def list_keys(self) -> set[str] | None:
        """None: incremental reads report deletions from the activity log."""
        if self._present(self.modified_at) is None:
            return {r.key for page in self.read_pages(None) for r in page.records}
        return None

    # -- writing ------------------------------------------------------------------------

    def _guard(self, op: Update | Delete) -> dict[str, Any]:
        """The filter that matches ``op``'s record only while it has the version read."""
        rule: dict[str, Any] = {self.key: {"_eq": op.key}}
        updated = self._present(self.modified_at)
        if op.version is None or updated is None:
            return rule
        if op.version == NEVER_UPDATED:
            return {"_and": [rule, {updated: {"_null": True}}]}
        return {"_and": [rule, {updated: {"_eq": op.version}}]}

    def write(self, ops: Sequence[Op]) -> list[WriteResult]:
        """Creates first (one array), then updates grouped by the values they set (one
        guarded query each), then deletes (one guarded query). An error that stops a group
        after another was applied comes back as the outcome of every operation not done."""
        creates = [(i, op) for i, op in enumerate(ops) if isinstance(op, Create)]
        updates: dict[str, list[tuple[int, Update]]] = {}
        for i, op in enumerate(ops):
            if isinstance(op, Update):
                data = json.dumps(canonical(op.values), sort_keys=True, default=str)
                updates.setdefault(data, []).append((i, op))
        deletes = [(i, op) for i, op in enumerate(ops) if isinstance(op, Delete)]
        steps: list[Callable[[], dict[int, WriteResult]]] = [lambda: self._create(creates)]
        steps += [lambda same=same: self._guarded(same) for same in updates.values()]
        if deletes:
            steps.append(lambda: self._guarded(deletes))
        results: dict[int, WriteResult] = {}
        for step in steps:
            try:
                results.update(step())
            except SyncError as exc:
                if not results:
                    raise
                for i, op in enumerate(ops):
                    if i not in results:
                        key = None if isinstance(op, Create) else op.key
                        results[i] = WriteResult(op=op, key=key, error=exc)
                break
        return [results[i] for i in range(len(ops))]

    def _create(self, creates: list[tuple[int, Create]]) -> dict[int, WriteResult]:
        """Creates as one array; Directus creates them in one transaction, so a refused
        item refuses them all: then each is sent alone to find the one. The answer lists
        the items by key, which is the order of the array only for an integer key that the
        database counts up: other keys are created one at a time."""
        if not creates:
            return {}
        if len(creates) > 1 and self._schema()[self.key] in _INTEGER_KEYS:
            body = [self._create_body(op) for _, op in creates]
            try:
                items = self._request(
                    "POST", self._items(), {"fields": self._wanted()}, body, once=True
                )
            except Skippable:
                items = None
            except Retriable as exc:  # may have been applied: the run looks for them
                return {i: WriteResult(op=op, error=exc) for i, op in creates}
            if items is not None:
                if not isinstance(items, list) or len(items) != len(creates):
                    raise Fatal(f"POST {self._items()}: answered without one item per create")
                items = sorted(items, key=lambda item: int(item[self.key]))
                return {
                    i: self._written(op, item) for (i, op), item in zip(creates, items, strict=True)
                }
        out = {}
        for i, op in creates:
            try:
                item = self._request(
                    "POST",
                    self._items(),
                    {"fields": self._wanted()},
                    self._create_body(op),
                    once=True,
                )
            except (Skippable, Retriable) as exc:
                out[i] = WriteResult(op=op, error=exc)
                continue
            out[i] = self._written(op, item)
        return out

    def _written(self, op: Op, item: Any) -> WriteResult:
        if not isinstance(item, dict):
            raise Fatal(f"{self._items()}: the answer to a write is not an item")
        record = self._record(item)
        return WriteResult(op=op, key=record.key, version=record.version, values=record.values)

    def _guarded(self, ops: list[tuple[int, Update]] | list[tuple[int, Delete]]) -> dict:
        """Updates of the same values (or deletes) by one query matching each record only at
        its version read; the records that matched none are missing or changed since."""
        out: dict[int, WriteResult] = {}
        for part in chunks(ops, self.page_size):
            query = {
                "filter": {"_or": [self._guard(op) for _, op in part]},
                "limit": -1,
            }
            first = part[0][1]
            try:
                if isinstance(first, Update):
                    body = {"query": query, "data": canonical(first.values)}
                    items = self._request("PATCH", self._items(), {"fields": self._wanted()}, body)
                    done = {str(item[self.key]): item for item in items or []}
                else:
                    self._request("DELETE", self._items(), None, {"query": query})
                    done = {}
            except Skippable as exc:
                if len(part) == 1:
                    out[part[0][0]] = WriteResult(op=first, key=first.key, error=exc)
                else:  # one refused value refuses the query: each alone finds which
                    for one in part:
                        out.update(self._guarded([one]))  # type: ignore[list-item]
                continue
            if isinstance(first, Delete):
                still = {r.key: r for r in self.read([op.key for _, op in part])}
                for i, op in part:
                    error = None if op.key not in still else self._changed(op.key)
                    out[i] = WriteResult(op=op, key=op.key, error=error)
                continue
            missed = [op.key for _, op in part if op.key not in done]
            there = {r.key for r in self.read(missed)} if missed else set()
            for i, op in part:
                if op.key in done:
                    out[i] = self._written(op, done[op.key])
                elif op.key in there:
                    out[i] = WriteResult(op=op, key=op.key, error=self._changed(op.key))
                else:
                    out[i] = WriteResult(
                        op=op,
                        key=op.key,
                        error=Skippable(
                            f"record {op.key} does not exist in Directus collection "
                            f"{self.collection!r}",
                            status=404,
                        ),
                    )
        return out

    def _changed(self, key: str) -> SyncError:
        return PreconditionFailed(
            f"record {key} in Directus collection {self.collection!r} changed since it was read"
        )
