"""A Salesforce org's REST API in memory: OAuth2 token, SOQL query with paging, sObject
rows, upsert by external ID, sObject Collections (retrieve by GET or POST), describe,
getUpdated/getDeleted.

Used by tests, the demo and benchmarks, and from the shell::

    twoway simulate salesforce --port 8766 --client-id twoway --client-secret s3cret

Shapes follow the REST API Developer Guide: errors are ``[{"errorCode", "message",
"fields"}]``; collections answer 200 with one ``{"id", "success", "errors"}`` per item;
ids are 18 characters with the object's key prefix; every response carries
``Sforce-Limit-Info: api-usage=N/15000``. Sorts, filters and ids behave as in an org
(case-insensitive strings, 15- or 18-character ids accepted). Known simplifications: the
SOQL subset of :mod:`twoway.simulators.soql`; ``Sforce-Query-Options: batchSize`` may go
below Salesforce's minimum of 200 (tests page with small batches); getUpdated/getDeleted
honour seconds (Salesforce rounds the window down to the minute).

Each :class:`SalesforceState` is one org; several can be served from one process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import random
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twoway import sfid
from twoway.simulators import soql
from twoway.simulators.faults import FaultPlan

API_VERSIONS = tuple(f"{n}.0" for n in range(31, 63))
DEFAULT_VERSION = "60.0"
API_LIMIT = 15_000
COLLECTION_LIMIT = 200
COLLECTION_GET_LIMIT = 2000
COMPOSITE_LIMIT = 25  # subrequests per composite call
DEFAULT_BATCH_SIZE = 2000
SESSION_SECONDS = 2 * 3600
#: how long a query locator stays open (Salesforce keeps them two days, uncapped in number)
LOCATOR_LIFE = timedelta(days=2)
#: how far back getUpdated and getDeleted reach ("sObject Get Updated/Deleted"), in days
UPDATED_DAYS = 30
DELETED_DAYS = 15
#: most ids one getUpdated or getDeleted answer may hold (EXCEEDED_ID_LIMIT past it)
ID_LIMIT = 600_000
STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
STRING_TYPES = frozenset(
    {"string", "textarea", "email", "phone", "url", "picklist", "id", "reference"}
)
NUMBER_TYPES = frozenset({"int", "double", "currency", "percent"})
FIELD_TYPES = STRING_TYPES | NUMBER_TYPES | {"boolean", "date", "datetime"}
SYSTEM_FIELDS = (
    "Id",
    "IsDeleted",
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
    "LastModifiedById",
    "SystemModstamp",
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ORG_SERIAL = itertools.count(1)
_ORG_SERIAL_LOCK = threading.Lock()


def format_stamp(value: datetime) -> str:
    """Salesforce's datetime form: ``2024-05-01T10:00:00.123+0000`` (milliseconds, UTC)."""
    value = value.astimezone(UTC)
    return value.strftime(STAMP_FORMAT)[:-3] + "+0000"


def parse_stamp(text: str) -> datetime | None:
    """An aware UTC datetime from ISO 8601 text (``Z``, ``+00:00`` or ``+0000``)."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class SfError(Exception):
    """An error as Salesforce reports it: HTTP status, errorCode, message, fields."""

    def __init__(self, status: int, code: str, message: str, fields: Iterable[str] = ()):
        self.status = status
        self.code = code
        self.message = message
        self.fields = list(fields)
        super().__init__(f"{code}: {message}")

    def body(self) -> list[dict[str, Any]]:
        return [{"message": self.message, "errorCode": self.code, "fields": self.fields}]

    def item(self) -> dict[str, Any]:
        """The error as one item of a collection result."""
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}


def _not_found() -> SfError:
    return SfError(404, "NOT_FOUND", "The requested resource does not exist")


# -- schema -----------------------------------------------------------------------------


@dataclass
class FieldDef:
    """One field of an sObject, as describe shows it."""

    name: str
    type: str = "string"
    length: int = 0
    label: str = ""
    external_id: bool = False
    unique: bool = False
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    required: bool = False  # required on create (not nillable, no default)
    reference_to: list[str] = field(default_factory=list)
    custom: bool = False

    def describe(self) -> dict[str, Any]:
        length = self.length if self.type in STRING_TYPES - {"id", "reference"} else 0
        return {
            "name": self.name,
            "label": self.label or self.name,
            "type": self.type,
            "length": length if self.type not in ("id", "reference") else 18,
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.type == "id" or self.external_id,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "defaultedOnCreate": not self.createable or self.type == "boolean",
            "custom": self.custom,
            "referenceTo": list(self.reference_to),
            "soapType": _SOAP_TYPES.get(self.type, "xsd:string"),
        }


_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "int": "xsd:int",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
}


def _system_fields() -> list[FieldDef]:
    ro = {"createable": False, "updateable": False, "nillable": False}
    return [
        FieldDef("Id", "id", 18, "Record ID", **ro),
        FieldDef("IsDeleted", "boolean", 0, "Deleted", **ro),
        FieldDef("CreatedDate", "datetime", 0, "Created Date", **ro),
        FieldDef("CreatedById", "reference", 18, "Created By ID", reference_to=["User"], **ro),
        FieldDef("LastModifiedDate", "datetime", 0, "Last Modified Date", **ro),
        FieldDef(
            "LastModifiedById", "reference", 18, "Last Modified By ID", reference_to=["User"], **ro
        ),
        FieldDef("SystemModstamp", "datetime", 0, "System Modstamp", **ro),
    ]


class SObjectType:
    """An sObject: its fields (by lower-cased name), live records and recycle bin."""

    def __init__(self, name: str, prefix: str, label: str = "", custom: bool = False):
        self.name = name
        self.prefix = prefix
        self.label = label or name
        self.custom = custom
        self.fields: dict[str, FieldDef] = {}
        self.records: dict[str, dict[str, Any]] = {}  # id -> field name -> typed value
        self.deleted: dict[str, dict[str, Any]] = {}  # recycle bin: id -> record with IsDeleted
        self.purged_through: datetime | None = None  # deletion time of the last record purged
        for f in _system_fields():
            self.add_field(f)

    def add_field(self, f: FieldDef) -> None:
        self.fields[f.name.lower()] = f

    def field(self, name: str) -> FieldDef | None:
        return self.fields.get(name.lower())

    def describe(self, version: str) -> dict[str, Any]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "name": self.name,
            "label": self.label,
            "keyPrefix": self.prefix,
            "custom": self.custom,
            "createable": True,
            "updateable": True,
            "deletable": True,
            "queryable": True,
            "replicateable": True,
            "fields": [f.describe() for f in self.fields.values()],
            "urls": {
                "sobject": base,
                "describe": base + "/describe",
                "rowTemplate": base + "/{ID}",
            },
        }


def _standard_objects() -> list[tuple[str, str, list[FieldDef]]]:
    return [
        (
            "User",
            "005",
            [
                FieldDef("Username", "string", 80, "Username", updateable=False, unique=True),
                FieldDef("Name", "string", 121, "Full Name", createable=False, updateable=False),
                FieldDef("Email", "email", 128, "Email"),
                FieldDef("IsActive", "boolean", 0, "Active"),
            ],
        ),
        (
            "Account",
            "001",
            [
                FieldDef("Name", "string", 255, "Account Name", nillable=False, required=True),
                FieldDef("AccountNumber", "string", 40, "Account Number"),
                FieldDef("Phone", "phone", 40, "Account Phone"),
                FieldDef("Website", "url", 255, "Website"),
                FieldDef("Industry", "picklist", 255, "Industry"),
                FieldDef("Type", "picklist", 255, "Account Type"),
                FieldDef("BillingStreet", "textarea", 255, "Billing Street"),
                FieldDef("BillingCity", "string", 40, "Billing City"),
                FieldDef("BillingPostalCode", "string", 20, "Billing Zip/Postal Code"),
                FieldDef("BillingCountry", "string", 80, "Billing Country"),
                FieldDef("NumberOfEmployees", "int", 0, "Employees"),
                FieldDef("AnnualRevenue", "currency", 0, "Annual Revenue"),
                FieldDef("Description", "textarea", 32000, "Account Description"),
            ],
        ),
        (
            "Contact",
            "003",
            [
                FieldDef("FirstName", "string", 40, "First Name"),
                FieldDef("LastName", "string", 80, "Last Name", nillable=False, required=True),
                FieldDef("Name", "string", 121, "Full Name", createable=False, updateable=False),
                FieldDef("Email", "email", 80, "Email"),
                FieldDef("Phone", "phone", 40, "Business Phone"),
                FieldDef("MobilePhone", "phone", 40, "Mobile Phone"),
                FieldDef("Title", "string", 128, "Title"),
                FieldDef("Department", "string", 80, "Department"),
                FieldDef("AccountId", "reference", 18, "Account ID", reference_to=["Account"]),
                FieldDef("Birthdate", "date", 0, "Birthdate"),
                FieldDef("HasOptedOutOfEmail", "boolean", 0, "Email Opt Out"),
                FieldDef("Description", "textarea", 32000, "Contact Description"),
            ],
        ),
    ]


# -- state ------------------------------------------------------------------------------


@dataclass
class _Client:
    secret: str
    user_id: str


@dataclass
class _Session:
    user_id: str
    expires: datetime


@dataclass
class _Cursor:
    """An open query locator: the materialised result, the batch size, when it lapses."""

    records: list[dict[str, Any]]
    batch: int
    version: str
    expires: datetime


class SalesforceState:
    """One org in memory, thread-safe (one lock around every operation).

    ``clock`` gives write times (tests may pass a virtual clock). Stamps are milliseconds
    of that clock, taken once per DML call, as in an org: every record one call writes (an
    sObject Collections request, one sObject Rows POST, PATCH or DELETE, one composite
    subrequest) shares one SystemModstamp and LastModifiedDate, and writes in the same
    millisecond share it too; stamps never go back and never run ahead of the clock.
    """

    def __init__(
        self,
        clock: Callable[[], datetime] | None = None,
        faults: FaultPlan | None = None,
        latency_ms: float = 0.0,
        api_limit: int = API_LIMIT,
        seed: int | None = None,
        org_id: str | None = None,
    ):
        if org_id is not None and not (
            sfid.is_valid(org_id, strict=False) and org_id.startswith("00D")
        ):
            raise ValueError(f"--org: {org_id!r} is not an org id (15 or 18 characters, 00D...)")
        with _ORG_SERIAL_LOCK:
            serial = next(_ORG_SERIAL)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        # an org's record ids carry its instance (pod), as its own id does: an org given
        # its id names the same records in every process, whatever ran before it
        self.pod = org_id[3:5] if org_id else sfid.base62(serial % (62 * 62), 2)
        self.org_id = sfid.to18(org_id) if org_id else sfid.make_id("00D", self.pod, serial)
        self.faults = faults or FaultPlan()
        self.latency_ms = latency_ms
        self.api_limit = api_limit
        self.api_usage = 0
        self.objects: dict[str, SObjectType] = {}
        self._serials: dict[str, itertools.count[int]] = {}
        self._last_stamp: datetime | None = None
        self._dml_stamp: datetime | None = None  # the stamp of the DML call under way
        #: people's edits that land right after a retrieve names their record:
        #: [sObject, id, values, user, retrieves still to come before it lands]
        self._after_read: list[list[Any]] = []
        self._clients: dict[str, _Client] = {}
        self._usernames: dict[str, str] = {}  # username -> user id
        self._sessions: dict[str, _Session] = {}
        self._cursors: OrderedDict[str, _Cursor] = OrderedDict()
        self._journal: list[Callable[[], None]] | None = None
        self._custom_count = 0
        #: changes of transactions still open: (visible from, sObject, id, record as committed)
        self._uncommitted: list[tuple[datetime, str, str, dict[str, Any]]] = []
        self._writing: str | None = None  # id of the record being updated (unique checks skip it)
        self.system_user: str | None = None
        self.session_seconds = SESSION_SECONDS
        self.id_limit = ID_LIMIT  # most ids one getUpdated or getDeleted answer may hold
        for name, prefix, fields in _standard_objects():
            obj = SObjectType(name, prefix)
            for f in fields:
                obj.add_field(f)
            self.objects[name.lower()] = obj
        self.system_user = self.user_id("Automated Process")

    # -- bookkeeping ------------------------------------------------------------------

    def _stamp(self) -> datetime:
        """The SystemModstamp of a write: the DML call's own when one is under way, else
        the clock's millisecond (never before a stamp already given)."""
        if self._dml_stamp is not None:
            return self._dml_stamp
        now = self._clock().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if self._last_stamp is not None and now < self._last_stamp:
            now = self._last_stamp  # a clock stepped back: ties rather than goes back
        self._last_stamp = now
        return now

    @contextmanager
    def dml(self) -> Iterator[datetime]:
        """One DML call: every record written inside shares the stamp taken on entry."""
        with self._lock:
            if self._dml_stamp is not None:  # a call within a call is the same call
                yield self._dml_stamp
                return
            self._dml_stamp = self._stamp()
            try:
                yield self._dml_stamp
            finally:
                self._dml_stamp = None

    def now(self) -> datetime:
        """The org's current time."""
        return self._clock().astimezone(UTC)

    def new_id(self, prefix: str) -> str:
        counter = self._serials.setdefault(prefix, itertools.count(1))
        return sfid.make_id(prefix, self.pod, next(counter))

    def sobject(self, name: str) -> SObjectType:
        """The sObject called ``name`` (any case); 404 NOT_FOUND when the org has none."""
        obj = self.objects.get(name.lower())
        if obj is None:
            raise SfError(
                404,
                "NOT_FOUND",
                f"The requested resource does not exist: sObject type '{name}' is not supported",
            )
        return obj

    def _remember(self, undo: Callable[[], None]) -> None:
        if self._journal is not None:
            self._journal.append(undo)

    # -- schema -----------------------------------------------------------------------

    def define(
        self,
        name: str,
        fields: Mapping[str, Mapping[str, Any]] | None = None,
        label: str | None = None,
    ) -> SObjectType:
        """Add an object (custom ones end in ``__c`` and get prefixes a00, a01, ...) or add
        fields to an existing one. A field spec: ``type``, ``length``, ``externalId``,
        ``unique``, ``required``, ``updateable``, ``label``, ``referenceTo``."""
        with self._lock:
            obj = self.objects.get(name.lower())
            if obj is None:
                if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                    raise ValueError(f"object name {name!r} is not a valid API name")
                custom = name.endswith("__c")
                if custom:
                    prefix = sfid.custom_prefix(self._custom_count)
                    self._custom_count += 1
                else:
                    prefix = "0" + sfid.base62(62 * 20 + len(self.objects), 2)
                obj = SObjectType(name, prefix, label or name, custom)
                if custom:
                    obj.add_field(FieldDef("Name", "string", 80, f"{label or name} Name"))
                self.objects[name.lower()] = obj
            for fname, spec in (fields or {}).items():
                obj.add_field(_field_from_spec(fname, spec))
            return obj

    def load_data(self, data: Mapping[str, Any]) -> None:
        """Apply a data document: ``objects`` (name -> {label, fields}) then ``records``
        (name -> list of field values, created by the ``user`` given or "Data Loader")."""
        for name, spec in (data.get("objects") or {}).items():
            spec = spec or {}
            self.define(name, spec.get("fields") or {}, spec.get("label"))
        for name, rows in (data.get("records") or {}).items():
            for row in rows or []:
                row = dict(row)
                user = row.pop("_user", None) or "Data Loader"
                self.user_create(name, row, user=user)

    # -- users, clients, sessions -----------------------------------------------------

    def user_id(self, name: str) -> str:
        """The 18-character id of the User called ``name``, created on first use."""
        with self._lock:
            username = (
                name
                if "@" in name
                else re.sub(r"\W+", ".", name.lower()).strip(".") + "@example.org"
            )
            if username in self._usernames:
                return self._usernames[username]
            users = self.objects["user"]
            uid = self.new_id("005")
            stamp = self._stamp()
            creator = self.system_user or uid
            users.records[uid] = {
                "Id": uid,
                "Username": username,
                "Name": name,
                "Email": username,
                "IsActive": True,
                "IsDeleted": False,
                "CreatedDate": stamp,
                "CreatedById": creator,
                "LastModifiedDate": stamp,
                "LastModifiedById": creator,
                "SystemModstamp": stamp,
            }
            self._usernames[username] = uid
            return uid

    def add_client(self, client_id: str, client_secret: str, user: str) -> str:
        """Register a connected app's client credentials acting as ``user``; its user id."""
        uid = self.user_id(user)
        with self._lock:
            self._clients[client_id] = _Client(client_secret, uid)
        return uid

    def issue_token(self, client_id: str, client_secret: str) -> tuple[str, str]:
        """A new access token and its user id; SfError(400 invalid_client) for bad credentials."""
        with self._lock:
            client = self._clients.get(client_id)
            if client is None or not hmac.compare_digest(client.secret, client_secret):
                raise SfError(400, "invalid_client", "invalid client credentials")
            token = self.org_id[:15] + "!" + secrets.token_urlsafe(48)
            self._sessions[token] = _Session(
                client.user_id, self.now() + timedelta(seconds=self.session_seconds)
            )
            return token, client.user_id

    def session_user(self, token: str | None) -> str | None:
        """The user id a live access token acts as; None when invalid or expired."""
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is None or session.expires <= self.now():
                return None
            return session.user_id

    def expire_sessions(self) -> None:
        """End every session (clients must get a new token), as an admin or a timeout would."""
        with self._lock:
            self._sessions.clear()

    def client_secret(self, client_id: str) -> str | None:
        with self._lock:
            client = self._clients.get(client_id)
            return client.secret if client else None

    # -- values -----------------------------------------------------------------------

    def _check_values(
        self, obj: SObjectType, values: Mapping[str, Any], creating: bool, skip: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Typed values keyed by canonical field names; SfError for what an org refuses."""
        skip = {s.lower() for s in skip}
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name.lower() in skip:
                continue
            f = obj.field(name)
            if f is None:
                raise SfError(
                    400,
                    "INVALID_FIELD",
                    f"No such column '{name}' on sobject of type {obj.name}",
                    [name],
                )
            allowed = f.createable if creating else f.updateable
            if not allowed:
                verb = "create" if creating else "update"
                raise SfError(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to {verb} fields: {f.name}. Please check the security settings "
                    "of this field and verify that it is read/write for your profile or "
                    "permission set.",
                    [f.name],
                )
            out[f.name] = self._coerce_value(obj, f, value)
        if creating:
            missing = [
                f.name for f in obj.fields.values() if f.required and out.get(f.name) in (None, "")
            ]
        else:
            missing = [n for n, v in out.items() if obj.field(n).required and v in (None, "")]  # type: ignore[union-attr]
        if missing:
            raise SfError(
                400,
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )
        return out

    def _coerce_value(self, obj: SObjectType, f: FieldDef, value: Any) -> Any:
        if value is None:
            return None
        kind = f.type

        def bad(shown: str) -> SfError:
            return SfError(
                400,
                "JSON_PARSER_ERROR",
                f"Cannot deserialize instance of {kind} from {shown} value {value!r} "
                f"for field {f.name}",
                [f.name],
            )

        if kind in ("string", "textarea", "email", "phone", "url", "picklist"):
            if not isinstance(value, str):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise bad(type(value).__name__)
                value = str(value)
            if f.length and len(value) > f.length:
                raise SfError(
                    400,
                    "STRING_TOO_LONG",
                    f"{f.label or f.name}: data value too large: {value[:40]} (max length={f.length})",
                    [f.name],
                )
            if kind == "email" and value and not _EMAIL.match(value):
                raise SfError(
                    400,
                    "INVALID_EMAIL_ADDRESS",
                    f"{f.label or f.name}: invalid email address: {value}",
                    [f.name],
                )
            if f.unique or f.external_id:
                self._check_unique(obj, f, value)
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                raise bad("VALUE_STRING" if isinstance(value, str) else type(value).__name__)
            return value
        if kind in NUMBER_TYPES:
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
                raise bad(type(value).__name__)
            try:
                number = Decimal(str(value))
            except ArithmeticError:
                raise bad("VALUE_STRING") from None
            if kind == "int":
                if number != number.to_integral_value():
                    raise bad("VALUE_NUMBER_FLOAT")
                return int(number)
            return float(number)
        if kind == "date":
            try:
                return date.fromisoformat(str(value)[:10])
            except ValueError:
                raise bad("VALUE_STRING") from None
        if kind == "datetime":
            parsed = parse_stamp(str(value))
            if parsed is None:
                raise bad("VALUE_STRING")
            return parsed
        if kind in ("reference", "id"):
            if not isinstance(value, str) or not value:
                raise bad(type(value).__name__)
            try:
                ref = sfid.to18(value)
            except ValueError:
                raise SfError(
                    400,
                    "MALFORMED_ID",
                    f"{f.label or f.name}: id value of incorrect type: {value}",
                    [f.name],
                ) from None
            targets = [self.objects.get(t.lower()) for t in f.reference_to]
            if not any(t is not None and ref in t.records for t in targets):
                raise SfError(
                    400,
                    "INVALID_CROSS_REFERENCE_KEY",
                    f"{f.label or f.name}: id value of incorrect type: {value}",
                    [f.name],
                )
            return ref
        raise bad(type(value).__name__)

    def _check_unique(self, obj: SObjectType, f: FieldDef, value: str) -> None:
        if not f.unique:
            return
        folded = value.casefold()
        for rid, rec in obj.records.items():
            other = rec.get(f.name)
            if isinstance(other, str) and other.casefold() == folded and rid != self._writing:
                raise SfError(
                    400,
                    "DUPLICATE_VALUE",
                    f"duplicate value found: {f.name} duplicates value on record with id: {rid}",
                    [f.name],
                )

    # -- record operations ------------------------------------------------------------

    def _find(self, obj: SObjectType, record_id: str) -> dict[str, Any]:
        """The live record ``record_id`` (15 or 18 characters)."""
        try:
            rid = sfid.to18(record_id)
        except ValueError:
            raise SfError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {record_id}",
            ) from None
        record = obj.records.get(rid)
        if record is None:
            if rid in obj.deleted:
                raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted")
            raise _not_found()
        return record

    def _check_unlocked(self, rid: str) -> None:
        """A record changed by a transaction still open is locked until it commits: other
        writes fail with UNABLE_TO_LOCK_ROW (as in an org, after waiting for the lock)
        rather than be overwritten when it commits."""
        self.commit_due()
        if any(pending == rid for _, _, pending, _ in self._uncommitted):
            raise SfError(
                400,
                "UNABLE_TO_LOCK_ROW",
                "unable to obtain exclusive access to this record or 1 records",
            )

    @staticmethod
    def _derive(obj: SObjectType, record: dict[str, Any]) -> None:
        """Fields an org computes: a Contact's Name from its first and last names."""
        if obj.name == "Contact":
            parts = [record.get("FirstName"), record.get("LastName")]
            record["Name"] = " ".join(p for p in parts if p) or None

    def create(self, sobject: str, values: Mapping[str, Any], user_id: str) -> str:
        """Insert a record as ``user_id``; its new 18-character id."""
        with self._lock:
            obj = self.sobject(sobject)
            if any(k.lower() == "id" for k in values):
                raise SfError(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    "cannot specify Id in an insert call",
                    ["Id"],
                )
            typed = self._check_values(obj, values, creating=True)
            rid = self.new_id(obj.prefix)
            stamp = self._stamp()
            record: dict[str, Any] = {
                f.name: (False if f.type == "boolean" else None) for f in obj.fields.values()
            }
            record.update(typed)
            record.update(
                {
                    "Id": rid,
                    "IsDeleted": False,
                    "CreatedDate": stamp,
                    "CreatedById": user_id,
                    "LastModifiedDate": stamp,
                    "LastModifiedById": user_id,
                    "SystemModstamp": stamp,
                }
            )
            self._derive(obj, record)
            obj.records[rid] = record
            self._remember(lambda: obj.records.pop(rid, None))
            return rid

    def update(
        self,
        sobject: str,
        record_id: str,
        values: Mapping[str, Any],
        user_id: str,
        unmodified_since: datetime | None = None,
    ) -> str:
        """Change some fields of a record as ``user_id``; SfError 412 when it was modified
        after ``unmodified_since``. Returns the 18-character id."""
        with self._lock:
            obj = self.sobject(sobject)
            record = self._find(obj, record_id)
            self._check_unlocked(record["Id"])
            if (
                unmodified_since is not None
                and record["LastModifiedDate"].replace(microsecond=0) > unmodified_since
            ):
                raise SfError(
                    412,
                    "PRECONDITION_FAILED",
                    "The requested resource has been modified since the If-Unmodified-Since date",
                )
            self._writing = record["Id"]
            try:
                typed = self._check_values(obj, values, creating=False, skip=("Id",))
            finally:
                self._writing = None
            before = dict(record)
            record.update(typed)
            stamp = self._stamp()
            record.update(
                {"LastModifiedDate": stamp, "LastModifiedById": user_id, "SystemModstamp": stamp}
            )
            self._derive(obj, record)
            self._remember(lambda: (record.clear(), record.update(before)))
            return record["Id"]

    def delete(self, sobject: str, record_id: str, user_id: str) -> str:
        """Move a record to the recycle bin as ``user_id`` (getDeleted reports it)."""
        with self._lock:
            obj = self.sobject(sobject)
            record = self._find(obj, record_id)
            rid = record["Id"]
            self._check_unlocked(rid)
            before = dict(record)
            stamp = self._stamp()
            del obj.records[rid]
            record.update(
                {
                    "IsDeleted": True,
                    "LastModifiedDate": stamp,
                    "LastModifiedById": user_id,
                    "SystemModstamp": stamp,
                }
            )
            obj.deleted[rid] = record

            def undo() -> None:
                obj.deleted.pop(rid, None)
                record.clear()
                record.update(before)
                obj.records[rid] = record

            self._remember(undo)
            return rid

    def upsert(
        self, sobject: str, ext_field: str, ext_value: Any, values: Mapping[str, Any], user_id: str
    ) -> tuple[str, bool]:
        """Update the record whose external ID field holds ``ext_value``, or create it;
        returns (id, created). 300 MULTIPLE_CHOICES when several records match."""
        with self._lock:
            obj = self.sobject(sobject)
            f = obj.field(ext_field)
            if f is None or not (f.external_id or f.type == "id"):
                raise SfError(
                    404,
                    "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {ext_field}",
                )
            if f.type == "id":
                if ext_value in (None, ""):
                    return self.create(
                        sobject, {k: v for k, v in values.items() if k.lower() != "id"}, user_id
                    ), True
                return self.update(sobject, str(ext_value), values, user_id), False
            given = {k: v for k, v in values.items() if k.lower() != f.name.lower()}
            if any(k.lower() == "id" for k in given):
                raise SfError(400, "INVALID_FIELD", "Id is not allowed in an upsert body", ["Id"])
            folded = str(ext_value).casefold()
            found = [
                rid
                for rid, rec in obj.records.items()
                if rec.get(f.name) is not None and str(rec[f.name]).casefold() == folded
            ]
            if len(found) > 1:
                raise SfError(
                    300, "MULTIPLE_CHOICES", f"{len(found)} records match {f.name} = {ext_value}"
                )
            if found:
                return self.update(sobject, found[0], given, user_id), False
            return self.create(sobject, {**given, f.name: ext_value}, user_id), True

    def get(
        self, sobject: str, record_id: str, fields: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """A live record as JSON values (all fields, or the named ones)."""
        with self._lock:
            obj = self.sobject(sobject)
            return self._render(obj, self._find(obj, record_id), self._field_list(obj, fields))

    def _field_list(self, obj: SObjectType, fields: Iterable[str] | None) -> list[str]:
        if fields is None:
            return [f.name for f in obj.fields.values()]
        names = []
        for name in fields:
            f = obj.field(name.strip())
            if f is None:
                raise SfError(
                    400,
                    "INVALID_FIELD",
                    f"No such column '{name.strip()}' on entity '{obj.name}'. "
                    "If you are attempting to use a custom field, be sure to append the '__c' "
                    "after the custom field name.",
                    [name.strip()],
                )
            names.append(f.name)
        return names

    def _render(
        self,
        obj: SObjectType,
        record: Mapping[str, Any],
        names: list[str],
        version: str = DEFAULT_VERSION,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {
                "type": obj.name,
                "url": f"/services/data/v{version}/sobjects/{obj.name}/{record['Id']}",
            }
        }
        for name in names:
            out[name] = _json_value(record.get(name))
        return out

    # -- query ------------------------------------------------------------------------

    def query(
        self,
        text: str,
        include_deleted: bool = False,
        batch: int = DEFAULT_BATCH_SIZE,
        version: str = DEFAULT_VERSION,
    ) -> dict[str, Any]:
        """Run a SOQL query: the first batch of its result and a locator for the rest."""
        try:
            parsed = soql.parse(text)
        except soql.SoqlError as exc:
            raise SfError(400, exc.code, str(exc)) from None
        with self._lock:
            obj = self.objects.get(parsed.sobject.lower())
            if obj is None:
                raise SfError(
                    400,
                    "INVALID_TYPE",
                    f"sObject type '{parsed.sobject}' is not supported. "
                    "If you are attempting to use a custom object, be sure to append the '__c' "
                    "after the entity name.",
                )

            def resolve(name: str) -> str:
                f = obj.field(name)
                if f is None:
                    raise soql.SoqlError(
                        "INVALID_FIELD",
                        f"No such column '{name}' on entity '{obj.name}'. "
                        "If you are attempting to use a custom field, be sure to append "
                        "the '__c' after the custom field name.",
                    )
                return f.name

            def coerce(name: str, value: Any) -> Any:
                return _coerce_literal(obj.fields[name.lower()], value)

            try:
                parsed.bind(resolve, coerce)
            except soql.SoqlError as exc:
                raise SfError(400, exc.code, str(exc)) from None
            rows = list(obj.records.values())
            if include_deleted:
                rows += list(obj.deleted.values())
            rows = [r for r in rows if soql.matches(parsed.where, r)]
            if parsed.order_by:
                rows.sort(key=soql.sort_key(parsed.order_by))
            if parsed.offset:
                rows = rows[parsed.offset :]
            if parsed.limit is not None:
                rows = rows[: parsed.limit]
            names = list(dict.fromkeys(parsed.fields))
            rendered = [self._render(obj, r, names, version) for r in rows]
            return self._page(rendered, batch, version, None)

    def _page(
        self,
        rendered: list[dict[str, Any]],
        batch: int,
        version: str,
        locator: str | None,
        offset: int = 0,
    ) -> dict[str, Any]:
        chunk = rendered[offset : offset + batch]
        done = offset + batch >= len(rendered)
        answer: dict[str, Any] = {"totalSize": len(rendered), "done": done}
        if not done:
            if locator is None:
                now = self.now()
                while self._cursors and next(iter(self._cursors.values())).expires <= now:
                    self._cursors.popitem(last=False)  # opened first, so lapsed first
                locator = sfid.make_id("0r8", self.pod, self._rng.randrange(62**8))
                self._cursors[locator] = _Cursor(rendered, batch, version, now + LOCATOR_LIFE)
            answer["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{offset + batch}"
        elif locator is not None:
            self._cursors.pop(locator, None)
        answer["records"] = chunk
        return answer

    def query_more(self, locator_text: str) -> dict[str, Any]:
        """The next batch of an open query: ``locator_text`` is ``0r8...-offset``."""
        locator, _, offset_text = locator_text.partition("-")
        with self._lock:
            cursor = self._cursors.get(locator)
            if cursor is not None and cursor.expires <= self.now():
                del self._cursors[locator]
                cursor = None
            if cursor is None or not offset_text.isdigit():
                raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            return self._page(
                cursor.records, cursor.batch, cursor.version, locator, int(offset_text)
            )

    # -- replication ------------------------------------------------------------------

    def purge_deleted(self, sobject: str, before: datetime | None = None) -> int:
        """Empty the recycle bin of ``sobject`` of records deleted before ``before`` (all
        when None), as the Recycle Bin's emptying or the delete log's purge does: getDeleted
        then refuses a start earlier than the last one purged. Returns how many went."""
        with self._lock:
            obj = self.sobject(sobject)
            gone = [
                rid
                for rid, r in obj.deleted.items()
                if before is None or r["SystemModstamp"] < before
            ]
            for rid in gone:
                stamp = obj.deleted.pop(rid)["SystemModstamp"]
                if obj.purged_through is None or stamp > obj.purged_through:
                    obj.purged_through = stamp
            return len(gone)

    def _window(self, start: str | None, end: str | None, days: int) -> tuple[datetime, datetime]:
        if not start or not end:
            raise SfError(400, "MISSING_ARGUMENT", "start and end are required")
        begin, finish = parse_stamp(start), parse_stamp(end)
        if begin is None or finish is None:
            raise SfError(
                400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 date-times"
            )
        if finish < begin:
            raise SfError(400, "INVALID_REPLICATION_DATE", "end date is before start date")
        if begin < self.now() - timedelta(days=days):
            raise SfError(
                400, "INVALID_REPLICATION_DATE", f"startDate cannot be more than {days} days ago"
            )
        return begin, min(finish, self.now())

    def _within_id_limit(self, count: int) -> None:
        if count > self.id_limit:
            raise SfError(
                400,
                "EXCEEDED_ID_LIMIT",
                f"The replication window holds more than {self.id_limit} ids; ask for a "
                "shorter one",
            )

    def updated(self, sobject: str, start: str | None, end: str | None) -> dict[str, Any]:
        """getUpdated: ids of live records changed in [start, end]."""
        with self._lock:
            obj = self.sobject(sobject)
            begin, finish = self._window(start, end, UPDATED_DAYS)
            ids = sorted(
                rid for rid, r in obj.records.items() if begin <= r["SystemModstamp"] <= finish
            )
            self._within_id_limit(len(ids))
            return {"ids": ids, "latestDateCovered": format_stamp(self._covered(finish))}

    def deleted(self, sobject: str, start: str | None, end: str | None) -> dict[str, Any]:
        """getDeleted: records deleted in [start, end] with their deletion dates."""
        with self._lock:
            obj = self.sobject(sobject)
            begin, finish = self._window(start, end, DELETED_DAYS)
            if obj.purged_through is not None and begin < obj.purged_through:
                raise SfError(
                    400,
                    "INVALID_REPLICATION_DATE",
                    "startDate is before the earliest date available "
                    f"({format_stamp(obj.purged_through)}): deleted records were purged",
                )
            found = sorted(
                (r["SystemModstamp"], rid)
                for rid, r in obj.deleted.items()
                if begin <= r["SystemModstamp"] <= finish
            )
            self._within_id_limit(len(found))
            earliest = obj.purged_through or min(
                (r["SystemModstamp"] for r in obj.deleted.values()), default=begin
            )
            return {
                "deletedRecords": [
                    {"id": rid, "deletedDate": format_stamp(when)} for when, rid in found
                ],
                "earliestDateAvailable": format_stamp(earliest),
                "latestDateCovered": format_stamp(self._covered(finish)),
            }

    # -- collections ------------------------------------------------------------------

    def collection(
        self,
        items: list[Callable[[], dict[str, Any]]],
        all_or_none: bool,
        locked: frozenset[int] | set[int] = frozenset(),
    ) -> list[dict[str, Any]]:
        """Run each item (a function returning its success result, raising SfError) as one
        DML call (one stamp for every record it writes); with ``all_or_none`` every change
        is rolled back when one item fails. ``locked`` items fail with UNABLE_TO_LOCK_ROW
        before touching data."""
        with self.dml():
            self._journal = [] if all_or_none else None
            results: list[dict[str, Any]] = []
            failed = False
            try:
                for index, run in enumerate(items):
                    try:
                        if index in locked:
                            raise SfError(
                                400,
                                "UNABLE_TO_LOCK_ROW",
                                "unable to obtain exclusive access to this record or 1 records",
                            )
                        results.append(run())
                    except SfError as exc:
                        failed = True
                        results.append({"success": False, "errors": [exc.item()]})
                        if all_or_none:
                            break
                if all_or_none and failed:
                    for undo in reversed(self._journal or []):
                        undo()
                    out = []
                    for index in range(len(items)):
                        if index < len(results) and not results[index]["success"]:
                            out.append({"id": None, **results[index]})
                        else:
                            out.append(
                                {
                                    "id": None,
                                    "success": False,
                                    "errors": [
                                        {
                                            "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                            "message": "Record rolled back because not all records were valid and "
                                            "the request was using AllOrNone header",
                                            "fields": [],
                                        }
                                    ],
                                }
                            )
                    return out
                return [r if "id" in r else {"id": None, **r} for r in results]
            finally:
                self._journal = None

    # -- the people's API: tests play users through these ------------------------------

    def user_create(self, sobject: str, values: Mapping[str, Any], user: str = "Alice") -> str:
        """Create a record as the User called ``user``; its id."""
        return self.create(sobject, values, self.user_id(user))

    def user_update(
        self,
        sobject: str,
        record_id: str,
        values: Mapping[str, Any],
        user: str = "Alice",
        commit_lag: float = 0.0,
    ) -> None:
        """Change some fields of a record as the User called ``user``. With ``commit_lag``
        the change sits in a long transaction: stamped now, seen only ``commit_lag``
        seconds later, and getUpdated/getDeleted hold ``latestDateCovered`` below it
        meanwhile, as an org does while a transaction is open."""
        with self._lock:
            obj = self.sobject(sobject)
            before = dict(self._find(obj, record_id))
            self.update(sobject, record_id, values, self.user_id(user))
            if commit_lag > 0:
                record = obj.records[before["Id"]]
                committed = dict(record)
                record.clear()
                record.update(before)
                due = self.now() + timedelta(seconds=commit_lag)
                self._uncommitted.append((due, obj.name, before["Id"], committed))

    def commit_due(self) -> None:
        """Make the changes of transactions that have ended visible, with their own stamps."""
        with self._lock:
            now = self.now()
            for _, sobject, rid, committed in [u for u in self._uncommitted if u[0] <= now]:
                record = self.sobject(sobject).records.get(rid)
                if record is not None:
                    record.update(committed)
            self._uncommitted = [u for u in self._uncommitted if u[0] > now]

    def _covered(self, finish: datetime) -> datetime:
        """``latestDateCovered``: ``finish``, held below the oldest open transaction."""
        pending = [c["SystemModstamp"] for _, _, _, c in self._uncommitted]
        return min([finish, *(p - timedelta(milliseconds=1) for p in pending)])

    def system_bump(self, sobject: str, record_ids: Iterable[str]) -> datetime:
        """A system process touches records without editing them (a roll-up summary
        recalculated, a sharing recalculation, an automated process): SystemModstamp
        moves to now, LastModifiedDate and LastModifiedById stay. One DML call; its stamp."""
        with self.dml() as stamp:
            obj = self.sobject(sobject)
            for rid in record_ids:
                record = self._find(obj, rid)
                before = record["SystemModstamp"]
                record["SystemModstamp"] = stamp
                self._remember(lambda r=record, b=before: r.update(SystemModstamp=b))
            return stamp

    def bump_any(self) -> str | None:
        """The ``bump`` fault: a system-only bump of one live record, drawn from every
        sObject but User; its id (None when the org holds no such record)."""
        with self._lock:
            pool = [
                (obj.name, rid)
                for obj in self.objects.values()
                if obj.name != "User"
                for rid in obj.records
            ]
            if not pool:
                return None
            sobject, rid = pool[self._rng.randrange(len(pool))]
            self.system_bump(sobject, [rid])
            return rid

    def edit_after_read(
        self,
        sobject: str,
        record_id: str,
        values: Mapping[str, Any] | None,
        user: str = "Alice",
        nth: int = 1,
    ) -> None:
        """A person's edit (a delete when ``values`` is None) that lands right after the
        ``nth`` collection retrieve naming the record has been answered (GET or POST on
        ``/composite/sobjects/X``): a client that checks versions with a retrieve and then
        writes meets it in between."""
        with self._lock:
            rid = self._find(self.sobject(sobject), record_id)["Id"]
            edit = None if values is None else dict(values)
            self._after_read.append([sobject, rid, edit, user, nth])

    def _read_answered(self, ids: Iterable[str]) -> None:
        """A retrieve naming ``ids`` was answered: apply the edits waiting for it."""
        named = set()
        for rid in ids:
            try:
                named.add(sfid.to18(rid))
            except ValueError:
                continue
        due = []
        for pending in self._after_read:
            if pending[1] in named:
                pending[4] -= 1
                if pending[4] <= 0:
                    due.append(pending)
        for pending in due:
            self._after_read.remove(pending)
            sobject, rid, values, user, _ = pending
            if values is None:
                self.user_delete(sobject, rid, user=user)
            else:
                self.user_update(sobject, rid, values, user=user)

    def user_delete(self, sobject: str, record_id: str, user: str = "Alice") -> None:
        """Delete a record as the User called ``user``."""
        self.delete(sobject, record_id, self.user_id(user))

    def records(self, sobject: str) -> list[dict[str, Any]]:
        """Every live record of an object, as JSON values (tests)."""
        with self._lock:
            obj = self.sobject(sobject)
            names = [f.name for f in obj.fields.values()]
            return [self._render(obj, r, names) for r in obj.records.values()]

    def count_api_call(self) -> int:
        with self._lock:
            self.api_usage += 1
            return self.api_usage


def _field_from_spec(name: str, spec: Mapping[str, Any]) -> FieldDef:
    spec = dict(spec or {})
    kind = str(spec.get("type", "string")).lower()
    if kind not in FIELD_TYPES:
        raise ValueError(
            f"field {name}: unknown type {kind!r}; expected one of {', '.join(sorted(FIELD_TYPES))}"
        )
    default_length = {
        "string": 255,
        "textarea": 32768,
        "email": 80,
        "phone": 40,
        "url": 255,
        "picklist": 255,
    }
    required = bool(spec.get("required", False))
    return FieldDef(
        name=name,
        type=kind,
        length=int(spec.get("length", default_length.get(kind, 0))),
        label=str(spec.get("label", name)),
        external_id=bool(spec.get("externalId", spec.get("external_id", False))),
        unique=bool(spec.get("unique", False)),
        nillable=not required,
        required=required,
        updateable=bool(spec.get("updateable", True)),
        reference_to=list(spec.get("referenceTo", spec.get("reference_to", [])) or []),
        custom=name.endswith("__c"),
    )


def _coerce_literal(f: FieldDef, value: Any) -> Any:
    """A SOQL literal as the typed value of field ``f``; INVALID_FIELD when the kinds differ."""
    if value is None:
        return None
    kind = f.type

    def wrong(expected: str) -> soql.SoqlError:
        return soql.SoqlError(
            "INVALID_FIELD",
            f"value of filter criterion for field '{f.name}' must be of type "
            f"{expected} and should not be enclosed in quotes"
            if expected != "string"
            else f"value of filter criterion for field '{f.name}' must be of type string "
            "and should be enclosed in quotes",
        )

    if kind in ("id", "reference"):
        if not isinstance(value, str):
            raise wrong("string")
        try:
            return sfid.to18(value)
        except ValueError:
            raise soql.SoqlError(
                "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {value}"
            ) from None
    if kind in STRING_TYPES:
        if not isinstance(value, str):
            raise wrong("string")
        return value
    if kind == "datetime":
        if isinstance(value, datetime):
            return value
        raise wrong("dateTime")
    if kind == "date":
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        raise wrong("date")
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        raise wrong("boolean")
    if kind in NUMBER_TYPES:
        if isinstance(value, int | Decimal) and not isinstance(value, bool):
            return float(value) if kind != "int" else value
        raise wrong("number")
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_stamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


# -- HTTP -------------------------------------------------------------------------------


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(
        data,
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json;charset=UTF-8",
    )


def _error(exc: SfError, headers: Mapping[str, str] | None = None) -> Response:
    if exc.code in ("invalid_client", "invalid_grant", "unsupported_grant_type", "invalid_request"):
        return _json({"error": exc.code, "error_description": exc.message}, exc.status, headers)
    return _json(exc.body(), exc.status, headers)


_DATA = re.compile(r"^/services/data/v(?P<version>\d+\.\d)(?P<rest>/.*)?$")


class SalesforceApp:
    """The HTTP face of a :class:`SalesforceState`: auth, limits, faults, routing."""

    def __init__(self, state: SalesforceState):
        self.state = state

    def _limit_header(self) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.state.api_usage}/{self.state.api_limit}"}

    async def handle(self, request: Request) -> Response:
        """Answer one request; every answer carries the Sforce-Limit-Info header, and a
        Date header from the org's clock (clients take it as the server's time)."""
        self.state.commit_due()
        response = await self._handle(request)
        if "sforce-limit-info" not in response.headers:
            response.headers.update(self._limit_header())
        response.headers["Date"] = format_datetime(self.state.now(), usegmt=True)
        return response

    async def _handle(self, request: Request) -> Response:
        state = self.state
        if state.latency_ms:
            await asyncio.sleep(state.latency_ms / 1000)
        path = request.url.path
        base = f"{request.url.scheme}://{request.url.netloc}"
        if path.rstrip("/") == "/services/oauth2/token":
            return await self._token(request, base)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "oauth"):
            token = ""
        user = state.session_user(token.strip())
        if user is None:
            return _json(
                [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
                401,
                {"WWW-Authenticate": 'Token realm="Salesforce"'},
            )
        method = request.method
        writing = method in ("POST", "PATCH", "PUT", "DELETE")
        fault = state.faults.draw()
        if fault == "timeout":
            await asyncio.sleep(state.faults.timeout_seconds)
            return _too_long()
        if fault == "slow":
            await asyncio.sleep(state.faults.slow_seconds)
        if fault == "bump":  # a system process touched a record; the request goes on
            state.bump_any()
        retry_after = {"Retry-After": str(state.faults.retry_after)}
        if fault == "throttle":
            return _json(
                [
                    {
                        "message": "TotalRequests Limit exceeded.",
                        "errorCode": "REQUEST_LIMIT_EXCEEDED",
                    }
                ],
                403,
                {**self._limit_header(), **retry_after},
            )
        if fault == "unavailable":
            return _json(
                [
                    {
                        "message": "Server temporarily unavailable; try again",
                        "errorCode": "SERVER_UNAVAILABLE",
                    }
                ],
                503,
                retry_after,
            )
        usage = state.count_api_call()
        limit = self._limit_header()
        if usage > state.api_limit:
            return _json(
                [
                    {
                        "message": "TotalRequests Limit exceeded.",
                        "errorCode": "REQUEST_LIMIT_EXCEEDED",
                    }
                ],
                403,
                limit,
            )
        try:
            body = None
            if method in ("POST", "PATCH", "PUT"):
                raw = await request.body()
                if raw.strip():
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise SfError(
                            400, "JSON_PARSER_ERROR", "The request body is not valid JSON"
                        ) from None
            locked = fault == "lock" and writing
            response = self.route(request, path, body, user, base, locked)
        except SfError as exc:
            return _too_long() if fault == "lost" else _error(exc, limit)
        if fault == "lost":  # applied, but the answer never reaches the client
            return _too_long()
        response.headers.update(limit)
        return response

    async def _token(self, request: Request, base: str) -> Response:
        if request.method != "POST":
            return _json(
                {"error": "invalid_request", "error_description": "must use HTTP POST"}, 405
            )
        form = {
            k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()
        }
        grant = form.get("grant_type")
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        try:
            if grant == "client_credentials":
                token, user = self.state.issue_token(client_id, secret)
            elif grant == "password":
                token, user = self.state.issue_token(client_id, secret)
                username = form.get("username", "")
                with self.state._lock:
                    named = self.state._usernames.get(username)
                if named is None or named != user:
                    raise SfError(400, "invalid_grant", "authentication failure")
            else:
                raise SfError(400, "unsupported_grant_type", "grant type not supported")
        except SfError as exc:
            return _error(exc)
        issued = str(int(self.state.now().timestamp() * 1000))
        identity = f"{base}/id/{self.state.org_id}/{user}"
        key = (self.state.client_secret(client_id) or "").encode("utf-8")
        signature = base64.b64encode(
            hmac.new(key, (identity + issued).encode("utf-8"), hashlib.sha256).digest()
        ).decode("ascii")
        return _json(
            {
                "access_token": token,
                "instance_url": base,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued,
                "signature": signature,
                "scope": "api",
            },
            headers={"Cache-Control": "no-store"},
        )

    # -- routing ----------------------------------------------------------------------

    def route(
        self, request: Request, path: str, body: Any, user: str, base: str, locked: bool
    ) -> Response:
        state = self.state
        method = request.method
        query = request.query_params
        if path.startswith("/id/"):
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[1] == state.org_id and method == "GET":
                rec = state.get("User", parts[2])
                return _json(
                    {
                        "id": f"{base}{path}",
                        "user_id": rec["Id"],
                        "organization_id": state.org_id,
                        "username": rec["Username"],
                        "display_name": rec["Name"],
                        "active": True,
                    }
                )
            raise _not_found()
        if path.rstrip("/") == "/services/data":
            return _json(
                [
                    {"label": f"v{v}", "url": f"/services/data/v{v}", "version": v}
                    for v in API_VERSIONS
                ]
            )
        match = _DATA.match(path)
        if match is None or match.group("version") not in API_VERSIONS:
            raise _not_found()
        version = match.group("version")
        parts = [p for p in (match.group("rest") or "").split("/") if p]
        if not parts:
            return _json(
                {
                    "sobjects": f"/services/data/v{version}/sobjects",
                    "query": f"/services/data/v{version}/query",
                    "composite": f"/services/data/v{version}/composite",
                }
            )
        head = parts[0]
        if head in ("query", "queryAll") and method == "GET":
            if len(parts) == 2:
                return _json(state.query_more(parts[1]))
            if len(parts) == 1:
                text = query.get("q")
                if not text:
                    raise SfError(400, "MALFORMED_QUERY", "the q parameter is required")
                return _json(state.query(text, head == "queryAll", _batch_size(request), version))
        if head == "sobjects":
            return self._sobjects(method, parts[1:], query, body, user, version, locked, request)
        if head == "composite" and len(parts) == 1 and method == "POST":
            return self._composite(body, user, base, locked)
        if head == "composite" and len(parts) >= 2 and parts[1] == "sobjects":
            return self._collections(method, parts[2:], query, body, user, version, locked)
        if head == "limits" and method == "GET":
            return _json(
                {
                    "DailyApiRequests": {
                        "Max": state.api_limit,
                        "Remaining": state.api_limit - state.api_usage,
                    }
                }
            )
        raise _not_found()

    def _lock_fault(self, locked: bool) -> None:
        if locked:
            raise SfError(
                400,
                "UNABLE_TO_LOCK_ROW",
                "unable to obtain exclusive access to this record or 1 records",
            )

    def _sobjects(
        self,
        method: str,
        parts: list[str],
        query: Mapping[str, str],
        body: Any,
        user: str,
        version: str,
        locked: bool,
        request: Request,
    ) -> Response:
        state = self.state
        if not parts:
            if method != "GET":
                raise SfError(
                    405,
                    "METHOD_NOT_ALLOWED",
                    f"HTTP Method '{method}' not allowed. Allowed are GET",
                )
            with state._lock:
                listed = [
                    {
                        "name": o.name,
                        "label": o.label,
                        "keyPrefix": o.prefix,
                        "custom": o.custom,
                        "queryable": True,
                        "urls": {"sobject": f"/services/data/v{version}/sobjects/{o.name}"},
                    }
                    for o in state.objects.values()
                ]
            return _json(
                {"encoding": "UTF-8", "maxBatchSize": COLLECTION_LIMIT, "sobjects": listed}
            )
        obj = state.sobject(parts[0])
        if len(parts) == 1:
            if method == "GET":
                with state._lock:
                    return _json(
                        {
                            "objectDescribe": {
                                "name": obj.name,
                                "label": obj.label,
                                "keyPrefix": obj.prefix,
                                "custom": obj.custom,
                            },
                            "recentItems": [],
                        }
                    )
            if method == "POST":
                self._lock_fault(locked)
                rid = state.create(obj.name, _object_body(body), user)
                return _json(
                    {"id": rid, "success": True, "errors": []},
                    201,
                    {"Location": f"/services/data/v{version}/sobjects/{obj.name}/{rid}"},
                )
            raise SfError(
                405,
                "METHOD_NOT_ALLOWED",
                f"HTTP Method '{method}' not allowed. Allowed are GET,POST",
            )
        if parts[1] == "describe" and len(parts) == 2 and method == "GET":
            with state._lock:
                return _json(obj.describe(version))
        if parts[1] in ("updated", "deleted") and len(parts) == 2 and method == "GET":
            fn = state.updated if parts[1] == "updated" else state.deleted
            return _json(fn(obj.name, query.get("start"), query.get("end")))
        if len(parts) == 2:
            rid = parts[1]
            if method == "GET":
                fields = query.get("fields")
                return _json(state.get(obj.name, rid, fields.split(",") if fields else None))
            if method == "PATCH":
                self._lock_fault(locked)
                since = _if_unmodified_since(request)
                state.update(obj.name, rid, _object_body(body), user, since)
                return Response(status_code=204)
            if method == "DELETE":
                self._lock_fault(locked)
                state.delete(obj.name, rid, user)
                return Response(status_code=204)
            raise SfError(
                405,
                "METHOD_NOT_ALLOWED",
                f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH,DELETE",
            )
        if len(parts) == 3:
            ext_field, value = parts[1], parts[2]
            f = obj.field(ext_field)
            if f is None or not (f.external_id or f.type == "id"):
                raise SfError(
                    404,
                    "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {ext_field}",
                )
            if method == "PATCH":
                self._lock_fault(locked)
                rid, created = state.upsert(obj.name, f.name, value, _object_body(body), user)
                if created:
                    return _json({"id": rid, "success": True, "errors": [], "created": True}, 201)
                return _json({"id": rid, "success": True, "errors": [], "created": False}, 200)
            if method == "GET":
                with state._lock:
                    found = [
                        r
                        for r in obj.records.values()
                        if r.get(f.name) is not None
                        and str(r[f.name]).casefold() == value.casefold()
                    ]
                if not found:
                    raise _not_found()
                if len(found) > 1:
                    urls = [
                        f"/services/data/v{version}/sobjects/{obj.name}/{r['Id']}" for r in found
                    ]
                    return _json(urls, 300)
                return _json(state.get(obj.name, found[0]["Id"]))
            raise SfError(
                405,
                "METHOD_NOT_ALLOWED",
                f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH",
            )
        raise _not_found()

    def _collections(
        self,
        method: str,
        parts: list[str],
        query: Mapping[str, str],
        body: Any,
        user: str,
        version: str,
        locked: bool,
    ) -> Response:
        state = self.state
        if method == "GET" or (method == "POST" and len(parts) == 1):
            # retrieve: GET with ids and fields in the query string, or POST with them in
            # the body ({"ids": [...], "fields": [...]}, for lists too long for a URL)
            if len(parts) != 1:
                raise _not_found()
            obj = state.sobject(parts[0])
            if method == "GET":
                ids = [i for i in (query.get("ids") or "").split(",") if i]
                fields = [f for f in (query.get("fields") or "").split(",") if f]
            else:
                ids, fields = _retrieve_body(body)
            if not ids or not fields:
                raise SfError(400, "MISSING_ARGUMENT", "ids and fields are required")
            if len(ids) > COLLECTION_GET_LIMIT:
                raise SfError(
                    400, "EXCEEDED_ID_LIMIT", f"cannot get more than {COLLECTION_GET_LIMIT} records"
                )
            out: list[dict[str, Any] | None] = []
            with state._lock:
                names = state._field_list(obj, fields)
                for rid in ids:
                    try:
                        out.append(state._render(obj, state._find(obj, rid), names, version))
                    except SfError:
                        if not sfid.is_valid(rid, strict=False):
                            raise SfError(400, "MALFORMED_ID", f"malformed id {rid}") from None
                        out.append(None)
                state._read_answered(ids)
            return _json(out)
        if method == "DELETE":
            if parts:
                raise _not_found()
            ids = [i for i in (query.get("ids") or "").split(",") if i]
            if not ids:
                raise SfError(400, "MISSING_ARGUMENT", "ids is required")
            if len(ids) > COLLECTION_LIMIT:
                raise _too_many()
            all_or_none = (query.get("allOrNone") or "false").lower() == "true"
            items = [self._delete_item(rid, user) for rid in ids]
            return _json(
                state.collection(items, all_or_none, self._locked_items(len(items), locked))
            )
        if method not in ("POST", "PATCH"):
            raise SfError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed")
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise SfError(400, "JSON_PARSER_ERROR", "the body needs a 'records' list")
        records = body["records"]
        if len(records) > COLLECTION_LIMIT:
            raise _too_many()
        all_or_none = bool(body.get("allOrNone", False))
        types = []
        for rec in records:
            kind = rec.get("attributes", {}).get("type") if isinstance(rec, dict) else None
            if not isinstance(kind, str):
                raise SfError(400, "INVALID_TYPE", "each record needs attributes.type")
            types.append(state.sobject(kind))
            for name in rec:
                if name != "attributes" and types[-1].field(name) is None:
                    raise SfError(
                        400,
                        "INVALID_FIELD",
                        f"No such column '{name}' on sobject of type {kind}",
                        [name],
                    )
        if method == "POST":
            if parts:
                raise _not_found()
            items = [
                self._create_item(t.name, rec, user) for t, rec in zip(types, records, strict=True)
            ]
        elif parts:
            if len(parts) != 2:
                raise _not_found()
            obj = state.sobject(parts[0])
            f = obj.field(parts[1])
            if f is None or not f.external_id:
                raise SfError(
                    400,
                    "INVALID_FIELD",
                    f"{parts[1]} is not an external ID field of {obj.name}",
                    [parts[1]],
                )
            if any(t is not obj for t in types):
                raise SfError(400, "INVALID_TYPE", f"every record must be of type {obj.name}")
            items = [self._upsert_item(obj.name, f.name, rec, user) for rec in records]
        else:
            items = [
                self._update_item(t.name, rec, user) for t, rec in zip(types, records, strict=True)
            ]
        return _json(state.collection(items, all_or_none, self._locked_items(len(items), locked)))

    def _composite(self, body: Any, user: str, base: str, locked: bool) -> Response:
        """``POST /composite``: up to 25 subrequests in one API call, each answered with its
        own status, headers and body. A subrequest may carry ``httpHeaders`` (an sObject
        Rows PATCH its ``If-Unmodified-Since``) but not Accept, Authorization or
        Content-Type. Each subrequest is its own DML call; with ``allOrNone`` a failing one
        rolls every change back. A lock fault hits some of the writing subrequests.
        Simplification: references between subrequests (``@{ref.id}``) are refused."""
        state = self.state
        if not isinstance(body, dict) or not isinstance(body.get("compositeRequest"), list):
            raise SfError(400, "JSON_PARSER_ERROR", "the body needs a 'compositeRequest' list")
        subs = body["compositeRequest"]
        if not subs or len(subs) > COMPOSITE_LIMIT:
            raise SfError(
                400,
                "INVALID_API_INPUT",
                f"a composite request holds 1 to {COMPOSITE_LIMIT} subrequests, not {len(subs)}",
            )
        all_or_none = bool(body.get("allOrNone", False))
        parsed = []
        for sub in subs:
            if not isinstance(sub, dict) or not all(
                isinstance(sub.get(k), str) for k in ("method", "url", "referenceId")
            ):
                raise SfError(
                    400, "JSON_PARSER_ERROR", "each subrequest needs method, url and referenceId"
                )
            headers = sub.get("httpHeaders") or {}
            if not isinstance(headers, dict):
                raise SfError(400, "JSON_PARSER_ERROR", "httpHeaders must be an object")
            lowered = {str(k).lower(): str(v) for k, v in headers.items()}
            if lowered.keys() & {"accept", "authorization", "content-type"}:
                raise SfError(
                    400,
                    "INVALID_API_INPUT",
                    "a subrequest may not set Accept, Authorization or Content-Type",
                )
            if "@{" in sub["url"] or "@{" in json.dumps(sub.get("body")):
                raise SfError(
                    400, "INVALID_API_INPUT", "references between subrequests are not simulated"
                )
            parsed.append((sub, lowered))
        writing = [i for i, (sub, _) in enumerate(parsed) if sub["method"] != "GET"]
        hit = {writing[i] for i in self._locked_items(len(writing), locked)}
        answers: list[dict[str, Any]] = []
        with state._lock:
            state._journal = [] if all_or_none else None
            failed = False
            try:
                for index, (sub, headers) in enumerate(parsed):
                    if failed and all_or_none:
                        answers.append(_sub_answer(sub, 400, _halted().body()))
                        continue
                    path, _, query_text = sub["url"].partition("?")
                    request = _Subrequest(sub["method"], headers, query_text)
                    try:
                        if index in hit:
                            self._lock_fault(True)
                        with state.dml():
                            response = self.route(
                                request, path, sub.get("body"), user, base, locked=False
                            )
                    except SfError as exc:
                        failed = True
                        answers.append(_sub_answer(sub, exc.status, exc.body()))
                        continue
                    raw = bytes(response.body)
                    answers.append(
                        _sub_answer(
                            sub,
                            response.status_code,
                            json.loads(raw) if raw.strip() else None,
                            {k: v for k, v in response.headers.items() if k.lower() == "location"},
                        )
                    )
                if failed and all_or_none:
                    for undo in reversed(state._journal or []):
                        undo()
                    answers = [
                        a if a["httpStatusCode"] >= 300 else {**a, **_rolled_back()}
                        for a in answers
                    ]
            finally:
                state._journal = None
        return _json({"compositeResponse": answers})

    def _locked_items(self, count: int, locked: bool) -> set[int]:
        """Which items a lock fault hits: a random non-empty subset."""
        if not locked or not count:
            return set()
        rng = self.state._rng
        hit = {i for i in range(count) if rng.random() < 0.5}
        return hit or {rng.randrange(count)}

    def _create_item(
        self, sobject: str, rec: dict[str, Any], user: str
    ) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            rid = self.state.create(sobject, _object_body(rec), user)
            return {"id": rid, "success": True, "errors": []}

        return run

    def _update_item(
        self, sobject: str, rec: dict[str, Any], user: str
    ) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            rid = next((v for k, v in rec.items() if k.lower() == "id"), None)
            if not isinstance(rid, str) or not rid:
                raise SfError(400, "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
            try:
                done = self.state.update(sobject, rid, _object_body(rec), user)
            except SfError as exc:
                raise _item_error(exc, rid) from None
            return {"id": done, "success": True, "errors": []}

        return run

    def _upsert_item(
        self, sobject: str, ext: str, rec: dict[str, Any], user: str
    ) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            value = next((v for k, v in rec.items() if k.lower() == ext.lower()), None)
            if value in (None, ""):
                raise SfError(400, "MISSING_ARGUMENT", f"{ext} not specified", [ext])
            rid, created = self.state.upsert(sobject, ext, value, _object_body(rec), user)
            return {"id": rid, "success": True, "errors": [], "created": created}

        return run

    def _delete_item(self, rid: str, user: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            obj = self._object_of(rid)
            try:
                done = self.state.delete(obj.name, rid, user)
            except SfError as exc:
                raise _item_error(exc, rid) from None
            return {"id": done, "success": True, "errors": []}

        return run

    def _object_of(self, rid: str) -> SObjectType:
        try:
            prefix = sfid.key_prefix(rid)
        except ValueError:
            raise SfError(400, "MALFORMED_ID", f"malformed id {rid}") from None
        with self.state._lock:
            for obj in self.state.objects.values():
                if obj.prefix == prefix:
                    return obj
        raise SfError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")


def _item_error(exc: SfError, rid: str) -> SfError:
    """A row error as a collection item reports it (no 404s inside a collection)."""
    if exc.code == "NOT_FOUND":
        return SfError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
    if exc.code == "ENTITY_IS_DELETED":
        return SfError(400, "ENTITY_IS_DELETED", "entity is deleted")
    return exc


@dataclass
class _Subrequest:
    """A composite subrequest as the router reads a request: method, headers, query."""

    method: str
    headers: dict[str, str]
    query: str = ""

    @property
    def query_params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.query).items()}


def _sub_answer(
    sub: dict[str, Any], status: int, body: Any, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "body": body,
        "httpHeaders": dict(headers or {}),
        "httpStatusCode": status,
        "referenceId": sub["referenceId"],
    }


def _halted() -> SfError:
    return SfError(
        400, "PROCESSING_HALTED", "The transaction was rolled back since another operation failed"
    )


def _rolled_back() -> dict[str, Any]:
    return {"httpStatusCode": 400, "body": _halted().body(), "httpHeaders": {}}


def _too_long() -> Response:
    return _json(
        [
            {
                "errorCode": "REQUEST_RUNNING_TOO_LONG",
                "message": "Your request was running for too long, and has been stopped.",
            }
        ],
        504,
    )


def _too_many() -> SfError:
    return SfError(
        400,
        "EXCEEDED_ID_LIMIT",
        f"record limit reached. cannot submit more than {COLLECTION_LIMIT} records into this call",
    )


def _object_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise SfError(400, "JSON_PARSER_ERROR", "the body must be a JSON object")
    return {k: v for k, v in body.items() if k != "attributes" and k.lower() != "id"}


def _retrieve_body(body: Any) -> tuple[list[str], list[str]]:
    """The ids and fields of an sObject Collections retrieve sent by POST: a JSON object
    with the lists ``ids`` and ``fields`` (strings only)."""
    if not isinstance(body, dict):
        raise SfError(400, "JSON_PARSER_ERROR", "the body needs 'ids' and 'fields' lists")
    ids, fields = body.get("ids"), body.get("fields")
    if not isinstance(ids, list) or not isinstance(fields, list):
        raise SfError(400, "JSON_PARSER_ERROR", "the body needs 'ids' and 'fields' lists")
    if not all(isinstance(v, str) for v in (*ids, *fields)):
        raise SfError(400, "JSON_PARSER_ERROR", "'ids' and 'fields' hold strings")
    return [i for i in ids if i], [f for f in fields if f]


def _batch_size(request: Request) -> int:
    options = request.headers.get("sforce-query-options", "")
    for part in options.split(","):
        name, _, value = part.partition("=")
        if name.strip().lower() == "batchsize":
            try:
                return max(1, min(DEFAULT_BATCH_SIZE, int(value.strip())))
            except ValueError:
                raise SfError(
                    400, "INVALID_BATCH_SIZE", f"invalid batchSize {value.strip()!r}"
                ) from None
    return DEFAULT_BATCH_SIZE


def _if_unmodified_since(request: Request) -> datetime | None:
    value = request.headers.get("if-unmodified-since")
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None:
        raise SfError(400, "INVALID_HEADER_TYPE", f"If-Unmodified-Since: invalid date {value!r}")
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def create_app(state: SalesforceState | None = None) -> Starlette:
    """The ASGI app serving ``state`` (a fresh org when None); ``app.state.salesforce`` is it."""
    org = state or SalesforceState()
    sf = SalesforceApp(org)
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD"]
    app = Starlette(routes=[Route("/{path:path}", sf.handle, methods=methods)])
    app.state.salesforce = org
    app.state.sends_date = True  # servers leave their own Date header out (see server.py)
    return app


def load_data_file(path: str | Path) -> dict[str, Any]:
    """A ``--data`` document from JSON or YAML."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".json"):
        return json.loads(text)
    import yaml

    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the data file must be a mapping with 'objects' and/or 'records'")
    return data


def serve(
    port: int = 8766,
    client_id: str = "twoway",
    client_secret: str = "twoway-secret",
    faults: str | FaultPlan | None = None,
    latency_ms: float = 0.0,
    data: str | Path | None = None,
    host: str = "127.0.0.1",
    org_id: str | None = None,
) -> None:
    """Serve one org until interrupted (blocking; ``twoway simulate salesforce``). The client
    acts as "Integration User"; client id ``alice`` (secret ``alice``) acts as "Alice".
    ``org_id`` fixes the org's id (the token answer's ``id`` URL names it)."""
    import uvicorn

    plan = faults if isinstance(faults, FaultPlan) else FaultPlan.parse(faults)
    state = SalesforceState(faults=plan, latency_ms=latency_ms, org_id=org_id)
    state.add_client(client_id, client_secret, "Integration User")
    if client_id != "alice":
        state.add_client("alice", "alice", "Alice")
    if data:
        state.load_data(load_data_file(data))
    base = f"http://{host}:{port}"
    print(f"Salesforce simulator (org {state.org_id}) at {base}", flush=True)
    print(
        f"token URL: {base}/services/oauth2/token (client_credentials, client id {client_id})",
        flush=True,
    )
    uvicorn.run(
        create_app(state),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        date_header=False,  # the org sends its own
    )
