"""The state store: what twoway has observed, kept in one SQL database per deployment.

Tables (every row carries the sync's name, so one database can serve many syncs):

- ``id_map``: one row per record we know in a system: ``(sync, system, external_id) ->
  link_id``, with what we last saw or wrote there (``seen`` values, their hash and the
  record's version), and ``deleted_at`` once the record is gone (a tombstone). ``seen`` is
  ``"="`` where the values are the link's merge base (most records of a converged link; the
  base leaves out empty fields, so ``=["f1", ...]`` names the fields the record has empty).
- ``shadow``: one row per link: the last converged canonical values (the merge base), the
  hash of its ``match_on`` values, and ``deleted_at`` when the link was deleted.
- ``cursors``, ``conflicts``, ``dead_letters``, ``runs``, ``leases``.

The store holds observations, never queued work: any run can be re-derived after a crash.
The schema is versioned; Alembic's migrations (twoway/migrations) upgrade an older store in
place: a change to a table here is a new migration there.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from twoway.contract import chunks
from twoway.dburl import create_engine, database_url
from twoway.errors import AlreadyRunning, Fatal
from twoway.jsontext import sorted_json
from twoway.migrations import head_version, upgrade
from twoway.sqlbulk import insert_missing_rows, upsert_rows

metadata = sa.MetaData()
S = sa.String(120)
KEY = sa.String(255)

id_map = sa.Table(
    "id_map",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("system", S, primary_key=True),
    sa.Column("external_id", KEY, primary_key=True),
    sa.Column("link_id", sa.String(36), nullable=False),
    sa.Column("seen", sa.Text, nullable=True),
    sa.Column("seen_hash", sa.String(32), nullable=True),
    sa.Column("version", sa.String(255), nullable=True),
    sa.Column("deleted_at", sa.DateTime, nullable=True),
    sa.Index("ix_id_map_link", "sync", "link_id"),
    sa.Index("ix_id_map_live", "sync", "system", "deleted_at", "external_id"),
)
shadow = sa.Table(
    "shadow",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("link_id", sa.String(36), primary_key=True),
    sa.Column("base", sa.Text, nullable=False),
    sa.Column("match_key", sa.String(32), nullable=True),
    sa.Column("deleted_at", sa.DateTime, nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Index("ix_shadow_match", "sync", "match_key"),
)
cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("system", S, primary_key=True),
    sa.Column("scope", S, primary_key=True),
    sa.Column("cursor", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)
conflicts = sa.Table(
    "conflicts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sync", S, nullable=False),
    sa.Column("link_id", sa.String(36), nullable=False),
    sa.Column("field", S, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | resolved
    sa.Column("policy", S, nullable=False),
    sa.Column("winner", S, nullable=True),  # system whose value was kept
    sa.Column("candidates", sa.Text, nullable=False),  # {system: value}
    sa.Column("chosen", sa.Text, nullable=True),  # the value kept, as JSON
    sa.Column("run_id", sa.String(36), nullable=True),
    sa.Column("detected_at", sa.DateTime, nullable=False),
    sa.Column("resolved_at", sa.DateTime, nullable=True),
    sa.Index("ix_conflicts_open", "sync", "status", "link_id"),
    # version 6: when each system's value changed, and who decided the conflict, when
    sa.Column("changed_at", sa.Text, nullable=True),  # {system: ISO time}
    sa.Column("decided_by", S, nullable=True),
    sa.Column("decided_at", sa.DateTime, nullable=True),
)
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sync", S, nullable=False),
    sa.Column("system", S, nullable=False),
    sa.Column("link_id", sa.String(36), nullable=True),
    sa.Column("external_id", KEY, nullable=True),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # failed | deferred | ambiguous
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_seen", sa.DateTime, nullable=False),
    sa.Column("last_seen", sa.DateTime, nullable=False),
    sa.Column("next_attempt_at", sa.DateTime, nullable=False),
    sa.Column("resolved_at", sa.DateTime, nullable=True),
    sa.Index("ix_dead_letters_open", "sync", "resolved_at"),
    # version 6: a person's retry or drop, by whom and when
    sa.Column("decision", sa.String(16), nullable=True),  # retry | drop
    sa.Column("decided_by", S, nullable=True),
    sa.Column("decided_at", sa.DateTime, nullable=True),
)
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("sync", S, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("summary", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("ix_runs_sync", "sync", "started_at"),
)
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)


#: each record's row with its link's merge base beside it (``seen`` may refer to the base)
_WITH_BASE = id_map.outerjoin(
    shadow, sa.and_(shadow.c.sync == id_map.c.sync, shadow.c.link_id == id_map.c.link_id)
)

intents = sa.Table(
    "intents",
    metadata,
    sa.Column("sync", S, primary_key=True),
    sa.Column("system", S, primary_key=True),
    sa.Column("link_id", sa.String(36), primary_key=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("values_hash", sa.String(32), nullable=False),
    sa.Column("members", sa.Text, nullable=False),  # [[system, external_id], ...] of the link
    sa.Column("created_at", sa.DateTime, nullable=False),
)


#: the schema version this twoway makes (its migrations: twoway/migrations)
SCHEMA_VERSION = head_version()


def _naive(when: datetime) -> datetime:
    """UTC without tzinfo: the form stored in every DateTime column of the state."""
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


#: ``id_map.seen`` of a record whose values are its link's merge base, followed by a JSON
#: list of the fields the record has empty and the base leaves out, if any
SAME_AS_BASE = "="


def _as_base(seen: dict[str, Any], base: dict[str, Any] | None) -> str | None:
    """``seen`` as a reference to ``base`` when it holds the same values (the base leaves
    out empty fields: those are listed), else None."""
    if base is None:
        return None
    if len(seen) == len(base):
        return SAME_AS_BASE if seen == base else None
    empty = [f for f, v in seen.items() if v is None and f not in base]
    if len(seen) != len(base) + len(empty) or seen != {**base, **dict.fromkeys(empty)}:
        return None
    return SAME_AS_BASE + _dumps(empty)


def _seen_values(seen: str | None, base: str | None) -> dict[str, Any] | None:
    """A stored ``seen`` as values, a reference to the link's base (JSON text) resolved."""
    if seen is None:
        return None
    if not seen.startswith(SAME_AS_BASE):
        return json.loads(seen)
    if base is None:
        return None  # no base to refer to: the values are unknown (the run reads the record)
    values = json.loads(base)
    if seen != SAME_AS_BASE:
        values.update(dict.fromkeys(json.loads(seen[1:])))
    return values


def _dumps(value: Any) -> str:
    """Stored JSON: compact, keys sorted (equal values store as equal text)."""
    return sorted_json(value).decode("utf-8", "surrogatepass")


@dataclass(slots=True)
class Member:
    """One record of a link in one system, as the state knows it."""

    system: str
    external_id: str
    link_id: str
    seen: dict[str, Any] | None
    seen_hash: str | None
    version: str | None
    deleted_at: datetime | None


@dataclass(frozen=True, slots=True)
class SystemIds:
    """One system's part of the ID map: its records' rows, live keys and their count."""

    store: StateStore
    sync: str
    system: str

    def members(self, keys: Iterable[str]) -> dict[str, Member]:
        return self.store.members_by_key(self.sync, self.system, keys)

    def live_keys(self) -> set[str]:
        return self.store.live_keys(self.sync, self.system)

    def live_count(self) -> int:
        return self.store.live_count(self.sync, self.system)


@dataclass(slots=True)
class Link:
    """The merge base of a link."""

    link_id: str
    base: dict[str, Any]
    match_key: str | None
    deleted_at: datetime | None
    #: the store holds no base for the link yet, so no record refers to one (a commit need
    #: not look for such records before writing it)
    first: bool = False


@dataclass(slots=True)
class Intent:
    """A create about to be sent: which link it serves and the values it carries."""

    system: str
    link_id: str
    values_hash: str
    members: list[tuple[str, str]]  # the link's records elsewhere, (system, external_id)


@dataclass
class StateChanges:
    """Everything one run commits, in one transaction."""

    members: list[Member] = field(default_factory=list)  # upserted by (system, external_id)
    links: list[Link] = field(default_factory=list)  # upserted by link_id
    cursors: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (system, scope)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    resolved_dead_letters: list[int] = field(default_factory=list)
    resolved_conflicts: list[int] = field(default_factory=list)
    settled_intents: list[tuple[str, str]] = field(default_factory=list)  # (system, link_id)
    #: (system, external_id) -> version, for records whose version moved and nothing else
    versions: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: (system, external_id) of ID-map rows to remove: records their system lost
    dropped: list[tuple[str, str]] = field(default_factory=list)
    #: links every ID-map row of which is among ``members``: none of their rows can be left
    #: referring to a base that moves, so the commit need not look for such rows
    complete: set[str] = field(default_factory=set)


class StateStore:
    """The state of every sync kept in one database (SQLite file by default)."""

    def __init__(self, url: str, *, clock: Callable[[], datetime] | None = None):
        self.url = url
        self.clock = clock or (lambda: datetime.now(UTC))
        try:
            parsed = database_url(url)
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if parsed.get_backend_name() == "sqlite":
                db = parsed.database
                if db and db != ":memory:":
                    Path(db).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"timeout": 30}
            self.engine = create_engine(parsed, **kwargs)
        except (sa.exc.ArgumentError, ValueError, OSError) as exc:
            raise Fatal(f"cannot open the state store {_safe(url)}: {exc}") from None
        if parsed.get_backend_name() == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrated = False

    def close(self) -> None:
        self.engine.dispose()

    def now(self) -> datetime:
        return _naive(self.clock())

    # -- schema -----------------------------------------------------------------------

    def migrate(self) -> int:
        """Bring the schema to :data:`SCHEMA_VERSION` (Alembic's migrations); returns the
        version found before. A store newer than this twoway is refused (StateTooNew)."""
        if self._migrated:
            return SCHEMA_VERSION
        try:
            found = upgrade(self.engine, self.now(), _safe(self.url))
        except sa.exc.OperationalError as exc:
            raise Fatal(
                f"cannot open the state store {_safe(self.url)}: {_first_line(exc)}"
            ) from None
        self._migrated = True
        return found

    # -- reads ------------------------------------------------------------------------

    def members_by_key(self, sync: str, system: str, keys: Iterable[str]) -> dict[str, Member]:
        """The id_map rows of the given records of one system (tombstones included), without
        their ``seen`` values: what tells a change from an echo is the hash, and a full read
        would otherwise decode every record's values only to drop most of them as unchanged
        (:meth:`members_of` returns whole rows for the links a run touches)."""
        out: dict[str, Member] = {}
        columns = (id_map.c.external_id, id_map.c.link_id, id_map.c.seen_hash)
        columns += (id_map.c.version, id_map.c.deleted_at)
        with self.engine.connect() as conn:
            for part in chunks(list(keys), 1000):  # a read's page in one query
                query = sa.select(*columns).where(
                    id_map.c.sync == sync, id_map.c.system == system, id_map.c.external_id.in_(part)
                )
                for key, link_id, seen_hash, version, deleted_at in conn.execute(query).all():
                    out[key] = Member(system, key, link_id, None, seen_hash, version, deleted_at)
        return out

    def members_of(self, sync: str, link_ids: Iterable[str]) -> dict[str, list[Member]]:
        """Every id_map row of the given links, grouped by link."""
        out: dict[str, list[Member]] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(link_ids), 500):
                query = (
                    sa.select(id_map, shadow.c.base)
                    .select_from(_WITH_BASE)
                    .where(id_map.c.sync == sync, id_map.c.link_id.in_(part))
                )
                for row in conn.execute(query):
                    out.setdefault(row.link_id, []).append(_member(row))
        return out

    def links(self, sync: str, link_ids: Iterable[str]) -> dict[str, Link]:
        out: dict[str, Link] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(link_ids), 500):
                query = sa.select(shadow).where(shadow.c.sync == sync, shadow.c.link_id.in_(part))
                for row in conn.execute(query):
                    out[row.link_id] = _link(row)
        return out

    def links_by_match_key(self, sync: str, match_keys: Iterable[str]) -> dict[str, list[str]]:
        """Live links per match key."""
        out: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(match_keys), 500):
                query = sa.select(shadow.c.match_key, shadow.c.link_id).where(
                    shadow.c.sync == sync,
                    shadow.c.match_key.in_(part),
                    shadow.c.deleted_at.is_(None),
                )
                for match_key, link_id in conn.execute(query):
                    out.setdefault(match_key, []).append(link_id)
        return out

    def live_keys(self, sync: str, system: str) -> set[str]:
        """The external IDs of a system's records not known to be deleted (read from the
        ``ix_id_map_live`` index alone: a hard-delete check reads it whole)."""
        query = sa.select(id_map.c.external_id).where(
            id_map.c.sync == sync, id_map.c.system == system, id_map.c.deleted_at.is_(None)
        )
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def live_count(self, sync: str, system: str, at_most: int | None = None) -> int:
        """How many of a system's records are not known to be deleted; with ``at_most``,
        counted no further than that (a 2M-row ID map's full count takes 0.15 s)."""
        live = sa.select(sa.literal(1)).where(
            id_map.c.sync == sync, id_map.c.system == system, id_map.c.deleted_at.is_(None)
        )
        if at_most is not None:
            live = live.limit(at_most)
        query = sa.select(sa.func.count()).select_from(live.subquery())
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def system_ids(self, sync: str, system: str) -> SystemIds:
        """One system's part of the ID map, as the extract step asks for it."""
        return SystemIds(self, sync, system)

    def cursor(self, sync: str, system: str, scope: str) -> str | None:
        query = sa.select(cursors.c.cursor).where(
            cursors.c.sync == sync, cursors.c.system == system, cursors.c.scope == scope
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def due_dead_letters(self, sync: str) -> list[dict[str, Any]]:
        """Unresolved dead letters whose next attempt is due."""
        query = (
            sa.select(dead_letters)
            .where(
                dead_letters.c.sync == sync,
                dead_letters.c.resolved_at.is_(None),
                dead_letters.c.next_attempt_at <= self.now(),
            )
            .order_by(dead_letters.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def open_dead_letters(self, sync: str) -> list[dict[str, Any]]:
        query = (
            sa.select(dead_letters)
            .where(dead_letters.c.sync == sync, dead_letters.c.resolved_at.is_(None))
            .order_by(dead_letters.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def open_conflicts(
        self, sync: str, link_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(conflicts).where(conflicts.c.sync == sync, conflicts.c.status == "open")
        rows: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            if link_ids is None:
                rows = [dict(r._mapping) for r in conn.execute(query.order_by(conflicts.c.id))]
            else:
                for part in chunks(list(link_ids), 500):
                    rows += [
                        dict(r._mapping)
                        for r in conn.execute(query.where(conflicts.c.link_id.in_(part)))
                    ]
        for row in rows:
            row["candidates"] = json.loads(row["candidates"])
            row["chosen"] = json.loads(row["chosen"]) if row["chosen"] is not None else None
            row["changed_at"] = json.loads(row["changed_at"]) if row["changed_at"] else {}
        return rows

    def decided_conflicts(self, sync: str) -> list[dict[str, Any]]:
        """Conflicts a person decided that the next run applies."""
        query = sa.select(conflicts).where(
            conflicts.c.sync == sync, conflicts.c.status == "decided"
        )
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query.order_by(conflicts.c.id))]
        for row in rows:
            row["chosen"] = json.loads(row["chosen"])
        return rows

    def decide_conflict(
        self,
        sync: str,
        conflict_id: int,
        *,
        system: str | None = None,
        value: Any = None,
        by: str | None = None,
    ) -> dict[str, Any]:
        """Settle an open conflict: keep ``system``'s value, or ``value``; the next run applies
        it. ``by`` names who decided (kept with the time)."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(conflicts).where(conflicts.c.sync == sync, conflicts.c.id == conflict_id)
            ).first()
            if row is None:
                raise Fatal(f"sync {sync!r} has no conflict #{conflict_id}")
            if row.status != "open":
                raise Fatal(f"conflict #{conflict_id} is not open (it is {row.status})")
            candidates = json.loads(row.candidates)
            if system is not None:
                if system not in candidates:
                    raise Fatal(
                        f"conflict #{conflict_id} has no value from {system!r}; "
                        f"choose one of {', '.join(sorted(candidates))} or give a value"
                    )
                value = candidates[system]
            # decided elsewhere since the read above (the CLI and the review at once): refuse
            updated = conn.execute(
                conflicts.update()
                .where(conflicts.c.id == conflict_id, conflicts.c.status == "open")
                .values(
                    status="decided",
                    winner=system or "(person)",
                    chosen=_dumps(value),
                    decided_by=by,
                    decided_at=self.now(),
                )
            )
            if updated.rowcount != 1:
                raise Fatal(f"conflict #{conflict_id} is not open (it was decided meanwhile)")
        return {"id": conflict_id, "link_id": row.link_id, "field": row.field, "chosen": value}

    def conflicts_of_run(self, run_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(conflicts).where(conflicts.c.run_id == run_id).order_by(conflicts.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def counts(self, sync: str) -> dict[str, Any]:
        """Linked records per system, open conflicts and dead letters (for ``twoway status``)."""
        with self.engine.connect() as conn:
            linked = dict(
                conn.execute(
                    sa.select(id_map.c.system, sa.func.count())
                    .where(id_map.c.sync == sync, id_map.c.deleted_at.is_(None))
                    .group_by(id_map.c.system)
                ).all()
            )
            deleted = dict(
                conn.execute(
                    sa.select(id_map.c.system, sa.func.count())
                    .where(id_map.c.sync == sync, id_map.c.deleted_at.is_not(None))
                    .group_by(id_map.c.system)
                ).all()
            )
            open_conflicts = conn.execute(
                sa.select(sa.func.count()).where(
                    conflicts.c.sync == sync, conflicts.c.status == "open"
                )
            ).scalar()
            letters = conn.execute(
                sa.select(sa.func.count()).where(
                    dead_letters.c.sync == sync, dead_letters.c.resolved_at.is_(None)
                )
            ).scalar()
        return {
            "linked": linked,
            "deleted": deleted,
            "open_conflicts": open_conflicts,
            "dead_letters": letters,
        }

    def last_runs(self, sync: str, limit: int = 10) -> list[dict[str, Any]]:
        query = (
            sa.select(runs)
            .where(runs.c.sync == sync)
            .order_by(runs.c.started_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            out = [dict(r._mapping) for r in conn.execute(query)]
        for row in out:
            row["summary"] = json.loads(row["summary"]) if row["summary"] else None
        return out

    # -- writes -----------------------------------------------------------------------

    def start_run(self, run_id: str, sync: str, dry_run: bool) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                runs.insert().values(
                    id=run_id, sync=sync, started_at=self.now(), status="running", dry_run=dry_run
                )
            )

    def finish_run(
        self, run_id: str, status: str, summary: dict[str, Any] | None, error: str | None = None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    finished_at=self.now(),
                    status=status,
                    summary=_dumps(summary) if summary is not None else None,
                    error=error,
                )
            )

    def commit(self, sync: str, changes: StateChanges, run_id: str | None = None) -> None:
        """Write a run's observations in one transaction: all of them or none."""
        now = self.now()
        links = list({link.link_id: link for link in changes.links}.values())
        base_of = {link.link_id: link.base for link in links}
        # one row per record; a link's records sit together, rows go in parts of a few
        # thousand, so a large run never holds them all at once
        by_key = {(m.system, m.external_id): m for m in changes.members}
        with self.engine.begin() as conn:
            # a record stored as "its link's base" and not written by this commit keeps the
            # values it has now when the base moves without it
            rebased = [
                link.link_id
                for link in links
                if not link.first and link.link_id not in changes.complete
            ]
            for part in chunks(rebased, 500):
                referring = conn.execute(
                    sa.select(id_map.c.system, id_map.c.external_id, id_map.c.seen, shadow.c.base)
                    .select_from(_WITH_BASE)
                    .where(
                        id_map.c.sync == sync,
                        id_map.c.link_id.in_(part),
                        id_map.c.seen.like(SAME_AS_BASE + "%"),
                    )
                ).all()
                left = [row for row in referring if (row.system, row.external_id) not in by_key]
                if left:
                    _set_column(
                        conn,
                        sync,
                        "seen",
                        [
                            (system, key, None if values is None else _dumps(values))
                            for system, key, seen, base in left
                            for values in [_seen_values(seen, base)]
                        ],
                    )
            for system, key in changes.dropped:  # a record its system lost: created anew
                conn.execute(
                    id_map.delete().where(
                        id_map.c.sync == sync,
                        id_map.c.system == system,
                        id_map.c.external_id == key,
                    )
                )
            # the records of a link mostly hold its merge base: those are stored as "=", the
            # others' values encoded once per distinct set (by hash)
            for part in chunks(list(by_key.values()), 5000):
                text_of: dict[str, str] = {}  # a link's records sit together in a part
                member_rows = []
                for m in part:
                    seen = None
                    if m.seen is not None:
                        seen = _as_base(m.seen, base_of.get(m.link_id))
                        if seen is None and m.seen_hash:
                            seen = text_of.get(m.seen_hash)
                        if seen is None:
                            seen = _dumps(m.seen)
                            if m.seen_hash:
                                text_of[m.seen_hash] = seen
                    member_rows.append(
                        {
                            "sync": sync,
                            "system": m.system,
                            "external_id": m.external_id,
                            "link_id": m.link_id,
                            "seen": seen,
                            "seen_hash": m.seen_hash,
                            "version": m.version,
                            "deleted_at": m.deleted_at,
                        }
                    )
                upsert_rows(conn, id_map, member_rows, indexed=("link_id", "deleted_at"))
            moved = [(s, k, v) for (s, k), v in changes.versions.items() if (s, k) not in by_key]
            for part in chunks(moved, 5000):
                _set_column(conn, sync, "version", part)
            for part in chunks(links, 5000):
                link_rows = []
                for link in part:
                    link_rows.append(
                        {
                            "sync": sync,
                            "link_id": link.link_id,
                            "base": _dumps(link.base),
                            "match_key": link.match_key,
                            "deleted_at": link.deleted_at,
                            "updated_at": now,
                        }
                    )
                upsert_rows(conn, shadow, link_rows, indexed=("match_key",))
            for (system, scope), value in changes.cursors.items():
                conn.execute(
                    cursors.delete().where(
                        cursors.c.sync == sync, cursors.c.system == system, cursors.c.scope == scope
                    )
                )
                conn.execute(
                    cursors.insert().values(
                        sync=sync, system=system, scope=scope, cursor=value, updated_at=now
                    )
                )
            for conflict in changes.conflicts:
                conn.execute(
                    conflicts.insert().values(
                        sync=sync,
                        link_id=conflict["link_id"],
                        field=conflict["field"],
                        status=conflict["status"],
                        policy=conflict["policy"],
                        winner=conflict.get("winner"),
                        candidates=_dumps(conflict["candidates"]),
                        changed_at=_dumps(conflict["changed_at"])
                        if conflict.get("changed_at")
                        else None,
                        chosen=_dumps(conflict["chosen"]) if conflict.get("winner") else None,
                        run_id=run_id,
                        detected_at=now,
                        resolved_at=now if conflict["status"] == "resolved" else None,
                    )
                )
            if changes.resolved_conflicts:
                conn.execute(
                    conflicts.update()
                    .where(conflicts.c.id.in_(changes.resolved_conflicts))
                    .values(status="resolved", resolved_at=now)
                )
            settled: dict[str, list[str]] = {}
            for system, link_id in changes.settled_intents:
                settled.setdefault(system, []).append(link_id)
            for system, link_ids in settled.items():
                for part in chunks(link_ids, 500):
                    conn.execute(
                        intents.delete().where(
                            intents.c.sync == sync,
                            intents.c.system == system,
                            intents.c.link_id.in_(part),
                        )
                    )
            if changes.resolved_dead_letters:
                for part in chunks(changes.resolved_dead_letters, 500):
                    conn.execute(
                        dead_letters.update()
                        .where(dead_letters.c.id.in_(part))
                        .values(resolved_at=now)
                    )
            for letter in changes.dead_letters:
                self._park(conn, sync, letter, now)

    def _park(self, conn: sa.Connection, sync: str, letter: dict[str, Any], now: datetime) -> None:
        """Add a dead letter, or count one more attempt of the same open one (backoff grows)."""
        same = sa.and_(
            dead_letters.c.sync == sync,
            dead_letters.c.system == letter["system"],
            dead_letters.c.resolved_at.is_(None),
            dead_letters.c.operation == letter["operation"],
            (dead_letters.c.link_id == letter["link_id"])
            if letter.get("link_id")
            else sa.and_(
                dead_letters.c.external_id == letter.get("external_id"),
                dead_letters.c.payload == _dumps(letter.get("payload")),
            ),
        )
        existing = conn.execute(
            sa.select(dead_letters.c.id, dead_letters.c.attempts).where(same)
        ).first()
        attempts = (existing.attempts if existing else 0) + 1
        wait = (
            timedelta(seconds=min(60 * 2 ** (attempts - 1), 6 * 3600))
            if attempts > 3
            else timedelta(0)
        )
        values = {
            "payload": _dumps(letter.get("payload")),
            "error": letter["error"][:2000],
            "kind": letter["kind"],
            "attempts": attempts,
            "last_seen": now,
            "next_attempt_at": now + wait,
            "decision": None,  # a retry a person asked for has been made
        }
        if existing:
            conn.execute(
                dead_letters.update().where(dead_letters.c.id == existing.id).values(**values)
            )
        else:
            conn.execute(
                dead_letters.insert().values(
                    sync=sync,
                    system=letter["system"],
                    link_id=letter.get("link_id"),
                    external_id=letter.get("external_id"),
                    operation=letter["operation"],
                    first_seen=now,
                    **values,
                )
            )

    def retry_dead_letters(
        self, sync: str, ids: Sequence[int] | None = None, by: str | None = None
    ) -> int:
        """Make dead letters due now (``twoway deadletters retry``; no ids: all of them);
        returns how many."""
        now = self.now()
        return self._decide_letters(
            sync,
            list(ids) if ids else None,
            next_attempt_at=now,
            decision="retry",
            decided_by=by,
            decided_at=now,
        )

    def drop_dead_letters(self, sync: str, ids: Sequence[int], by: str | None = None) -> int:
        """Give up on dead letters: no run tries them again; returns how many."""
        now = self.now()
        return self._decide_letters(
            sync, ids, resolved_at=now, decision="drop", decided_by=by, decided_at=now
        )

    def _decide_letters(self, sync: str, ids: Sequence[int] | None, **values: Any) -> int:
        query = dead_letters.update().where(
            dead_letters.c.sync == sync, dead_letters.c.resolved_at.is_(None)
        )
        if ids is not None:
            query = query.where(dead_letters.c.id.in_(list(ids)))
        with self.engine.begin() as conn:
            return conn.execute(query.values(**values)).rowcount

    # -- the intent log: creates announced before they are sent ---------------------------

    def record_intents(
        self, sync: str, run_id: str, announced: Sequence[Intent], members: Sequence[Member] = ()
    ) -> None:
        """Write intents, and the records of new links, before the creates go out.

        The new links' records are stored with no values seen, so the next run still treats
        them as changed; a crash can then neither duplicate a create nor forget that the
        record behind it was deleted meanwhile.
        """
        if not announced and not members:
            return
        now = self.now()
        with self.engine.begin() as conn:
            # a key the ID map holds already (a tombstone) keeps its row until the commit
            rows = [
                {
                    "sync": sync,
                    "system": m.system,
                    "external_id": m.external_id,
                    "link_id": m.link_id,
                }
                for m in members
                if m.seen is None and m.deleted_at is None
            ]
            for part in chunks(rows, 5000):
                insert_missing_rows(conn, id_map, list(part))
            # an intent of an earlier run for the same link is replaced by this run's
            upsert_rows(
                conn,
                intents,
                list(
                    {
                        (i.system, i.link_id): {
                            "sync": sync,
                            "system": i.system,
                            "link_id": i.link_id,
                            "run_id": run_id,
                            "values_hash": i.values_hash,
                            "members": _dumps([list(m) for m in i.members]),
                            "created_at": now,
                        }
                        for i in announced
                    }.values()
                ),
            )

    def open_intents(self, sync: str) -> list[Intent]:
        """Intents no run has settled: creates whose outcome a crash may have hidden."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(intents).where(intents.c.sync == sync)).all()
        return [
            Intent(r.system, r.link_id, r.values_hash, [tuple(m) for m in json.loads(r.members)])
            for r in rows
        ]

    # -- the lease: one run per sync at a time -----------------------------------------

    def acquire_lease(self, sync: str, holder: str, ttl: float = 60.0) -> None:
        """Take the sync's lease, or raise AlreadyRunning naming who holds it."""
        now = self.now()
        host, pid = socket.gethostname(), os.getpid()
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(leases).where(leases.c.sync == sync).with_for_update()
            ).first()
            if row is not None and row.holder != holder:
                alive = row.expires_at > now and not (row.host == host and not _pid_alive(row.pid))
                if alive:
                    raise AlreadyRunning(
                        f"sync {sync!r} is already running (pid {row.pid} on {row.host}, "
                        f"lease until {row.expires_at:%H:%M:%S} UTC)"
                    )
            values = {
                "holder": holder,
                "host": host,
                "pid": pid,
                "acquired_at": now,
                "expires_at": now + timedelta(seconds=ttl),
            }
            if row is None:
                try:
                    conn.execute(leases.insert().values(sync=sync, **values))
                except sa.exc.IntegrityError:
                    raise AlreadyRunning(f"sync {sync!r} is already running") from None
            else:
                result = conn.execute(
                    leases.update()
                    .where(
                        leases.c.sync == sync,
                        leases.c.holder == row.holder,
                        leases.c.expires_at == row.expires_at,
                    )
                    .values(**values)
                )
                if result.rowcount != 1:
                    raise AlreadyRunning(f"sync {sync!r} is already running")

    def renew_lease(self, sync: str, holder: str, ttl: float = 60.0) -> bool:
        """Extend our lease; False when it is no longer ours."""
        with self.engine.begin() as conn:
            result = conn.execute(
                leases.update()
                .where(leases.c.sync == sync, leases.c.holder == holder)
                .values(expires_at=self.now() + timedelta(seconds=ttl))
            )
            return result.rowcount == 1

    def release_lease(self, sync: str, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(leases.delete().where(leases.c.sync == sync, leases.c.holder == holder))


def _member(row: sa.Row) -> Member:
    """A whole id_map row (with its link's ``base`` joined) as a member."""
    return Member(
        system=row.system,
        external_id=row.external_id,
        link_id=row.link_id,
        seen=_seen_values(row.seen, row.base),
        seen_hash=row.seen_hash,
        version=row.version,
        deleted_at=row.deleted_at,
    )


def _link(row: sa.Row) -> Link:
    return Link(
        link_id=row.link_id,
        base=json.loads(row.base),
        match_key=row.match_key,
        deleted_at=row.deleted_at,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_column(
    conn: sa.Connection, sync: str, column: str, rows: list[tuple[str, str, Any]]
) -> None:
    """Set one column of the given id_map rows: ``(system, external_id, value)`` each."""
    conn.execute(
        id_map.update()
        .where(
            id_map.c.sync == sync,
            id_map.c.system == sa.bindparam("r_system"),
            id_map.c.external_id == sa.bindparam("r_key"),
        )
        .values({column: sa.bindparam("r_value")}),
        [{"r_system": system, "r_key": key, "r_value": value} for system, key, value in rows],
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # switching a new file to WAL takes a lock that SQLite's busy timeout does not wait for:
    # processes opening one new store together wait for each other here
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05 + random.random() * 0.1)
    cursor.execute("PRAGMA synchronous=NORMAL")
    # 64 MiB of page cache: the ID map's indexes take random inserts of 100,000s of keys
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0][:300]
