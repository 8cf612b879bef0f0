"""A sync of real SQL tables for tests: N systems with different column names, a
definition file, a person editing each side, and helpers to read what each side holds.

With the backend ``directus``, system ``s0`` is a collection of the session's real Directus
server (its definition names only ``url``, ``collection`` and ``token``) and the others are
SQLite tables: the same scenarios then run Directus <-> SQL."""

from __future__ import annotations

import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from flows.steps import run_sync
from tests.sqlrig import SqlPerson, fresh_table, server_url
from twoway.definition import Definition, load_definition
from twoway.engine import Runtime
from twoway.report import RunReport

# per system: key, email, first, last, phone, modified, by
LAYOUTS = [
    ("id", "email", "first_name", "last_name", "phone", "updated_at", "updated_by"),
    ("pid", "mail", "fname", "lname", "tel", "modified", "editor"),
    ("rid", "e_mail", "given", "family", "phone_no", "changed_at", "changed_by"),
    ("xid", "addr", "gname", "fname2", "ph", "ts", "who"),
]
FIELDS = ("email", "first_name", "last_name", "phone")


class SyncRig:
    """Systems ``s0``, ``s1``, ... kept in step by one definition."""

    def __init__(
        self, tmp_path: Path, backend: str, systems: int, stack: ExitStack, **options: Any
    ):
        self.tmp_path = tmp_path
        self.tables: dict[str, sa.Table] = {}
        self.engines: dict[str, sa.Engine] = {}
        self.people: dict[str, SqlPerson] = {}
        self.layout: dict[str, tuple] = {}
        doc: dict[str, Any] = {
            "name": f"t{uuid.uuid4().hex[:8]}",
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "systems": {},
            "fields": {f: {} for f in FIELDS},
            "match_on": ["email"],
        }
        self.directus: dict[str, Any] = {}  # system -> (server, collection)
        for i in range(systems):
            name = f"s{i}"
            layout = LAYOUTS[i]
            key, email, first, last, phone, modified, by = layout
            if backend == "directus" and i == 0:
                self._add_directus(name, doc, stack)
                continue
            url = server_url("sqlite" if backend == "directus" else backend, tmp_path)
            engine, table = stack.enter_context(
                fresh_table(
                    url,
                    key=key,
                    email=email,
                    first=first,
                    last=last,
                    phone=phone,
                    modified=modified,
                    by=by,
                )
            )
            self.tables[name], self.engines[name], self.layout[name] = table, engine, layout
            self.people[name] = SqlPerson(engine, table, key, modified, by, name=f"user-{name}")
            doc["systems"][name] = {
                "kind": "sql",
                "url": url,
                "table": str(table.name),
                "key": key,
                "modified_at": modified,
                "modified_by": by,
                "integration_account": "svc-sync",
                "overlap_seconds": 5,
            }
            for fname, column in zip(FIELDS, (email, first, last, phone), strict=True):
                doc["fields"][fname][name] = column
        for key, value in options.items():
            if key == "phone_direction":
                doc["fields"]["phone"]["direction"] = value
            elif key == "batch_size":
                for system in doc["systems"].values():
                    system["batch_size"] = value
            else:
                doc[key] = value
        self.path = tmp_path / "sync.yaml"
        self.path.write_text(yaml.safe_dump(doc))
        self.doc = doc

    def _add_directus(self, name: str, doc: dict[str, Any], stack: ExitStack) -> None:
        """System ``name`` as a fresh collection of the session's Directus server, with
        LAYOUTS[0]'s field names and Directus's own accountability fields."""
        from tests.contract.rig_directus import DirectusPerson
        from tests.directus_server import shared_server

        server = shared_server()
        fields = [LAYOUTS[0][1 + n] for n in range(len(FIELDS))]
        collection = server.create_collection(fields)
        stack.callback(server.drop_collection, collection)
        self.directus[name] = (server, collection)
        self.layout[name] = LAYOUTS[0]
        self.people[name] = DirectusPerson(server, collection, server.person)
        doc["systems"][name] = {
            "kind": "directus",
            "url": server.url,
            "collection": collection,
            "token": server.sync_user.token,
            "overlap_seconds": 5,
        }
        for fname, column in zip(FIELDS, fields, strict=True):
            doc["fields"][fname][name] = column

    @property
    def definition(self) -> Definition:
        return load_definition(self.path)

    def run(self, **kwargs: Any) -> RunReport:
        runtime = kwargs.pop("runtime", None) or Runtime()
        return run_sync(self.definition, runtime, **kwargs)

    def col(self, system: str, field: str) -> str:
        return self.layout[system][1 + FIELDS.index(field)]

    def add(
        self,
        system: str,
        email: str,
        first: str = "Ann",
        last: str = "Lee",
        phone: str | None = None,
    ) -> str:
        values = {
            self.col(system, "email"): email,
            self.col(system, "first_name"): first,
            self.col(system, "last_name"): last,
            self.col(system, "phone"): phone,
        }
        return self.people[system].create(values)

    def edit(self, system: str, email: str, **fields: Any) -> None:
        key = self.key_of(system, email)
        self.people[system].update(key, {self.col(system, f): v for f, v in fields.items()})

    def delete(self, system: str, email: str) -> None:
        self.people[system].delete(self.key_of(system, email))

    def rows(self, system: str) -> list[dict[str, Any]]:
        """Every row of a system in canonical field names, sorted by email."""
        if system in self.directus:
            server, collection = self.directus[system]
            items = server.api("GET", f"/items/{collection}", params={"limit": "-1"})
            ours = {server.sync_user.id: "svc-sync"}  # the integration user, as SQL names it
            out = []
            for i in items:
                by = i["user_updated"] or i["user_created"]
                out.append(
                    {f: i[self.col(system, f)] for f in FIELDS}
                    | {"_key": str(i["id"]), "_by": ours.get(by, by)}
                )
            return sorted(out, key=lambda r: (r["email"] or "", r["_key"]))
        table = self.tables[system]
        with self.engines[system].connect() as conn:
            rows = conn.execute(sa.select(table)).mappings().all()
        out = [
            {f: r[self.col(system, f)] for f in FIELDS}
            | {"_key": str(r[self.layout[system][0]]), "_by": r[self.layout[system][6]]}
            for r in rows
        ]
        return sorted(out, key=lambda r: (r["email"] or "", r["_key"]))

    def row(self, system: str, email: str) -> dict[str, Any] | None:
        found = [r for r in self.rows(system) if r["email"] == email]
        assert len(found) <= 1, f"duplicate {email} in {system}: {found}"
        return found[0] if found else None

    def key_of(self, system: str, email: str) -> str:
        row = self.row(system, email)
        assert row is not None, f"{email} not in {system}"
        return row["_key"]

    def data(self, system: str, fields=FIELDS) -> list[tuple]:
        return [tuple(r[f] for f in fields) for r in self.rows(system)]


@contextmanager
def sync_rig(tmp_path: Path, backend: str = "sqlite", systems: int = 2, **options: Any):
    with ExitStack() as stack:
        yield SyncRig(tmp_path, backend, systems, stack, **options)
