"""A protocol-faithful Microsoft Graph simulator for SharePoint list items.

It speaks the documented shapes of the Graph v1.0 endpoints twoway uses: the Microsoft
identity platform token endpoint (client credentials), list items with keyset paging,
``items/delta`` with delta tokens and ``410 Gone``, ``$batch`` JSON batching with
``dependsOn``, ``If-Match`` with eTags, and change-notification subscriptions with the
validation handshake. Faults from a :class:`FaultPlan` are decided before any data is
touched, so a faulted write is never half applied.

People other than the integration account edit through :class:`GraphState`'s ``user_*``
methods, or over HTTP with a token of another registered client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import re
import secrets
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from twoway.simulators.faults import FaultPlan
from twoway.urls import is_public_https

HOSTNAME = "contoso.sharepoint.com"
DEFAULT_PAGE = 200  # items per page when the client gives no $top
MAX_PAGE = 5000
MAX_BATCH = 20  # requests per $batch, as Graph documents
LIST_SUBSCRIPTION_MINUTES = 42300  # longest subscription lifetime for SharePoint lists
#: a directory (tenant) id as the token endpoint's path takes it: a GUID or a domain name
TENANT_ID = re.compile(r"[0-9A-Za-z](?:[0-9A-Za-z.-]{0,253}[0-9A-Za-z])?")
VALIDATION_TIMEOUT = 10.0  # seconds the subscriber has to echo the validation token
#: the codes of a delta's ``410 Gone``, with Graph's advice for each
RESYNC_CODES = {
    "resyncChangesApplyDifferences": "Resync required. Replace any local items with the "
    "server's version (including deletes) if you're sure that the service was up to date "
    "with your local changes when you last sync'd. Upload any local changes that the "
    "server doesn't know about.",
    "resyncChangesUploadDifferences": "Resync required. Upload any local items that the "
    "service did not return, and upload any items that differ from the server's version "
    "(keeping both copies if you're not sure which one is more up-to-date).",
}
DELTA_TOKENS_KEPT = 20000  # older delta and page tokens expire (410 Gone)
SYSTEM_FIELDS = (
    "id",
    "ContentType",
    "Modified",
    "Created",
    "AuthorLookupId",
    "EditorLookupId",
    "_UIVersionString",
    "Attachments",
)
COLUMN_TYPES = ("text", "note", "number", "boolean", "dateTime")
TEXT_MAX_LENGTH = 255  # single line of text


def iso(when: datetime) -> str:
    """Graph's timestamp form: UTC, whole seconds, ``Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text.strip():
        return None
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class GraphError(Exception):
    """A Graph error answer: status, ``error.code`` and message, optional headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Identity:
    """Who made a change: a person (``user``) or an app registration (``application``)."""

    display_name: str
    id: str
    kind: str = "user"  # "user" | "application"

    def identity_set(self) -> dict[str, Any]:
        """The Graph identitySet recorded as ``createdBy``/``lastModifiedBy``."""
        if self.kind == "application":
            # app-only writes in SharePoint show the app and the "SharePoint App" user
            return {
                "application": {"id": self.id, "displayName": self.display_name},
                "user": {"displayName": "SharePoint App"},
            }
        email = re.sub(r"[^a-z0-9.]+", ".", self.display_name.lower()).strip(".") + "@contoso.com"
        return {"user": {"email": email, "id": self.id, "displayName": self.display_name}}


@dataclass
class Client:
    """An app registration allowed to get tokens with the client-credentials grant."""

    client_id: str
    client_secret: str
    identity: Identity


@dataclass
class Column:
    """A list column (columnDefinition)."""

    name: str
    type: str = "text"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def definition(self) -> dict[str, Any]:
        kind: dict[str, Any]
        if self.type == "text":
            kind = {"text": {"allowMultipleLines": False, "maxLength": TEXT_MAX_LENGTH}}
        elif self.type == "note":
            kind = {"text": {"allowMultipleLines": True, "linesForEditing": 6, "maxLength": 0}}
        elif self.type == "number":
            kind = {"number": {"decimalPlaces": "automatic", "displayAs": "number"}}
        elif self.type == "boolean":
            kind = {"boolean": {}}
        else:
            kind = {"dateTime": {"displayAs": "default", "format": "dateTime"}}
        return {
            "columnGroup": "Custom Columns",
            "description": "",
            "displayName": self.name,
            "enforceUniqueValues": False,
            "hidden": False,
            "id": self.id,
            "indexed": False,
            "name": self.name,
            "readOnly": False,
            "required": False,
            **kind,
        }


def _system_column(name: str, kind: dict[str, Any]) -> dict[str, Any]:
    return {
        "columnGroup": "_Hidden",
        "description": "",
        "displayName": name,
        "enforceUniqueValues": False,
        "hidden": False,
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"column:{name}")),
        "indexed": False,
        "name": name,
        "readOnly": True,
        "required": False,
        **kind,
    }


SYSTEM_COLUMNS = [
    _system_column("ID", {"number": {}}),
    _system_column("Modified", {"dateTime": {"displayAs": "default", "format": "dateTime"}}),
    _system_column("Created", {"dateTime": {"displayAs": "default", "format": "dateTime"}}),
    _system_column("Author", {"personOrGroup": {"allowMultipleSelection": False}}),
    _system_column("Editor", {"personOrGroup": {"allowMultipleSelection": False}}),
    _system_column("ContentType", {"text": {}}),
    _system_column("Attachments", {"boolean": {}}),
]


@dataclass
class Item:
    """One list item as SharePoint stores it."""

    id: int
    guid: str
    version: int
    fields: dict[str, Any]  # column -> value; a field with no value is absent
    created: datetime
    modified: datetime
    created_by: Identity
    modified_by: Identity
    seq: int  # change sequence number of the item's last change

    @property
    def etag(self) -> str:
        return f'"{self.guid},{self.version}"'


@dataclass
class GraphList:
    """A SharePoint list: columns, items, and tombstones of deleted items for delta."""

    title: str
    id: str
    columns: dict[str, Column]
    items: dict[int, Item] = field(default_factory=dict)
    tombstones: dict[int, int] = field(default_factory=dict)  # item id -> seq of deletion
    next_id: int = 1
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class DeltaPosition:
    """What a delta or paging token stands for: a round of changes and where a page ends."""

    list_id: str
    since: int | None  # None: the initial enumeration of current state
    upto: int | None  # the change sequence the round stops at (fixed at its first page)
    after: int  # last id (initial round) or last seq (later rounds) already returned
    expand_fields: bool
    select: tuple[str, ...] | None
    top: int
    props: tuple[str, ...] | None = None  # the item properties $select keeps (None: all)


@dataclass
class Subscription:
    """A change-notification subscription on a list."""

    id: str
    resource: str
    list_id: str
    change_type: str
    notification_url: str
    expiration: datetime
    client_state: str | None
    application_id: str
    creator_id: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "expirationDateTime": self.expiration.astimezone(UTC)
            .isoformat()
            .replace("+00:00", "Z"),
            "creatorId": self.creator_id,
            "latestSupportedTlsVersion": "v1_2",
            "notificationContentType": None,
            "includeResourceData": False,
        }


class GraphState:
    """The simulated tenant: one site with lists, registered clients, tokens, subscriptions.

    Thread-safe: every read and write of data holds one lock. Tests turn faults on with
    ``state.faults.set(lock=0.1)``, change ``state.latency_ms``, expire tokens with
    :meth:`expire_tokens` and :meth:`expire_delta_tokens`, and play people with
    :meth:`user_create`, :meth:`user_update` and :meth:`user_delete`.
    """

    def __init__(
        self,
        *,
        client_id: str = "twoway",
        client_secret: str = "twoway-secret",
        display_name: str = "twoway-sync",
        tenant_id: str | None = None,
        token_lifetime: float = 3599,
        faults: FaultPlan | None = None,
        latency_ms: float = 0.0,
        clock: Callable[[], datetime] | None = None,
    ):
        if tenant_id is not None and not TENANT_ID.fullmatch(tenant_id):
            raise ValueError(
                f"--tenant: {tenant_id!r} is not a directory (tenant) id: a GUID or a domain"
            )
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.tenant_domain = "contoso.onmicrosoft.com"
        self.site_id = f"{HOSTNAME},{uuid.uuid4()},{uuid.uuid4()}"
        self.token_lifetime = token_lifetime
        self.faults = faults or FaultPlan()
        self.latency_ms = latency_ms
        self.clock = clock or (lambda: datetime.now(UTC))
        self.reverse_batch_responses = False  # Graph may answer sub-requests in any order
        self._lock = threading.RLock()
        self._seq = 0
        self._lists: dict[str, GraphList] = {}
        self._clients: dict[str, Client] = {}
        self._tokens: dict[str, tuple[Identity, float]] = {}
        self._delta_tokens: OrderedDict[str, DeltaPosition] = OrderedDict()
        self._lookup_ids: dict[str, int] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.resync_code = "resyncChangesApplyDifferences"  # what an expired delta token says
        #: repeat each delta page's last item on the next page, as Graph may: a client must
        #: take an item's last occurrence, not count it twice
        self.repeat_delta_items = False
        self.subscriptions_page_size = 100  # subscriptions per GET /subscriptions page
        #: the app's resource units per minute (None: no budget; SharePoint gives an app of
        #: a tenant with up to 1,000 licences 1,200). Each request costs what
        #: :func:`resource_units` says, a $batch the sum of its sub-requests, a refused
        #: request too; past the budget Graph answers 429 until the minute ends
        self.resource_units_per_minute: int | None = None
        self._units = (0, 0)  # (minute, units spent in it)
        #: refuse notification URLs real Graph cannot reach (plain HTTP, loopback); the
        #: simulator itself delivers only to loopback, so this refuses every subscription
        self.public_notifications_only = False
        self.deliveries: list[dict[str, Any]] = []  # notification attempts, for tests
        self._outbox: queue.Queue[tuple[str, str, dict[str, Any]] | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self.requests = 0  # Graph requests served (batch sub-requests included)
        self.integration = self.add_client(client_id, client_secret, display_name)
        self.add_list("Contacts", {"FirstName": "text", "Email": "text", "Phone": "text"})

    # -- set-up -----------------------------------------------------------------------

    def add_client(
        self, client_id: str, client_secret: str, display_name: str, *, kind: str = "application"
    ) -> Identity:
        """Register an app that may get tokens; its writes are recorded as ``display_name``."""
        if kind not in ("user", "application"):
            raise ValueError("kind must be 'user' or 'application'")
        identity = Identity(display_name, str(uuid.uuid5(uuid.NAMESPACE_DNS, client_id)), kind)
        if kind == "user":
            identity = Identity(display_name, self._person_id(display_name), kind)
        with self._lock:
            self._clients[client_id] = Client(client_id, client_secret, identity)
        return identity

    def add_list(
        self, title: str, columns: dict[str, str] | list[str], list_id: str | None = None
    ) -> GraphList:
        """Create a list (or add columns to an existing one); columns are name -> type."""
        spec = dict.fromkeys(columns, "text") if isinstance(columns, list) else dict(columns)
        for name, kind in spec.items():
            if kind not in COLUMN_TYPES:
                raise ValueError(f"column {name!r}: type {kind!r} is not one of {COLUMN_TYPES}")
            if name in SYSTEM_FIELDS or name == "Title":
                raise ValueError(f"column {name!r} is a built-in column")
        with self._lock:
            existing = self._find_list(title)
            if existing is None:
                existing = GraphList(
                    title, list_id or str(uuid.uuid4()), {"Title": Column("Title")}
                )
                self._lists[existing.id] = existing
            for name, kind in spec.items():
                existing.columns.setdefault(name, Column(name, kind))
            return existing

    def load_data(self, path: str | Path) -> None:
        """Add lists, columns, clients and records from a JSON or YAML file.

        Shape: ``{"lists": [{"title": "Contacts", "columns": {"Email": "text"},
        "items": [{"Title": "Ann", "Email": "ann@example.com"}]}], "clients": [{"client_id":
        ..., "client_secret": ..., "display_name": ..., "kind": "user"}]}``. An item may
        name its author with ``"_by": "Alice"``.
        """
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping with 'lists' and/or 'clients'")
        for client in data.get("clients") or []:
            self.add_client(
                str(client["client_id"]),
                str(client["client_secret"]),
                str(client.get("display_name") or client["client_id"]),
                kind=str(client.get("kind", "user")),
            )
        for spec in data.get("lists") or []:
            title = spec.get("title") or spec.get("name")
            if not title:
                raise ValueError(f"{path}: a list needs a 'title'")
            self.add_list(str(title), spec.get("columns") or {}, spec.get("id"))
            for record in spec.get("items") or []:
                values = dict(record)
                by = str(values.pop("_by", "System Account"))
                self.user_create(str(title), values, user=by)

    # -- people -------------------------------------------------------------------------

    def _person_id(self, name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"person:{name}"))

    def person(self, name: str) -> Identity:
        """The identity of a person editing in the SharePoint UI."""
        return Identity(name, self._person_id(name), "user")

    def user_create(self, list_ref: str, fields: dict[str, Any], user: str = "Alice") -> str:
        """A person creates an item; returns its id."""
        with self._lock:
            item = self.create_item(self.get_list(list_ref), fields, self.person(user))
            return str(item.id)

    def user_update(
        self, list_ref: str, item_id: str | int, fields: dict[str, Any], user: str = "Alice"
    ) -> None:
        """A person changes some fields of an item."""
        with self._lock:
            self.update_item(self.get_list(list_ref), str(item_id), fields, self.person(user))

    def user_delete(self, list_ref: str, item_id: str | int, user: str = "Alice") -> None:
        """A person deletes an item."""
        with self._lock:
            self.delete_item(self.get_list(list_ref), str(item_id))

    def item_json(self, list_ref: str, item_id: str | int) -> dict[str, Any]:
        """An item as ``GET .../items/{id}?expand=fields`` returns it."""
        with self._lock:
            lst = self.get_list(list_ref)
            return self._item_json(lst, self._item(lst, str(item_id)), fields=True)

    def items(self, list_ref: str) -> list[dict[str, Any]]:
        """Every item of a list, in id order, as ``GET .../items?expand=fields`` shows them
        (with who changed each last): what tests and the demo compare."""
        with self._lock:
            lst = self.get_list(list_ref)
            return [self._item_json(lst, lst.items[i], fields=True) for i in sorted(lst.items)]

    def count(self, list_ref: str) -> int:
        """How many items a list holds."""
        with self._lock:
            return len(self.get_list(list_ref).items)

    # -- tokens ---------------------------------------------------------------------------

    def issue_token(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        """The token endpoint's answer to a client-credentials request (or an AAD error)."""
        if tenant not in (self.tenant_id, self.tenant_domain):
            raise AadError(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            raise AadError(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            )
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            raise AadError(
                400,
                "invalid_scope",
                1002012,
                "The provided value for scope is not valid. Client credential flows must have "
                "a scope value with /.default suffixed to the resource identifier.",
            )
        client = self._clients.get(form.get("client_id", ""))
        if client is None:
            raise AadError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id', '')}' was not found in "
                f"the directory '{self.tenant_domain}'.",
            )
        if not secrets.compare_digest(form.get("client_secret", ""), client.client_secret):
            raise AadError(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                f"is the client secret value, not the client secret ID, for a secret added to "
                f"app '{client.client_id}'.",
            )
        token = secrets.token_urlsafe(48)
        lifetime = int(self.token_lifetime)
        with self._lock:
            self._tokens[token] = (client.identity, time.time() + self.token_lifetime)
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def authenticate(self, authorization: str | None) -> Identity:
        """The identity behind a bearer token; 401 ``InvalidAuthenticationToken`` otherwise."""
        if not authorization:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.")
        with self._lock:
            entry = self._tokens.get(token.strip())
        if entry is None:
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
            )
        identity, expires = entry
        if time.time() >= expires:
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
            )
        return identity

    def expire_tokens(self) -> None:
        """Make every issued access token expired (clients must get a new one)."""
        with self._lock:
            self._tokens = {t: (ident, 0.0) for t, (ident, _) in self._tokens.items()}

    def expire_delta_tokens(self, code: str = "resyncChangesApplyDifferences") -> None:
        """Forget every delta and paging token: their next use answers ``410 Gone`` with
        ``code``, one of the two Graph documents: ``resyncChangesApplyDifferences`` (the
        service's state stands, deletions included) or ``resyncChangesUploadDifferences``
        (the service may lack items the client holds: upload what it did not return)."""
        if code not in RESYNC_CODES:
            raise ValueError(f"unknown resync code {code!r}; one of {', '.join(RESYNC_CODES)}")
        with self._lock:
            self._delta_tokens.clear()
            self.resync_code = code

    # -- data ---------------------------------------------------------------------------

    def _find_list(self, ref: str) -> GraphList | None:
        if ref in self._lists:
            return self._lists[ref]
        for lst in self._lists.values():
            if lst.title.lower() == ref.lower():
                return lst
        return None

    def get_list(self, ref: str) -> GraphList:
        """A list by id or title; 404 ``itemNotFound`` when there is none."""
        with self._lock:
            lst = self._find_list(ref)
        if lst is None:
            raise GraphError(404, "itemNotFound", "List does not exist.")
        return lst

    def check_site(self, site: str) -> None:
        if site not in ("root", self.site_id, HOSTNAME):
            raise GraphError(404, "itemNotFound", "Requested site could not be found")

    def _item(self, lst: GraphList, item_id: str) -> Item:
        if not item_id.isdigit():
            raise GraphError(400, "invalidRequest", "Invalid request")
        item = lst.items.get(int(item_id))
        if item is None:
            raise GraphError(404, "itemNotFound", "Item not found")
        return item

    def _lookup_id(self, identity: Identity) -> str:
        if identity.id not in self._lookup_ids:
            self._lookup_ids[identity.id] = len(self._lookup_ids) + 6
        return str(self._lookup_ids[identity.id])

    def _validated(self, lst: GraphList, fields: Any) -> dict[str, Any]:
        """Field values checked against the list's columns, in the stored form."""
        if not isinstance(fields, dict):
            raise GraphError(400, "invalidRequest", "Invalid request: fields must be an object")
        clean: dict[str, Any] = {}
        for name, value in fields.items():
            if name.startswith("@odata."):
                continue
            column = lst.columns.get(name)
            if column is None:
                if name in SYSTEM_FIELDS:
                    raise GraphError(400, "invalidRequest", f"Field '{name}' is read-only")
                raise GraphError(400, "invalidRequest", f"Field '{name}' is not recognized")
            clean[name] = _check_value(column, value)
        return clean

    def _touch(self, lst: GraphList, item: Item) -> None:
        self._seq += 1
        item.seq = self._seq
        self._notify(lst)

    def create_item(self, lst: GraphList, fields: Any, by: Identity) -> Item:
        """Add an item as ``by``; the caller holds the lock."""
        values = self._validated(lst, fields)
        now = self.clock()
        item = Item(
            id=lst.next_id,
            guid=str(uuid.uuid4()),
            version=1,
            fields={k: v for k, v in values.items() if v is not None},
            created=now,
            modified=now,
            created_by=by,
            modified_by=by,
            seq=0,
        )
        lst.next_id += 1
        lst.items[item.id] = item
        self._touch(lst, item)
        return item

    def update_item(
        self, lst: GraphList, item_id: str, fields: Any, by: Identity, if_match: str | None = None
    ) -> Item:
        """Change some fields as ``by``, if the eTag still matches; the caller holds the lock."""
        item = self._item(lst, item_id)
        _check_if_match(item, if_match)
        values = self._validated(lst, fields)
        for name, value in values.items():
            if value is None:
                item.fields.pop(name, None)
            else:
                item.fields[name] = value
        item.version += 1
        item.modified = max(self.clock(), item.modified)
        item.modified_by = by
        self._touch(lst, item)
        return item

    def delete_item(self, lst: GraphList, item_id: str, if_match: str | None = None) -> None:
        """Delete an item, if the eTag still matches; the caller holds the lock."""
        item = self._item(lst, item_id)
        _check_if_match(item, if_match)
        del lst.items[item.id]
        self._seq += 1
        lst.tombstones[item.id] = self._seq
        self._notify(lst)

    # -- JSON views -----------------------------------------------------------------------

    def _fields_json(
        self, lst: GraphList, item: Item, select: tuple[str, ...] | None
    ) -> dict[str, Any]:
        full: dict[str, Any] = {
            "@odata.etag": item.etag,
            "id": str(item.id),
            "ContentType": "Item",
            **{k: v for k, v in item.fields.items() if k in lst.columns},
            "Modified": iso(item.modified),
            "Created": iso(item.created),
            "AuthorLookupId": self._lookup_id(item.created_by),
            "EditorLookupId": self._lookup_id(item.modified_by),
            "_UIVersionString": f"{item.version}.0",
            "Attachments": False,
        }
        if select is None:
            return full
        return {k: v for k, v in full.items() if k == "@odata.etag" or k in select}

    def _item_json(
        self,
        lst: GraphList,
        item: Item,
        *,
        fields: bool,
        select: tuple[str, ...] | None = None,
        delta: bool = False,
        props: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "@odata.etag": item.etag,
            "createdDateTime": iso(item.created),
            "eTag": item.etag,
            "id": str(item.id),
            "lastModifiedDateTime": iso(item.modified),
            "webUrl": f"https://{HOSTNAME}/Lists/{quote(lst.title)}/{item.id}_.000",
        }
        # the delta feed shows who created an item, as Graph's does, but not who changed
        # it last: lastModifiedBy is never in it, even when $select names it
        body["createdBy"] = item.created_by.identity_set()
        if not delta:
            body["lastModifiedBy"] = item.modified_by.identity_set()
        body["parentReference"] = {"id": lst.id, "siteId": self.site_id}
        body["contentType"] = {
            "id": "0x0100" + item.guid.replace("-", "").upper()[:32],
            "name": "Item",
        }
        body["sharepointIds"] = {"listId": lst.id, "listItemId": str(item.id)}
        if fields:
            body["fields"] = self._fields_json(lst, item, select)
        if props is not None:
            kept = {"@odata.etag", "id", "fields", *props}
            body = {k: v for k, v in body.items() if k in kept}
        return body

    def list_json(self, lst: GraphList) -> dict[str, Any]:
        return {
            "@odata.etag": f'"{lst.id},1"',
            "createdDateTime": iso(lst.created),
            "description": "",
            "eTag": f'"{lst.id},1"',
            "id": lst.id,
            "lastModifiedDateTime": iso(lst.created),
            "name": lst.title,
            "webUrl": f"https://{HOSTNAME}/Lists/{quote(lst.title)}",
            "displayName": lst.title,
            "parentReference": {"siteId": self.site_id},
            "list": {"contentTypesEnabled": False, "hidden": False, "template": "genericList"},
        }

    def site_json(self) -> dict[str, Any]:
        return {
            "id": self.site_id,
            "name": "Communication site",
            "displayName": "Communication site",
            "webUrl": f"https://{HOSTNAME}",
            "root": {},
            "siteCollection": {"hostname": HOSTNAME},
        }

    # -- reads ---------------------------------------------------------------------------

    def list_items(
        self,
        lst: GraphList,
        base: str,
        path: str,
        query: dict[str, str],
    ) -> dict[str, Any]:
        """One page of ``GET .../items``, keyset-paged by item id with an opaque skiptoken."""
        expand, select = _parse_expand(query)
        props = _parse_select(query)
        top = _parse_top(query)
        after = 0
        if "$skiptoken" in query:
            after = _decode_skiptoken(query["$skiptoken"])
        with self._lock:
            page: list[Item] = []
            more = False
            for item_id in sorted(lst.items):
                if item_id <= after:
                    continue
                if len(page) == top:
                    more = True
                    break
                page.append(lst.items[item_id])
            body: dict[str, Any] = {
                "@odata.context": f"{base}/v1.0/$metadata#sites('root')/lists('{lst.id}')/items",
                "value": [
                    self._item_json(lst, i, fields=expand, select=select, props=props) for i in page
                ],
            }
        if more:
            params = {k: v for k, v in query.items() if k != "$skiptoken"}
            params["$skiptoken"] = _encode_skiptoken(page[-1].id)
            body["@odata.nextLink"] = _link(base, path, params)
        return body

    def delta(self, lst: GraphList, base: str, path: str, query: dict[str, str]) -> dict[str, Any]:
        """One page of ``GET .../items/delta``: the initial enumeration or changes since a token."""
        expand, select = _parse_expand(query)
        explicit = "$expand" in query or "expand" in query
        props = _parse_select(query)
        top = _parse_top(query)
        token = query.get("token")
        with self._lock:
            if token == "latest":
                pos = DeltaPosition(lst.id, self._seq, None, 0, expand, select, top, props)
                return {
                    "value": [],
                    "@odata.deltaLink": _link(base, path, {"token": self._keep(pos)}),
                }
            if token:
                start = self._delta_tokens.get(token)
                if start is None or start.list_id != lst.id or start.upto is not None:
                    raise self._gone(base, path)
                pos = DeltaPosition(
                    lst.id,
                    start.since,
                    self._seq,
                    0,
                    expand if explicit else start.expand_fields,
                    select if explicit else start.select,
                    top if "$top" in query else start.top,
                    props if "$select" in query or "select" in query else start.props,
                )
            elif "$skiptoken" in query:
                pos = self._delta_tokens.get(query["$skiptoken"])  # type: ignore[assignment]
                if pos is None or pos.list_id != lst.id:
                    raise self._gone(base, path)
            else:
                pos = DeltaPosition(lst.id, None, self._seq, 0, expand, select, top, props)
            value, last, more = self._delta_page(lst, pos)
            body: dict[str, Any] = {
                "@odata.context": f"{base}/v1.0/$metadata#Collection(listItem)",
                "value": value,
            }
            if more:
                page_pos = DeltaPosition(
                    lst.id,
                    pos.since,
                    pos.upto,
                    last,
                    pos.expand_fields,
                    pos.select,
                    pos.top,
                    pos.props,
                )
                body["@odata.nextLink"] = _link(base, path, {"$skiptoken": self._keep(page_pos)})
            else:
                next_pos = DeltaPosition(
                    lst.id, pos.upto, None, 0, pos.expand_fields, pos.select, pos.top, pos.props
                )
                body["@odata.deltaLink"] = _link(base, path, {"token": self._keep(next_pos)})
            return body

    def _delta_page(
        self, lst: GraphList, pos: DeltaPosition
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """Items of one delta page, the position it ends at, and whether more follow."""
        upto = pos.upto if pos.upto is not None else self._seq
        if pos.since is None:
            # initial enumeration by id: an item changed meanwhile shows again next round
            ids = [i for i in sorted(lst.items) if i > pos.after]
            chosen = ids[: pos.top]
            value = [
                self._item_json(
                    lst,
                    lst.items[i],
                    fields=pos.expand_fields,
                    select=pos.select,
                    delta=True,
                    props=pos.props,
                )
                for i in chosen
            ]
            more = len(ids) > pos.top
            if more and self.repeat_delta_items and len(chosen) > 1:
                return value, chosen[-2], more  # the next page starts with this one's last
            return value, (chosen[-1] if chosen else pos.after), more
        entries: list[tuple[int, int, bool]] = [
            (item.seq, item.id, True)
            for item in lst.items.values()
            if pos.since < item.seq <= upto and item.seq > pos.after
        ]
        entries += [
            (seq, item_id, False)
            for item_id, seq in lst.tombstones.items()
            if pos.since < seq <= upto and seq > pos.after
        ]
        entries.sort()
        chosen_entries = entries[: pos.top]
        value = []
        for _, item_id, alive in chosen_entries:
            if alive:
                value.append(
                    self._item_json(
                        lst,
                        lst.items[item_id],
                        fields=pos.expand_fields,
                        select=pos.select,
                        delta=True,
                        props=pos.props,
                    )
                )
            else:
                value.append({"id": str(item_id), "deleted": {"state": "deleted"}})
        last = chosen_entries[-1][0] if chosen_entries else pos.after
        more = len(entries) > pos.top
        if more and self.repeat_delta_items and len(chosen_entries) > 1:
            last = chosen_entries[-2][0]  # the next page starts with this one's last
        return value, last, more

    def _keep(self, pos: DeltaPosition) -> str:
        token = base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")
        self._delta_tokens[token] = pos
        while len(self._delta_tokens) > DELTA_TOKENS_KEPT:
            self._delta_tokens.popitem(last=False)
        return token

    def _gone(self, base: str, path: str) -> GraphError:
        """410 with the resync code in force; ``Location`` starts a fresh enumeration."""
        return GraphError(
            410,
            self.resync_code,
            RESYNC_CODES[self.resync_code],
            {"Location": f"{base}/v1.0/{path}"},
        )

    # -- subscriptions and notifications --------------------------------------------------

    def charge(self, units: int) -> tuple[Answer | None, dict[str, str]]:
        """Spend ``units`` of the app's budget for this minute: a 429 answer when it is
        spent (Retry-After: the seconds left of the minute), and the RateLimit headers
        Graph adds once 80% of it is used."""
        budget = self.resource_units_per_minute
        if budget is None:
            return None, {}
        now = self.clock().timestamp()
        minute = int(now // 60)
        with self._lock:
            spent = self._units[1] if self._units[0] == minute else 0
            over = spent + units > budget
            spent = min(budget, spent + units) if over else spent + units  # refused ones count
            self._units = (minute, spent)
        reset = max(1, int((minute + 1) * 60 - now + 0.999))
        headers = {}
        if over or spent >= 0.8 * budget:
            headers = {
                "RateLimit-Limit": str(budget),
                "RateLimit-Remaining": str(max(0, budget - spent)),
                "RateLimit-Reset": str(reset),
            }
        if not over:
            return None, headers
        error = GraphError(
            429,
            "TooManyRequests",
            "The application's resource units for this minute are spent; retry after a while",
            {**headers, "Retry-After": str(reset)},
        )
        return Answer.error(error), headers

    def subscriptions_page(self, query: dict[str, str], base: str) -> dict[str, Any]:
        """One page of ``GET /subscriptions``; the next one behind ``@odata.nextLink``."""
        start = _decode_skiptoken(query["$skiptoken"]) if "$skiptoken" in query else 0
        with self._lock:
            subs = [s.as_json() for s in self.subscriptions.values()]
        end = start + self.subscriptions_page_size
        page: dict[str, Any] = {"value": subs[start:end]}
        if end < len(subs):
            page["@odata.nextLink"] = _link(
                base, "subscriptions", {"$skiptoken": _encode_skiptoken(end)}
            )
        return page

    def _notify(self, lst: GraphList) -> None:
        now = datetime.now(UTC)
        for sub in self.subscriptions.values():
            if sub.list_id != lst.id or sub.expiration <= now:
                continue
            payload = {
                "value": [
                    {
                        "subscriptionId": sub.id,
                        "clientState": sub.client_state,
                        "changeType": "updated",
                        "resource": sub.resource,
                        "subscriptionExpirationDateTime": sub.expiration.isoformat().replace(
                            "+00:00", "Z"
                        ),
                        "resourceData": None,
                        "tenantId": self.tenant_id,
                    }
                ]
            }
            self._outbox.put((sub.id, sub.notification_url, payload))
            self._ensure_sender()

    def _ensure_sender(self) -> None:
        if self._sender is None or not self._sender.is_alive():
            self._sender = threading.Thread(
                target=self._send_notifications, name="graph-notifications", daemon=True
            )
            self._sender.start()

    def _send_notifications(self) -> None:
        """Post queued notifications, best effort, to loopback subscribers only."""
        with httpx.Client(timeout=3.0, trust_env=False) as client:
            while True:
                job = self._outbox.get()
                try:
                    if job is None:
                        return
                    sub_id, url, payload = job
                    try:
                        response = client.post(url, json=payload)
                        outcome: dict[str, Any] = {
                            "subscription": sub_id,
                            "status": response.status_code,
                        }
                    except httpx.HTTPError as exc:
                        outcome = {"subscription": sub_id, "error": type(exc).__name__}
                    with self._lock:
                        self.deliveries.append(outcome)
                finally:
                    self._outbox.task_done()

    def flush_notifications(self, timeout: float = 5.0) -> bool:
        """Wait until queued notifications were attempted; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._outbox.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Stop the notification sender."""
        if self._sender is not None and self._sender.is_alive():
            self._outbox.put(None)
            self._sender.join(timeout=5)
        self._sender = None


class AadError(Exception):
    """An error answer of the Microsoft identity platform token endpoint."""

    def __init__(self, status: int, error: str, code: int, description: str):
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description

    def body(self) -> dict[str, Any]:
        trace = str(uuid.uuid4())
        return {
            "error": self.error,
            "error_description": f"AADSTS{self.code}: {self.description} Trace ID: {trace} "
            f"Correlation ID: {uuid.uuid4()} Timestamp: {iso(datetime.now(UTC))}",
            "error_codes": [self.code],
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": trace,
            "correlation_id": str(uuid.uuid4()),
        }


# -- helpers --------------------------------------------------------------------------------


def _check_value(column: Column, value: Any) -> Any:
    """A field value in the column's stored form; 400 ``invalidRequest`` when it does not fit."""
    if value is None:
        return None
    bad = GraphError(400, "invalidRequest", f"Invalid value for field '{column.name}'")
    if column.type in ("text", "note"):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise bad
        text = str(value)
        if column.type == "text" and len(text) > TEXT_MAX_LENGTH:
            raise GraphError(
                400,
                "invalidRequest",
                f"Field '{column.name}' exceeds the maximum length of {TEXT_MAX_LENGTH}",
            )
        return text
    if column.type == "number":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return value
        try:
            number = float(str(value))
        except ValueError:
            raise bad from None
        return int(number) if number.is_integer() else number
    if column.type == "boolean":
        if isinstance(value, bool):
            return value
        raise bad
    parsed = _parse_iso(value)
    if parsed is None:
        raise bad
    return iso(parsed)


def _check_if_match(item: Item, if_match: str | None) -> None:
    """412 ``preconditionFailed`` unless ``If-Match`` is absent, ``*`` or the item's eTag."""
    if if_match is None or if_match.strip() == "*":
        return
    # a listItem eTag holds a comma itself ("guid,version"), so the header is one value
    if if_match.strip().removeprefix("W/").strip('"') != item.etag.strip('"'):
        raise GraphError(412, "preconditionFailed", "ETag mismatch")


_EXPAND = re.compile(r"^fields(?:\((?:\$?select)=([^)]*)\))?$")


def _parse_expand(query: dict[str, str]) -> tuple[bool, tuple[str, ...] | None]:
    """``$expand=fields($select=A,B)`` (or ``expand=fields(select=...)``) -> (expand, select)."""
    raw = query.get("$expand", query.get("expand"))
    if raw is None:
        return False, None
    for part in _split_top_level(raw):
        match = _EXPAND.match(part.strip())
        if match:
            if match.group(1) is None:
                return True, None
            return True, tuple(s.strip() for s in match.group(1).split(",") if s.strip())
    raise GraphError(400, "BadRequest", f"Parsing OData Select and Expand failed: '{raw}'")


def _parse_select(query: dict[str, str]) -> tuple[str, ...] | None:
    """``$select=id,eTag,lastModifiedDateTime``: the item properties to keep (None: all)."""
    raw = query.get("$select", query.get("select"))
    if raw is None:
        return None
    return tuple(p.strip() for p in _split_top_level(raw) if p.strip())


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _parse_top(query: dict[str, str]) -> int:
    raw = query.get("$top", query.get("top"))
    if raw is None:
        return DEFAULT_PAGE
    try:
        top = int(raw)
    except ValueError:
        raise GraphError(400, "BadRequest", f"Invalid $top value '{raw}'") from None
    if top < 1:
        raise GraphError(400, "BadRequest", f"Invalid $top value '{raw}'")
    return min(top, MAX_PAGE)


def _encode_skiptoken(last_id: int) -> str:
    return base64.b64encode(f"Paged=TRUE&p_ID={last_id}".encode()).decode()


def _decode_skiptoken(token: str) -> int:
    try:
        text = base64.b64decode(token.encode(), validate=True).decode()
        return int(parse_qs(text)["p_ID"][0])
    except Exception:
        raise GraphError(400, "invalidRequest", "Invalid skip token") from None


def _link(base: str, path: str, params: dict[str, str]) -> str:
    query = "&".join(f"{quote(k, safe='$')}={quote(v, safe='(),$=')}" for k, v in params.items())
    return f"{base}/v1.0/{path}?{query}"


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }


@dataclass
class Answer:
    """A response before it is written: status, headers, JSON body (None: no body)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, exc: GraphError) -> Answer:
        return cls(exc.status, _error_body(exc.code, exc.message), dict(exc.headers))


WRITE_METHODS = ("POST", "PATCH", "PUT", "DELETE")


def fault_answer(state: GraphState, kind: str | None, method: str) -> Answer | None:
    """The answer a drawn fault gives, before any data is touched (None: go on)."""
    retry_after = {"Retry-After": str(state.faults.retry_after)}
    if kind == "lock" and method in WRITE_METHODS:
        return Answer.error(
            GraphError(423, "resourceLocked", "The resource you are attempting to access is locked")
        )
    if kind == "throttle":
        return Answer.error(
            GraphError(
                429, "TooManyRequests", "Too many requests; retry after a while", retry_after
            )
        )
    if kind == "unavailable":
        return Answer.error(
            GraphError(
                503, "serviceNotAvailable", "The service is temporarily unavailable", retry_after
            )
        )
    if kind == "timeout":
        return Answer.error(GraphError(504, "gatewayTimeout", "The request timed out"))
    return None


def lost_answer(kind: str | None, answer: Answer) -> Answer:
    """The answer a client gets: a ``lost`` fault replaces it, after the request was
    applied, with the gateway timeout of a backend that finished too late."""
    if kind == "lost":
        return Answer.error(GraphError(504, "gatewayTimeout", "The request timed out"))
    return answer


def fault_delay(state: GraphState, kind: str | None) -> float:
    """Seconds a drawn fault stalls the answer."""
    if kind == "timeout":
        return state.faults.timeout_seconds
    if kind == "slow":
        return state.faults.slow_seconds
    return 0.0


_LIST = r"sites/(?P<site>[^/]+)/lists/(?P<list>[^/]+)"
ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^sites/(?P<site>[^/]+)$"), "site"),
    (re.compile(r"^sites/(?P<site>[^/]+)/lists$"), "lists"),
    (re.compile(rf"^{_LIST}$"), "list"),
    (re.compile(rf"^{_LIST}/columns$"), "columns"),
    (re.compile(rf"^{_LIST}/items$"), "items"),
    (re.compile(rf"^{_LIST}/items/(?:delta|delta\(\)|microsoft\.graph\.delta\(\))$"), "delta"),
    (re.compile(rf"^{_LIST}/items/(?P<item>[^/]+)$"), "item"),
    (re.compile(rf"^{_LIST}/items/(?P<item>[^/]+)/fields$"), "fields"),
    (re.compile(r"^subscriptions$"), "subscriptions"),
    (re.compile(r"^subscriptions/(?P<sub>[^/]+)$"), "subscription"),
]


class Dispatcher:
    """Serves one Graph request (a plain one or a ``$batch`` sub-request) against the state."""

    def __init__(self, state: GraphState):
        self.state = state

    async def handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        identity: Identity,
        base: str,
    ) -> Answer:
        try:
            return await self._route(method, path.strip("/"), query, headers, body, identity, base)
        except GraphError as exc:
            return Answer.error(exc)

    async def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        identity: Identity,
        base: str,
    ) -> Answer:
        state = self.state
        for pattern, name in ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            params = match.groupdict()
            allowed = _ALLOWED[name]
            if method not in allowed:
                raise GraphError(405, "BadRequest", f"The HTTP method '{method}' is not allowed")
            if "site" in params:
                state.check_site(params["site"])
            if name == "site":
                return Answer(200, state.site_json())
            if name == "lists":
                with state._lock:
                    return Answer(
                        200, {"value": [state.list_json(x) for x in state._lists.values()]}
                    )
            if name == "subscriptions":
                if method == "GET":
                    return Answer(200, state.subscriptions_page(query, base))
                return await self._subscribe(body, identity)
            if name == "subscription":
                return self._subscription(method, params["sub"], body)
            lst = state.get_list(params["list"])
            if name == "list":
                return Answer(200, state.list_json(lst))
            if name == "columns":
                cols = [c.definition() for c in lst.columns.values()] + SYSTEM_COLUMNS
                return Answer(200, {"value": cols})
            if name == "delta":
                return Answer(200, state.delta(lst, base, path, query))
            if name == "items":
                if method == "GET":
                    return Answer(200, state.list_items(lst, base, path, query))
                if not isinstance(body, dict) or "fields" not in body:
                    raise GraphError(400, "invalidRequest", "Invalid request: 'fields' is required")
                with state._lock:
                    item = state.create_item(lst, body["fields"], identity)
                    created = state._item_json(lst, item, fields=True)
                return Answer(201, created, {"Location": f"{base}/v1.0/{path}/{item.id}"})
            if_match = headers.get("if-match")
            if name == "item":
                if method == "GET":
                    expand, select = _parse_expand(query)
                    props = _parse_select(query)
                    with state._lock:
                        item = state._item(lst, params["item"])
                        body = state._item_json(
                            lst, item, fields=expand, select=select, props=props
                        )
                        return Answer(200, body)
                with state._lock:
                    state.delete_item(lst, params["item"], if_match)
                return Answer(204)
            # fields
            with state._lock:
                if method == "GET":
                    item = state._item(lst, params["item"])
                else:
                    item = state.update_item(lst, params["item"], body, identity, if_match)
                return Answer(200, state._fields_json(lst, item, None))
        first = path.split("/", 1)[0] or path
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{first}'.")

    async def _subscribe(self, body: Any, identity: Identity) -> Answer:
        state = self.state
        if not isinstance(body, dict):
            raise GraphError(400, "InvalidRequest", "The request body must be a JSON object")
        for key in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not body.get(key):
                raise GraphError(400, "InvalidRequest", f"'{key}' is required")
        resource = str(body["resource"]).strip("/")
        match = re.fullmatch(r"sites/([^/]+)/lists/([^/]+)", resource)
        if match is None:
            raise GraphError(400, "InvalidRequest", f"Resource '{resource}' is not supported")
        state.check_site(match.group(1))
        lst = state.get_list(unquote(match.group(2)))
        if str(body["changeType"]) != "updated":
            raise GraphError(
                400, "InvalidRequest", "Only 'updated' changeType is supported for list resources"
            )
        expiration = _expiration(body["expirationDateTime"])
        url = str(body["notificationUrl"])
        host = urlsplit(url).hostname
        if state.public_notifications_only and not is_public_https(url):
            raise GraphError(
                400,
                "InvalidRequest",
                "Subscription validation request failed. The notification URL must be a "
                "public HTTPS URL.",
            )
        if urlsplit(url).scheme not in ("http", "https") or host not in ("127.0.0.1", "localhost"):
            raise GraphError(
                400,
                "InvalidRequest",
                "Subscription validation request failed. The simulator delivers only to "
                "127.0.0.1 or localhost.",
            )
        token = secrets.token_urlsafe(24)
        try:
            async with httpx.AsyncClient(timeout=VALIDATION_TIMEOUT, trust_env=False) as client:
                response = await client.post(
                    url,
                    params={"validationToken": token},
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                )
            ok = response.status_code == 200 and response.text == token
        except httpx.HTTPError:
            ok = False
        if not ok:
            raise GraphError(
                400,
                "InvalidRequest",
                "Subscription validation request failed. Notification endpoint must respond "
                "with 200 OK to validation request.",
            )
        sub = Subscription(
            id=str(uuid.uuid4()),
            resource=resource,
            list_id=lst.id,
            change_type="updated",
            notification_url=url,
            expiration=expiration,
            client_state=body.get("clientState"),
            application_id=identity.id,
            creator_id=identity.id,
        )
        with state._lock:
            state.subscriptions[sub.id] = sub
        return Answer(201, sub.as_json())

    def _subscription(self, method: str, sub_id: str, body: Any) -> Answer:
        state = self.state
        with state._lock:
            sub = state.subscriptions.get(sub_id)
            if sub is None:
                raise GraphError(404, "ResourceNotFound", f"The object '{sub_id}' doesn't exist.")
            if method == "GET":
                return Answer(200, sub.as_json())
            if method == "DELETE":
                del state.subscriptions[sub_id]
                return Answer(204)
            if not isinstance(body, dict) or not body.get("expirationDateTime"):
                raise GraphError(400, "InvalidRequest", "'expirationDateTime' is required")
            sub.expiration = _expiration(body["expirationDateTime"])
            return Answer(200, sub.as_json())


_ALLOWED = {
    "site": ("GET",),
    "lists": ("GET",),
    "list": ("GET",),
    "columns": ("GET",),
    "items": ("GET", "POST"),
    "delta": ("GET",),
    "item": ("GET", "DELETE"),
    "fields": ("GET", "PATCH"),
    "subscriptions": ("GET", "POST"),
    "subscription": ("GET", "PATCH", "DELETE"),
}


def _expiration(value: Any) -> datetime:
    when = _parse_iso(value)
    if when is None:
        raise GraphError(400, "InvalidRequest", "expirationDateTime is not a valid date and time")
    now = datetime.now(UTC)
    if when <= now:
        raise GraphError(400, "InvalidRequest", "Subscription expiration must be in the future")
    if when > now + timedelta(minutes=LIST_SUBSCRIPTION_MINUTES):
        raise GraphError(
            400,
            "InvalidRequest",
            f"Subscription expiration can only be {LIST_SUBSCRIPTION_MINUTES} minutes in the future.",
        )
    return when


def resource_units(method: str, path: str, query: dict[str, str]) -> int:
    """What a Graph request costs in SharePoint's resource units, as SharePoint documents:
    1 for a single item (an item, a list, a site) and a delta with a token; 2 for a query of
    several items (items, columns, lists, subscriptions, a delta without a token) and for
    every create, update and delete; 5 with ``$expand=permissions``."""
    if "permissions" in query.get("$expand", query.get("expand", "")):
        return 5
    if method != "GET":
        return 2
    name = next((n for pattern, n in ROUTES if pattern.match(path.strip("/"))), None)
    if name == "delta":
        return 1 if "token" in query or "$skiptoken" in query else 2
    return 2 if name in ("items", "columns", "lists", "subscriptions") else 1


def _batch_units(body: Any) -> int:
    """The resource units of a $batch: its sub-requests one by one (at least one)."""
    subs = body.get("requests") if isinstance(body, dict) else None
    units = 0
    for req in subs if isinstance(subs, list) else []:
        if isinstance(req, dict) and isinstance(req.get("url"), str):
            path, query = _split_url(req["url"].lstrip("/"))
            units += resource_units(str(req.get("method", "GET")).upper(), path, query)
    return max(units, 1)


def _json_response(answer: Answer) -> Response:
    headers = {"request-id": str(uuid.uuid4()), **answer.headers}
    if answer.body is None:
        return Response(status_code=answer.status, headers=headers)
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return unquote(parts.path), query


def create_app(state: GraphState | None = None) -> Starlette:
    """The Graph simulator as an ASGI app; ``app.state.graph`` is its :class:`GraphState`."""
    graph = state or GraphState()
    dispatcher = Dispatcher(graph)

    async def token(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        try:
            body = graph.issue_token(request.path_params["tenant"], form)
        except AadError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def api(request: Request) -> Response:
        if graph.latency_ms:
            await asyncio.sleep(graph.latency_ms / 1000)
        base = str(request.base_url).rstrip("/")
        try:
            identity = graph.authenticate(request.headers.get("authorization"))
        except GraphError as exc:
            answer = Answer.error(exc)
            answer.headers["WWW-Authenticate"] = 'Bearer realm="", error="invalid_token"'
            return _json_response(answer)
        path = request.path_params["path"]
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _json_response(
                    Answer.error(
                        GraphError(400, "BadRequest", "Unable to read JSON request payload.")
                    )
                )
        query = {k: v for k, v in request.query_params.items()}
        method = request.method.upper()
        units = _batch_units(body) if path == "$batch" else resource_units(method, path, query)
        throttled, limits = graph.charge(units)
        if throttled is not None:
            return _json_response(throttled)
        if path == "$batch":
            kind = graph.faults.draw()
            await asyncio.sleep(fault_delay(graph, kind))
            # a lock concerns one record, never a whole batch
            faulted = fault_answer(graph, kind if kind != "lock" else None, method)
            if faulted is not None:
                return _json_response(faulted)
            if method != "POST":
                return _json_response(
                    Answer.error(GraphError(405, "BadRequest", "Use POST for $batch"))
                )
            answer = await _batch(graph, dispatcher, body, identity, base)
            answer = lost_answer(kind, answer)
            answer.headers.update(limits)
            return _json_response(answer)
        with graph._lock:
            graph.requests += 1
        kind = graph.faults.draw()
        await asyncio.sleep(fault_delay(graph, kind))
        faulted = fault_answer(graph, kind, method)
        if faulted is not None:
            return _json_response(faulted)
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer = lost_answer(
            kind, await dispatcher.handle(method, path, query, headers, body, identity, base)
        )
        answer.headers.update(limits)
        return _json_response(answer)

    app = Starlette(
        routes=[
            Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
            Route("/v1.0/{path:path}", api, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
        ]
    )
    app.state.graph = graph
    return app


async def _batch(
    graph: GraphState, dispatcher: Dispatcher, body: Any, identity: Identity, base: str
) -> Answer:
    """``POST /$batch``: validate the envelope, run sub-requests honouring ``dependsOn``."""
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        return Answer.error(GraphError(400, "BadRequest", "Invalid batch payload format."))
    requests = body["requests"]
    if not requests:
        return Answer.error(GraphError(400, "BadRequest", "Batch request must contain requests."))
    if len(requests) > MAX_BATCH:
        return Answer.error(
            GraphError(
                400,
                "BadRequest",
                f"Exceeded maximum number of requests in a batch. Max allowed: {MAX_BATCH}.",
            )
        )
    by_id: dict[str, dict[str, Any]] = {}
    for req in requests:
        if (
            not isinstance(req, dict)
            or not req.get("id")
            or not req.get("method")
            or not req.get("url")
        ):
            return Answer.error(
                GraphError(400, "BadRequest", "Each batch request needs 'id', 'method' and 'url'.")
            )
        rid = str(req["id"]).lower()
        if rid in by_id:
            return Answer.error(
                GraphError(
                    400,
                    "BadRequest",
                    f"Batch request ids must be unique; '{req['id']}' is repeated.",
                )
            )
        by_id[rid] = req
    for req in requests:
        for dep in _depends_on(req):
            if dep.lower() not in by_id:
                return Answer.error(
                    GraphError(
                        400,
                        "BadRequest",
                        f"Request '{req['id']}' depends on unknown request '{dep}'.",
                    )
                )
    order: list[dict[str, Any]] = []
    placed: set[str] = set()
    while len(order) < len(requests):
        progressed = False
        for req in requests:
            rid = str(req["id"]).lower()
            if rid in placed:
                continue
            if all(d.lower() in placed for d in _depends_on(req)):
                order.append(req)
                placed.add(rid)
                progressed = True
        if not progressed:
            return Answer.error(
                GraphError(400, "BadRequest", "Batch requests have circular dependsOn.")
            )
    # faults are drawn for every sub-request before any runs; stalls overlap as if parallel
    kinds = {str(req["id"]).lower(): graph.faults.draw() for req in order}
    await asyncio.sleep(max((fault_delay(graph, k) for k in kinds.values()), default=0.0))
    statuses: dict[str, int] = {}
    responses: list[dict[str, Any]] = []
    for req in order:
        rid = str(req["id"]).lower()
        method = str(req["method"]).upper()
        failed_dep = [d for d in _depends_on(req) if not 200 <= statuses.get(d.lower(), 0) < 300]
        if failed_dep:
            answer = Answer.error(GraphError(424, "FailedDependency", "Dependency failed"))
        else:
            with graph._lock:
                graph.requests += 1
            answer = fault_answer(graph, kinds[rid], method) or lost_answer(
                kinds[rid], await _sub_request(dispatcher, req, method, identity, base)
            )
        statuses[rid] = answer.status
        item: dict[str, Any] = {"id": str(req["id"]), "status": answer.status}
        headers = dict(answer.headers)
        if answer.body is not None:
            headers.setdefault("Content-Type", "application/json")
        if headers:
            item["headers"] = headers
        if answer.body is not None:
            item["body"] = answer.body
        responses.append(item)
    if graph.reverse_batch_responses:
        responses.reverse()
    return Answer(200, {"responses": responses})


def _depends_on(req: dict[str, Any]) -> list[str]:
    deps = req.get("dependsOn") or []
    return [str(d) for d in deps] if isinstance(deps, list) else [str(deps)]


async def _sub_request(
    dispatcher: Dispatcher, req: dict[str, Any], method: str, identity: Identity, base: str
) -> Answer:
    url = str(req["url"])
    if url.lower().startswith(("http://", "https://")):
        return Answer.error(GraphError(400, "BadRequest", "Batch request URLs must be relative."))
    path, query = _split_url(url.lstrip("/"))
    if path.lower().startswith(("v1.0/", "beta/")):
        return Answer.error(
            GraphError(400, "BadRequest", "Batch request URLs are relative to the version.")
        )
    if path.strip("/") == "$batch":
        return Answer.error(GraphError(400, "BadRequest", "Nested batch requests are not allowed."))
    headers = {str(k).lower(): str(v) for k, v in (req.get("headers") or {}).items()}
    body = req.get("body")
    if body is not None and "content-type" not in headers:
        return Answer.error(
            GraphError(400, "BadRequest", "Content-Type header is required when a body is present.")
        )
    return await dispatcher.handle(method, path, query, headers, body, identity, base)


def serve(
    port: int,
    client_id: str | None = None,
    client_secret: str | None = None,
    faults: str | None = None,
    latency_ms: float = 0.0,
    data: str | Path | None = None,
    *,
    display_name: str = "twoway-sync",
    tenant: str | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Run the simulator in the foreground (``twoway simulate sharepoint``) until interrupted."""
    import uvicorn

    state = GraphState(
        client_id=client_id or "twoway",
        client_secret=client_secret or "twoway-secret",
        display_name=display_name,
        tenant_id=tenant,
        faults=FaultPlan.parse(faults),
        latency_ms=latency_ms,
    )
    if data:
        state.load_data(data)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls
    sock.bind((host, port))
    base = f"http://{host}:{sock.getsockname()[1]}"
    print(f"Graph simulator: {base}  (graph_url)", flush=True)
    print(f"Token URL: {base}/{state.tenant_id}/oauth2/v2.0/token", flush=True)
    print(
        f"Client id: {client_id or 'twoway'}  integration account: {display_name}  "
        f"lists: {', '.join(lst.title for lst in state._lists.values())}",
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), log_level="warning", lifespan="off", access_log=False)
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        state.close()
