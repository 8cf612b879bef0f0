"""Sync definitions: the YAML a user writes, validated by pydantic models.

Every problem is reported as one line naming the file, the key and what is wrong, and
raised as :class:`~twoway.errors.DefinitionError` (exit code 2 in the CLI).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from twoway.errors import DefinitionError

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"
ConflictPolicy = str  # "last_writer_wins" | "manual" | "prefer <system>"
DeletePolicy = Literal["propagate", "ignore"]


class SystemBase(BaseModel):
    """What every system has: where its records live and who the integration account is."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    block: str | None = Field(
        None, description="Name of a saved Prefect block holding this system's connection"
    )
    key: str = Field("id", description="Column or field holding the record's id")
    modified_at: str | None = Field(None, description="Column holding the last change time")
    modified_by: str | None = Field(None, description="Column holding who made the last change")
    integration_account: str | None = Field(
        None, description="The account twoway writes as; its edits are our own echoes"
    )
    overlap_seconds: float = Field(
        300.0, ge=0, description="Look-back window of incremental reads (clock skew, late commits)"
    )
    batch_size: int = Field(1000, ge=1, le=100_000, description="Records per write batch")
    retry_attempts: int = Field(5, ge=1, le=50, description="Tries per request or batch")


class LinkColumnMixin(BaseModel):
    """A column where twoway stamps the link id of every record it creates (a link marker)."""

    link_column: str | None = Field(
        None,
        description=(
            "Column where twoway stamps the link id of every record it creates and reads it "
            "back from, so a create whose answer was lost is found even after a person "
            "edited the record (`twoway init` adds it to a SQL table)"
        ),
    )


class SqlSystem(LinkColumnMixin, SystemBase):
    """A table in SQLite, PostgreSQL or MariaDB, reached through SQLAlchemy."""

    kind: Literal["sql"]
    url: str | None = Field(None, description="SQLAlchemy URL; relative SQLite paths are resolved")
    table: str | None = Field(None, description="Table name")
    db_schema: str | None = Field(None, alias="schema", description="Database schema of the table")


class OAuthClientMixin(BaseModel):
    """Client-credentials keys for systems reached with OAuth2 (Graph, Salesforce).

    A saved block (``block:``) is the recommended home of credentials: Prefect stores the
    secret encrypted. For offline trials, the demo and CI, the definition may carry
    ``client_id`` and ``client_secret`` itself, the secret read from the environment
    (``client_secret: ${GRAPH_CLIENT_SECRET}``). The secret is kept as ``SecretStr`` so a
    printed definition, a log line or an error never shows it.
    """

    client_id: str | None = Field(
        None, description="OAuth2 client id (instead of a saved block's credentials)"
    )
    client_secret: SecretStr | None = Field(
        None,
        description="OAuth2 client secret; write it as ${ENV_VAR} (instead of a saved block)",
        json_schema_extra={"writeOnly": True},
    )

    @model_validator(mode="after")
    def _credentials_whole(self) -> OAuthClientMixin:
        """Both keys or neither, and not beside a saved block (which one would win?)."""
        given = [k for k in ("client_id", "client_secret") if getattr(self, k) is not None]
        if len(given) == 1:
            missing = "client_secret" if given == ["client_id"] else "client_id"
            raise ValueError(f"'{given[0]}' needs '{missing}' too")
        if given and getattr(self, "block", None) is not None:
            raise ValueError("give either 'block' or 'client_id' and 'client_secret', not both")
        return self


class WritesInFlightMixin(BaseModel):
    """Systems whose service takes concurrent calls (Graph, Salesforce): a load keeps more
    than one write batch on its way, so the service's time to answer one overlaps the next."""

    writes_in_flight: int = Field(
        2, ge=1, le=8, description="Write batches sent at once; 1 sends them one after another"
    )


class RetryDeadlineMixin(BaseModel):
    """Systems reached over HTTP: how long a run may wait on their Retry-After and backoff.
    Graph asks for waits of tens of seconds to minutes when it throttles; each is honoured
    in full, up to this many seconds in all, then the run stops with the error."""

    retry_deadline_seconds: float = Field(
        900.0, gt=0, description="Most seconds a run waits between retries on this system"
    )


class SharePointSystem(
    LinkColumnMixin, RetryDeadlineMixin, WritesInFlightMixin, OAuthClientMixin, SystemBase
):
    """A SharePoint list through Microsoft Graph."""

    kind: Literal["sharepoint"]
    graph_url: str = Field("https://graph.microsoft.com", description="Graph base URL")
    token_url: str | None = Field(None, description="OAuth2 token endpoint of the tenant")
    tenant: str | None = Field(None, description="Directory (tenant) id")
    site: str = Field("root", description="Site id or 'root'")
    list: str = Field("Contacts", description="List id or title")
    key: str = "id"
    modified_at: str | None = "lastModifiedDateTime"
    modified_by: str | None = "lastModifiedBy"


class SalesforceSystem(RetryDeadlineMixin, WritesInFlightMixin, OAuthClientMixin, SystemBase):
    """An sObject in a Salesforce org through the REST API."""

    kind: Literal["salesforce"]
    instance_url: str | None = Field(None, description="The org's instance URL")
    token_url: str | None = Field(None, description="OAuth2 token endpoint")
    api_version: str = Field("v60.0", description="REST API version")
    object: str = Field("Contact", description="sObject API name")
    external_id_field: str | None = Field(None, description="External-ID field used for upserts")
    key: str = "Id"
    modified_at: str | None = "SystemModstamp"
    modified_by: str | None = "LastModifiedById"


class RestSystem(RetryDeadlineMixin, SystemBase):
    """A JSON collection of an in-house REST API."""

    kind: Literal["rest"]
    base_url: str | None = Field(None, description="Base URL of the API")
    collection: str = Field("/items", description="Path of the collection (GET pages, POST)")
    item: str = Field("/items/{id}", description="Path of one item (GET, PATCH, DELETE)")
    batch: str | None = Field(None, description="Optional JSON batch endpoint, Graph's shape")
    records: str = Field("value", description="Where the list of records sits in a page")
    next_link: str = Field("@odata.nextLink", description="Where the next page's URL sits")
    cursor_param: str | None = Field(None, description="Query parameter for incremental reads")
    page_size_param: str | None = Field(None, description="Query parameter for the page size")
    page_size: int = Field(1000, ge=1, le=100_000)


class DirectusSystem(RetryDeadlineMixin, SystemBase):
    """A collection of a Directus 10 project through its REST API, with a static token."""

    kind: Literal["directus"]
    url: str | None = Field(None, description="The project's URL, e.g. https://cms.example.com")
    collection: str | None = Field(None, description="The collection's name")
    token: SecretStr | None = Field(
        None,
        description="Static token of the integration user; write it as ${ENV_VAR}",
        json_schema_extra={"writeOnly": True},
    )
    token_secret: str | None = Field(
        None, description="Instead of token: the name of a Prefect Secret block holding it"
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Shared secret the Flow sends in X-Twoway-Secret; write it as ${ENV_VAR}",
        json_schema_extra={"writeOnly": True},
    )
    key: str = "id"
    modified_at: str | None = "date_updated"
    created_at: str | None = Field("date_created", description="Field holding the creation time")
    modified_by: str | None = "user_updated"
    created_by: str | None = Field("user_created", description="Field holding the creator")
    integration_account: str | None = Field(
        "token-user",
        description="Name the token's own user's changes are reported under (found by /users/me)",
    )
    batch_size: int = Field(100, ge=1, le=10_000, description="Records per write batch")
    page_size: int = Field(500, ge=1, le=10_000, description="Records per read page")
    link_column: str | None = Field(
        None,
        description=(
            "Field where twoway stamps the link id of every item it creates and reads it back "
            "from, so a create whose answer was lost is found even after a person edited the "
            "item (`twoway init` adds the field)"
        ),
    )

    @model_validator(mode="after")
    def _one_token(self) -> DirectusSystem:
        """One source of the token: the definition, a Secret block, or a credentials block."""
        given = [k for k in ("token", "token_secret", "block") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of 'token', 'token_secret' and 'block', not {given}")
        return self


SystemDef = Annotated[
    SqlSystem | SharePointSystem | SalesforceSystem | RestSystem | DirectusSystem,
    Field(discriminator="kind"),
]
KINDS = ("sql", "sharepoint", "salesforce", "rest", "directus")


class FieldMap(BaseModel):
    """One canonical field: its column per system and which way it may flow."""

    columns: dict[str, str]
    source: str | None = None  # one-way: only this system sends the field
    targets: tuple[str, ...] = ()  # one-way: only these systems receive it

    def flows(self, src: str, dst: str) -> bool:
        """True when a change of this field in ``src`` is written to ``dst``."""
        if src == dst or src not in self.columns or dst not in self.columns:
            return False
        if self.source is None:
            return True
        return src == self.source and dst in self.targets


class Definition(BaseModel):
    """A whole sync definition."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Name of the sync (letters, digits, _.-)")
    state: str | None = Field(None, description="SQLAlchemy URL of the state store")
    systems: dict[str, SystemDef] = Field(description="The systems kept in step, by name")
    fields: dict[str, dict[str, str]] = Field(
        description="Canonical field -> {system: column, direction: 'a -> b'}"
    )
    match_on: list[str] = Field(default_factory=list, description="Fields that link records")
    conflicts: ConflictPolicy = Field(
        "last_writer_wins", description="last_writer_wins | prefer <system> | manual"
    )
    deletes: DeletePolicy = Field("propagate", description="propagate | ignore")
    mass_change_limit: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Largest share of a system's records one run may delete or overwrite",
    )
    chunk_size: int = Field(
        50_000,
        ge=1,
        le=10_000_000,
        description="Records a run works on and commits at a time (its checkpoints)",
    )

    # filled in by load_definition
    path: Path | None = Field(None, exclude=True)
    field_maps: dict[str, FieldMap] = Field(default_factory=dict, exclude=True)
    _fields_of: dict[str, tuple[dict[str, FieldMap], dict[str, str]]] = PrivateAttr(
        default_factory=dict
    )

    @field_validator("systems")
    @classmethod
    def _system_names(cls, systems: dict[str, Any]) -> dict[str, Any]:
        if len(systems) < 2:
            raise ValueError("a sync needs at least two systems")
        for name in systems:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"system name {name!r} must match {NAME_PATTERN}")
        return systems

    @property
    def policy(self) -> tuple[str, str | None]:
        """The conflict policy as (kind, preferred system)."""
        if self.conflicts.startswith("prefer "):
            return "prefer", self.conflicts.split(None, 1)[1].strip()
        return self.conflicts, None

    def fields_of(self, system: str) -> dict[str, str]:
        """Canonical field -> column, for the fields this system maps (computed once per
        field map: runs ask for it per record; callers must not change the result)."""
        cached = self._fields_of.get(system)
        if cached is None or cached[0] is not self.field_maps:
            columns = {
                f: m.columns[system] for f, m in self.field_maps.items() if system in m.columns
            }
            cached = self._fields_of[system] = (self.field_maps, columns)
        return cached[1]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (two systems with one name, say)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute_env(value: Any, where: str, problems: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of the document."""
    if isinstance(value, dict):
        return {
            k: _substitute_env(v, f"{where}.{k}" if where else str(k), problems)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute_env(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def repl(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        problems.append(f"{where}: environment variable {var} is not set")
        return ""

    return _ENV.sub(repl, value)


def _resolve_sqlite(url: str, base: Path) -> str:
    """Make a relative SQLite path absolute against the definition's folder."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path = url[len(prefix) :]
    if not path or path == ":memory:" or path.startswith("/") or path.startswith("file:"):
        return url
    return prefix + str((base / path).resolve())


def _url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable database URL (no password in the answer), or None."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from twoway.dburl import database_url, driver_problem

    try:
        parsed = database_url(url)
    except (ArgumentError, ValueError):
        return "not a database URL (expected e.g. sqlite:///file.db or postgresql://...)"
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        return f"unknown database kind {parsed.drivername!r} in the URL"
    return driver_problem(parsed)


def _field_location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in KINDS]
    return ".".join(parts) if parts else "(top level)"


def _pydantic_problems(exc: ValidationError, raw: dict[str, Any], prefix: str) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = _field_location(err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            known = _known_keys(err["loc"])
            hint = difflib.get_close_matches(key, known, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{prefix}{loc}: unknown key{extra}")
        elif err["type"] == "union_tag_invalid":
            problems.append(
                f"{prefix}{loc}.kind: unknown kind {err['input'].get('kind')!r}; "
                f"expected one of {', '.join(KINDS)}"
            )
        elif err["type"] == "union_tag_not_found":
            problems.append(f"{prefix}{loc}.kind: missing; expected one of {', '.join(KINDS)}")
        elif err["type"] == "missing":
            problems.append(f"{prefix}{loc}: required key is missing")
        else:
            problems.append(f"{prefix}{loc}: {err['msg']}")
    return problems


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    by_kind = {
        "sql": SqlSystem,
        "sharepoint": SharePointSystem,
        "salesforce": SalesforceSystem,
        "rest": RestSystem,
        "directus": DirectusSystem,
    }
    for part in loc:
        if part in by_kind:
            model = by_kind[part]
            return [f.alias or n for n, f in model.model_fields.items()]
    return [n for n, f in Definition.model_fields.items() if not f.exclude]


def _parse_direction(text: str, systems: set[str], where: str) -> tuple[str, tuple[str, ...]]:
    match = re.fullmatch(
        r"\s*([A-Za-z][\w.-]*)\s*->\s*([A-Za-z][\w.-]*(\s*,\s*[A-Za-z][\w.-]*)*)\s*", text
    )
    if not match:
        raise ValueError(f"{where}: bad direction {text!r}; write it as 'source -> target'")
    source = match.group(1)
    targets = tuple(t.strip() for t in match.group(2).split(","))
    for name in (source, *targets):
        if name not in systems:
            raise ValueError(f"{where}: direction names unknown system {name!r}")
    if source in targets:
        raise ValueError(f"{where}: direction sends {source!r} to itself")
    return source, targets


def parse_definition(raw: Any, path: Path) -> Definition:
    """Validate a parsed YAML document; every problem becomes one line of the error."""
    prefix = f"{path}: "
    if raw is None:
        raise DefinitionError(
            f"{prefix}the file is empty; a definition needs name, systems, fields"
        )
    if not isinstance(raw, dict):
        raise DefinitionError(
            f"{prefix}the document must be a mapping of keys, not {type(raw).__name__}"
        )
    problems: list[str] = []
    raw = _substitute_env(raw, "", problems)
    if problems:
        raise DefinitionError([prefix + p for p in problems])
    try:
        definition = Definition.model_validate(raw)
    except ValidationError as exc:
        raise DefinitionError(_pydantic_problems(exc, raw, prefix)) from None

    base = path.parent.resolve()
    systems = set(definition.systems)
    for name, system in definition.systems.items():
        if isinstance(system, SqlSystem):
            if system.url is None and system.block is None:
                problems.append(f"{prefix}systems.{name}: needs 'url' or 'block'")
            if system.url:
                system.url = _resolve_sqlite(system.url, base)
                bad_url = _url_problem(system.url)
                if bad_url:
                    problems.append(f"{prefix}systems.{name}.url: {bad_url}")
            if system.block is None and not system.table:
                problems.append(f"{prefix}systems.{name}.table: required key is missing")
        if isinstance(system, DirectusSystem):
            for needed in ("url", "collection"):
                if getattr(system, needed) is None and system.block is None:
                    problems.append(f"{prefix}systems.{name}.{needed}: required key is missing")
            if system.block is None and system.token is None and system.token_secret is None:
                problems.append(
                    f"{prefix}systems.{name}: needs 'token' (e.g. ${{DIRECTUS_TOKEN}}), "
                    "'token_secret' or 'block'"
                )

    field_maps: dict[str, FieldMap] = {}
    if not definition.fields:
        problems.append(f"{prefix}fields: no field is mapped")
    for fname, spec in definition.fields.items():
        where = f"fields.{fname}"
        if not isinstance(spec, dict):
            problems.append(f"{prefix}{where}: must map system names to columns")
            continue
        columns = {k: v for k, v in spec.items() if k != "direction"}
        unknown = [s for s in columns if s not in systems]
        for s in unknown:
            hint = difflib.get_close_matches(s, list(systems), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{prefix}{where}.{s}: unknown system{extra}")
        for s, col in columns.items():
            if not isinstance(col, str) or not col.strip():
                problems.append(f"{prefix}{where}.{s}: column name must be a non-empty string")
        if len(columns) < 2:
            problems.append(f"{prefix}{where}: a field must be mapped in at least two systems")
        source, targets = None, ()
        if "direction" in spec:
            try:
                source, targets = _parse_direction(
                    str(spec["direction"]), systems, where + ".direction"
                )
                for s in (source, *targets):
                    if s not in columns:
                        raise ValueError(f"{where}.direction: {s!r} does not map this field")
            except ValueError as exc:
                problems.append(f"{prefix}{exc}")
        field_maps[fname] = FieldMap(columns=columns, source=source, targets=targets)

    for f in definition.match_on:
        if f not in definition.fields:
            problems.append(f"{prefix}match_on: {f!r} is not a field in 'fields'")
    kind, preferred = definition.policy
    if kind == "prefer":
        if preferred not in systems:
            problems.append(f"{prefix}conflicts: 'prefer {preferred}' names an unknown system")
    elif kind not in ("last_writer_wins", "manual"):
        problems.append(
            f"{prefix}conflicts: unknown policy {definition.conflicts!r}; "
            "expected last_writer_wins, manual or 'prefer <system>'"
        )
    if definition.state:
        definition.state = _resolve_sqlite(definition.state, base)
        bad_url = _url_problem(definition.state)
        if bad_url:
            problems.append(f"{prefix}state: {bad_url}")
    else:
        definition.state = f"sqlite:///{base / '.twoway' / (definition.name + '.db')}"
    if problems:
        raise DefinitionError(problems)
    definition.path = path
    definition.field_maps = field_maps
    return definition


def load_definition(path: str | os.PathLike[str]) -> Definition:
    """Read and validate a definition file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DefinitionError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DefinitionError(f"{path}: is a folder, not a definition file") from None
    except UnicodeDecodeError as exc:
        raise DefinitionError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise DefinitionError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError(f"{path}: invalid YAML: {where}{problem}") from None
    return parse_definition(raw, path)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a definition, for editors."""
    schema = Definition.model_json_schema(mode="validation")
    schema["title"] = "twoway sync definition"
    schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
    return schema
