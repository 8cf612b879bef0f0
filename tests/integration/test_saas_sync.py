"""Syncs with SaaS systems over real HTTP: the Graph, Salesforce and REST simulators served
on 127.0.0.1, and real SQL tables, kept in step by ``run_sync`` with plain steps.

The SharePoint and Salesforce syncs load the definitions in ``examples/`` (their
credentials written in the definition, read from environment variables), so the examples
are checked by running them.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from flows.steps import run_sync
from tests.sqlrig import SqlPerson, fresh_table, server_url
from twoway import sfid
from twoway.connectors import open_endpoint
from twoway.definition import Definition, parse_definition
from twoway.engine import Runtime
from twoway.report import RunReport
from twoway.simulators.faults import FaultPlan
from twoway.simulators.graph import GraphState
from twoway.simulators.graph import create_app as graph_app
from twoway.simulators.rest import RestState
from twoway.simulators.rest import create_app as rest_app
from twoway.simulators.salesforce import SalesforceState
from twoway.simulators.salesforce import create_app as salesforce_app
from twoway.simulators.server import BackgroundServer
from twoway.state import StateStore

SEED = 0  # fault draws are seeded: a failure replays (seeds 0-80 were run)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LIST = "Contacts"
GRAPH_CLIENT = ("twoway-app", "graph-" + uuid.uuid4().hex)
SF_CLIENT = ("twoway-sync", "sf-" + uuid.uuid4().hex)
SQL_COLUMNS = {"email": "email", "first": "first_name", "last": "last_name", "phone": "phone"}
GRAPH_COLUMNS = {"email": "Email", "first": "FirstName", "last": "Title", "phone": "Phone"}
SF_COLUMNS = {"email": "Email", "first": "FirstName", "last": "LastName", "phone": "Phone"}
REST_COLUMNS = {"email": "email", "first": "first_name", "last": "last_name", "phone": "phone"}
FIELDS = ("email", "first", "last", "phone")
CANONICAL = {"email": "email", "first_name": "first", "last_name": "last", "phone": "phone"}


def example(name: str, tmp_path: Path, **overrides: Any) -> Definition:
    """A definition of ``examples/``, its state in ``tmp_path``; ``overrides`` replace
    top-level keys or, as ``system__key``, keys of one system."""
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    raw["state"] = f"sqlite:///{tmp_path / 'state.db'}"
    for key, value in overrides.items():
        system, _, setting = key.partition("__")
        if setting:
            raw["systems"][system][setting] = value
        else:
            raw[key] = value
    return parse_definition(raw, tmp_path / name)


def written(report: RunReport) -> int:
    """Records a run created, updated or deleted, over every system."""
    return sum(c["created"] + c["updated"] + c["deleted"] for c in report.systems.values())


def completed(report: RunReport) -> RunReport:
    assert report.status == "completed", report.error
    assert all(c["failed"] == 0 for c in report.systems.values()), report.failures
    return report


# -- sides: each system seen as canonical rows {email, first, last, phone} --------------


class GraphSide:
    """A SharePoint list in the Graph simulator; a person edits it through the user API."""

    def __init__(self, state: GraphState, person: str = "Alice Example"):
        self.state, self.person = state, person

    def rows(self) -> list[dict[str, Any]]:
        return [
            {f: i["fields"].get(GRAPH_COLUMNS[f]) for f in FIELDS} | {"_key": i["id"]}
            for i in self.state.items(LIST)
        ]

    def add(self, **values: Any) -> str:
        fields = {GRAPH_COLUMNS[f]: v for f, v in values.items()}
        return self.state.user_create(LIST, fields, user=self.person)

    def edit(self, email: str, **values: Any) -> None:
        fields = {GRAPH_COLUMNS[f]: v for f, v in values.items()}
        self.state.user_update(LIST, key_of(self, email), fields, user=self.person)

    def delete(self, email: str) -> None:
        self.state.user_delete(LIST, key_of(self, email), user=self.person)


class SqlSide:
    """A SQL table; a person edits it directly."""

    def __init__(self, engine: sa.Engine, table: sa.Table):
        self.engine, self.table = engine, table
        self.person = SqlPerson(engine, table, "id", "updated_at", "updated_by", name="maria")

    def rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(self.table)).mappings().all()
        return [{f: r[SQL_COLUMNS[f]] for f in FIELDS} | {"_key": str(r["id"])} for r in found]

    def add(self, **values: Any) -> str:
        return self.person.create({SQL_COLUMNS[f]: v for f, v in values.items()})

    def edit(self, email: str, at: datetime | None = None, **values: Any) -> None:
        self.person.update(
            key_of(self, email), {SQL_COLUMNS[f]: v for f, v in values.items()}, at=at
        )

    def delete(self, email: str) -> None:
        self.person.delete(key_of(self, email))


class SalesforceSide:
    """Contacts of one org simulator; a person edits them as another User."""

    def __init__(self, state: SalesforceState, person: str = "Alice Example"):
        self.state, self.person = state, person

    def rows(self) -> list[dict[str, Any]]:
        return [
            {f: r.get(SF_COLUMNS[f]) for f in FIELDS} | {"_key": r["Id"]}
            for r in self.state.records("Contact")
        ]

    def add(self, **values: Any) -> str:
        fields = {SF_COLUMNS[f]: v for f, v in values.items()}
        return self.state.user_create("Contact", fields, user=self.person)

    def edit(self, email: str, **values: Any) -> None:
        fields = {SF_COLUMNS[f]: v for f, v in values.items()}
        self.state.user_update("Contact", key_of(self, email), fields, user=self.person)

    def delete(self, email: str) -> None:
        self.state.user_delete("Contact", key_of(self, email), user=self.person)


class RestSide:
    """A REST collection in the simulator; a person edits it through its user API."""

    def __init__(self, state: RestState, person: str = "alice"):
        self.state, self.person = state, person

    def rows(self) -> list[dict[str, Any]]:
        return [
            {f: r.get(REST_COLUMNS[f]) for f in FIELDS} | {"_key": r["id"]}
            for r in self.state.records()
        ]

    def add(self, **values: Any) -> str:
        fields = {REST_COLUMNS[f]: v for f, v in values.items()}
        return self.state.user_create(fields, user=self.person)["id"]

    def edit(self, email: str, **values: Any) -> None:
        fields = {REST_COLUMNS[f]: v for f, v in values.items()}
        self.state.user_update(key_of(self, email), fields, user=self.person)

    def delete(self, email: str) -> None:
        self.state.user_delete(key_of(self, email), user=self.person)


def key_of(side: Any, email: str) -> str:
    found = [r["_key"] for r in side.rows() if r["email"] == email]
    assert len(found) == 1, f"{email}: {len(found)} records"
    return found[0]


def data(side: Any) -> list[tuple[Any, ...]]:
    """What a side holds, sorted, without keys; a duplicate shows as a repeated tuple."""
    return sorted(tuple(r[f] for f in FIELDS) for r in side.rows())


def row(side: Any, email: str) -> dict[str, Any] | None:
    found = [r for r in side.rows() if r["email"] == email]
    assert len(found) <= 1, f"duplicate {email}: {found}"
    return found[0] if found else None


def assert_converged(*sides: Any) -> list[tuple[Any, ...]]:
    """Every side holds the same records, and no email twice."""
    first = data(sides[0])
    emails = [r[0] for r in first]
    assert len(emails) == len(set(emails)), f"duplicates: {emails}"
    for side in sides[1:]:
        assert data(side) == first
    return first


# -- servers ------------------------------------------------------------------------


@contextmanager
def graph_server(**options: Any) -> Iterator[tuple[GraphState, BackgroundServer]]:
    state = GraphState(
        client_id=GRAPH_CLIENT[0],
        client_secret=GRAPH_CLIENT[1],
        display_name="twoway-sync",
        **options,
    )
    try:
        with BackgroundServer(graph_app(state)) as server:
            yield state, server
    finally:
        state.close()


@contextmanager
def salesforce_server(**options: Any) -> Iterator[tuple[SalesforceState, BackgroundServer]]:
    state = SalesforceState(**options)
    state.add_client(SF_CLIENT[0], SF_CLIENT[1], "Integration User")
    with BackgroundServer(salesforce_app(state)) as server:
        yield state, server


def graph_env(monkeypatch: pytest.MonkeyPatch, state: GraphState, server: BackgroundServer) -> None:
    monkeypatch.setenv("GRAPH_URL", server.url)
    monkeypatch.setenv("GRAPH_TOKEN_URL", f"{server.url}/{state.tenant_id}/oauth2/v2.0/token")
    monkeypatch.setenv("GRAPH_CLIENT_ID", GRAPH_CLIENT[0])
    monkeypatch.setenv("GRAPH_CLIENT_SECRET", GRAPH_CLIENT[1])


# -- SharePoint <-> PostgreSQL --------------------------------------------------------


@pytest.mark.postgres
def test_sharepoint_list_and_postgres_table_converge_after_concurrent_edits(tmp_path, monkeypatch):
    with ExitStack() as stack:
        state, server = stack.enter_context(graph_server())
        engine, table = stack.enter_context(fresh_table(server_url("postgres", tmp_path)))
        graph_env(monkeypatch, state, server)
        monkeypatch.setenv("CONTACTS_DB_URL", server_url("postgres", tmp_path))
        definition = example("sharepoint-postgres.sync.yaml", tmp_path, db__table=str(table.name))
        sp, db = GraphSide(state), SqlSide(engine, table)
        sp.add(email="ann@example.com", first="Ann", last="Lee", phone="+1 555 0100")
        sp.add(email="bob@example.com", first="Bob", last="Stone")
        db.add(email="bob@example.com", first="Bob", last="Stone", phone="+1 555 0101")
        db.add(email="cy@example.com", first="Cy", last="Young")
        db.add(email="dee@example.com", first="Dee", last="Dale")

        first = completed(run_sync(definition))
        assert first.systems["sharepoint"]["created"] == 2  # cy, dee
        assert first.systems["db"]["created"] == 1  # ann; bob was linked on email
        assert len(assert_converged(sp, db)) == 4
        assert row(sp, "bob@example.com")["phone"] == "+1 555 0101"

        # both sides edit between runs: different fields of ann, the same field of bob
        # (the table's edit is later), a create and a delete on each side
        sp.edit("ann@example.com", first="Annie")
        db.edit("ann@example.com", phone="+1 555 0199")
        sp.edit("bob@example.com", last="Spstone")
        db.edit("bob@example.com", last="Dbstone", at=datetime.now(UTC) + timedelta(seconds=1))
        sp.add(email="eve@example.com", first="Eve", last="Evans")
        db.add(email="fay@example.com", first="Fay", last="Fox", phone="+1 555 0102")
        sp.delete("cy@example.com")
        db.delete("dee@example.com")

        second = completed(run_sync(definition))
        assert second.conflicts == 1
        final = assert_converged(sp, db)
        assert [r[0] for r in final] == [
            "ann@example.com",
            "bob@example.com",
            "eve@example.com",
            "fay@example.com",
        ]
        assert row(db, "ann@example.com") | {"_key": None} == {
            "email": "ann@example.com",
            "first": "Annie",
            "last": "Lee",
            "phone": "+1 555 0199",
            "_key": None,
        }
        assert row(sp, "bob@example.com")["last"] == "Dbstone"

        third = completed(run_sync(definition))
        assert written(third) == 0, third.systems


# -- three Salesforce orgs -------------------------------------------------------------


def test_three_salesforce_orgs_converge_and_keep_18_character_ids(tmp_path, monkeypatch):
    with ExitStack() as stack:
        orgs = {}
        for name in ("east", "west", "emea"):
            state, server = stack.enter_context(salesforce_server())
            orgs[name] = SalesforceSide(state, person=f"{name.title()} Person")
            monkeypatch.setenv(f"SF_{name.upper()}_URL", server.url)
            monkeypatch.setenv(f"SF_{name.upper()}_CLIENT_ID", SF_CLIENT[0])
            monkeypatch.setenv(f"SF_{name.upper()}_CLIENT_SECRET", SF_CLIENT[1])
        definition = example("salesforce-three-orgs.sync.yaml", tmp_path)
        east, west, emea = orgs["east"], orgs["west"], orgs["emea"]
        for side in (east, west, emea):  # one contact in every org: linked, never copied
            side.add(email="all@example.com", first="Al", last="Three")
        east.add(email="e@example.com", first="Ed", last="East", phone="+1 555 0001")
        west.add(email="w@example.com", first="Wu", last="West")
        emea.add(email="m@example.com", first="Mo", last="Emea")

        completed(run_sync(definition))
        assert len(assert_converged(east, west, emea)) == 4

        # a change in any org reaches the other two
        east.edit("w@example.com", phone="+44 20 0000")
        west.edit("m@example.com", first="Moritz")
        emea.edit("e@example.com", last="Eastwood")
        emea.delete("all@example.com")
        west.add(email="new@example.com", first="Nu", last="West")
        second = completed(run_sync(definition))
        final = assert_converged(east, west, emea)
        assert [r[0] for r in final] == [
            "e@example.com",
            "m@example.com",
            "new@example.com",
            "w@example.com",
        ]
        assert row(east, "m@example.com")["first"] == "Moritz"
        assert row(west, "e@example.com")["last"] == "Eastwood"
        assert row(emea, "w@example.com")["phone"] == "+44 20 0000"
        assert second.systems["east"]["deleted"] == second.systems["west"]["deleted"] == 1

        assert written(completed(run_sync(definition))) == 0

        engine = sa.create_engine(definition.state)
        with engine.connect() as conn:
            ids = conn.execute(
                sa.text("SELECT system, external_id FROM id_map WHERE sync = :s"),
                {"s": definition.name},
            ).all()
        engine.dispose()
        assert {s for s, _ in ids} == {"east", "west", "emea"}
        assert len(ids) == 3 * 5  # 4 linked at first, plus the new one (deleted ones stay)
        for system, external_id in ids:
            assert len(external_id) == 18 and sfid.is_valid(external_id), (system, external_id)


# -- faults ---------------------------------------------------------------------------


def test_sync_with_faults_on_every_simulator_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    """10% of requests fail transiently (locked, throttled, unavailable) on a SharePoint
    list, a Salesforce org and a REST collection; retries (with waits recorded, not slept)
    carry the sync through. SharePoint and Salesforce get small write batches, so each load
    keeps two of them in flight (their default) while faults fall."""
    rates = {"lock": 0.04, "throttle": 0.03, "unavailable": 0.03}
    waits: list[float] = []
    with ExitStack() as stack:
        graph, gserver = stack.enter_context(graph_server(faults=FaultPlan(seed=SEED + 1)))
        org, sserver = stack.enter_context(salesforce_server(faults=FaultPlan(seed=SEED + 2)))
        rest = RestState()
        rest_faults = FaultPlan(seed=SEED + 3)
        rserver = stack.enter_context(
            BackgroundServer(rest_app(rest, default_user="sync-bot", faults=rest_faults))
        )
        sides = {
            "sharepoint": GraphSide(graph),
            "salesforce": SalesforceSide(org),
            "rest": RestSide(rest),
        }
        doc = {
            "name": "faulty",
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "systems": {
                "sharepoint": {
                    "kind": "sharepoint",
                    "graph_url": gserver.url,
                    "token_url": f"{gserver.url}/{graph.tenant_id}/oauth2/v2.0/token",
                    "client_id": GRAPH_CLIENT[0],
                    "client_secret": "${T_GRAPH_SECRET}",
                    "list": LIST,
                    "integration_account": "twoway-sync",
                    "batch_size": 4,
                },
                "salesforce": {
                    "kind": "salesforce",
                    "instance_url": sserver.url,
                    "client_id": SF_CLIENT[0],
                    "client_secret": "${T_SF_SECRET}",
                    "batch_size": 4,
                },
                "rest": {
                    "kind": "rest",
                    "base_url": rserver.url,
                    "batch": "/$batch",
                    "cursor_param": "modified_since",
                    "page_size_param": "$top",
                    "page_size": 7,
                    "modified_at": "modified_at",
                    "modified_by": "modified_by",
                    "integration_account": "sync-bot",
                    "batch_size": 10,
                },
            },
            "fields": {
                canonical: {
                    "sharepoint": GRAPH_COLUMNS[f],
                    "salesforce": SF_COLUMNS[f],
                    "rest": REST_COLUMNS[f],
                }
                for canonical, f in CANONICAL.items()
            },
            "match_on": ["email"],
        }
        monkeypatch.setenv("T_GRAPH_SECRET", GRAPH_CLIENT[1])
        monkeypatch.setenv("T_SF_SECRET", SF_CLIENT[1])
        definition = parse_definition(doc, tmp_path / "faulty.sync.yaml")

        rng, run_rng = random.Random(5), random.Random(9)  # run ids come from run_rng
        for i in range(36):  # 12 per system, 6 of them also on another system
            name = ("sharepoint", "salesforce", "rest")[i % 3]
            person = {"email": f"p{i}@example.com", "first": f"F{i}", "last": f"L{i}"}
            sides[name].add(**person)
            if i % 2 == 0:
                other = ("sharepoint", "salesforce", "rest")[(i + 1) % 3]
                sides[other].add(**person)

        def run() -> RunReport:
            endpoints = {s: open_endpoint(definition, s) for s in definition.systems}
            endpoints["sharepoint"].use_retry_hooks(waits.append)
            endpoints["salesforce"].use_retry_hooks(waits.append, random.Random(1))
            endpoints["rest"].use_retry_hooks(waits.append, random.Random(2))
            try:
                runtime = Runtime(sleep=waits.append, rng=run_rng, endpoints=endpoints)
                return run_sync(definition, runtime)
            finally:
                for endpoint in endpoints.values():
                    endpoint.close()

        for plan in (graph.faults, org.faults, rest_faults):
            plan.set(**rates)
        completed(run())
        assert len(assert_converged(*sides.values())) == 36

        # people keep editing everywhere while faults go on
        for i in rng.sample(range(36), 12):
            name = rng.choice(list(sides))
            sides[name].edit(f"p{i}@example.com", phone=f"+1 555 {i:04}")
        sides["rest"].delete("p1@example.com")
        sides["sharepoint"].delete("p2@example.com")
        for j in range(3):
            list(sides.values())[j].add(email=f"n{j}@example.com", first="N", last=f"New{j}")
        completed(run())
        final = assert_converged(*sides.values())
        assert len(final) == 36 - 2 + 3
        assert len({r[0] for r in final}) == len(final)

        for plan in (graph.faults, org.faults, rest_faults):
            plan.set()
        assert written(completed(run())) == 0
        faults = sum(sum(p.counts.values()) for p in (graph.faults, org.faults, rest_faults))
        assert faults > 0 and waits, "no fault was drawn: the test tested nothing"


# -- REST <-> SQLite, the documented definition form ------------------------------------

REST_DEFINITION = """\
name: orders-rest
state: sqlite:///state.db
systems:
  api:
    kind: rest
    base_url: {base_url}
    collection: /items
    item: /items/{{id}}
    batch: /$batch
    records: value
    next_link: "@odata.nextLink"
    cursor_param: modified_since
    page_size_param: $top
    page_size: 5
    key: id
    modified_at: modified_at
    modified_by: modified_by
    integration_account: sync-bot
  db:
    kind: sql
    url: sqlite:///contacts.db
    table: contacts
    key: id
    modified_at: updated_at
    modified_by: updated_by
    integration_account: svc-sync
fields:
  email: {{api: email, db: email}}
  first_name: {{api: first_name, db: first_name}}
  last_name: {{api: last_name, db: last_name}}
  phone: {{api: phone, db: phone}}
match_on: [email]
conflicts: last_writer_wins
deletes: propagate
"""


def test_rest_collection_and_sqlite_table_converge(tmp_path):
    from twoway.definition import load_definition

    rest = RestState()
    with (
        BackgroundServer(rest_app(rest, default_user="sync-bot")) as server,
        fresh_table(f"sqlite:///{tmp_path / 'contacts.db'}", table="contacts") as (engine, table),
    ):
        path = tmp_path / "orders-rest.sync.yaml"
        path.write_text(REST_DEFINITION.format(base_url=server.url))
        definition = load_definition(path)
        api, db = RestSide(rest), SqlSide(engine, table)
        for i in range(8):
            api.add(email=f"a{i}@example.com", first=f"A{i}", last="Api")
        for i in range(5):
            db.add(email=f"d{i}@example.com", first=f"D{i}", last="Db", phone=f"+1 {i}")
        db.add(email="a0@example.com", first="A0", last="Api", phone="+1 555")

        first = completed(run_sync(definition))
        assert first.systems["api"]["created"] == 5 and first.systems["db"]["created"] == 7
        assert len(assert_converged(api, db)) == 13

        api.edit("a1@example.com", first="Alpha")
        db.edit("a1@example.com", phone="+1 777")
        api.edit("d2@example.com", last="Api-side")
        db.edit("d2@example.com", last="Db-side", at=datetime.now(UTC) + timedelta(seconds=1))
        api.delete("a3@example.com")
        db.delete("d4@example.com")
        api.add(email="a9@example.com", first="A9", last="Api")
        db.add(email="d9@example.com", first="D9", last="Db")
        completed(run_sync(definition))
        final = assert_converged(api, db)
        assert len(final) == 13
        assert row(db, "a1@example.com")["first"] == "Alpha"
        assert row(api, "a1@example.com")["phone"] == "+1 777"
        assert row(api, "d2@example.com")["last"] == "Db-side"
        assert row(api, "a3@example.com") is None and row(db, "d4@example.com") is None

        assert written(completed(run_sync(definition))) == 0


# -- Salesforce <-> SQLite on the org's own clock: shared stamps, bumps, racing edits -------


class OrgClock:
    """A Salesforce simulator's clock that stands still until a test moves it on, starting
    on a whole second of ours (a run within one tick stamps everything alike)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@contextmanager
def crm_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Definition, OrgClock, SalesforceSide, SqlSide]]:
    """Contacts of an org simulator on an :class:`OrgClock` and a SQLite table, kept in
    step by a definition with no overlap window on the org (each read starts where the
    last one began, so what a run reads again is what changed, or tied, since)."""
    clock = OrgClock()
    db_url = f"sqlite:///{tmp_path / 'contacts.db'}"
    with (
        salesforce_server(clock=clock) as (state, server),
        fresh_table(db_url, table="contacts") as (engine, table),
    ):
        monkeypatch.setenv("T_SF_SECRET", SF_CLIENT[1])
        doc = {
            "name": "crm-table",
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "systems": {
                "crm": {
                    "kind": "salesforce",
                    "instance_url": server.url,
                    "client_id": SF_CLIENT[0],
                    "client_secret": "${T_SF_SECRET}",
                    "object": "Contact",
                    "overlap_seconds": 0,
                },
                "db": {
                    "kind": "sql",
                    "url": db_url,
                    "table": "contacts",
                    "key": "id",
                    "modified_at": "updated_at",
                    "modified_by": "updated_by",
                    "integration_account": "svc-sync",
                },
            },
            "fields": {
                canonical: {"crm": SF_COLUMNS[f], "db": SQL_COLUMNS[f]}
                for canonical, f in CANONICAL.items()
            },
            "match_on": ["email"],
            "conflicts": "last_writer_wins",
            "deletes": "propagate",
        }
        definition = parse_definition(doc, tmp_path / "crm-table.sync.yaml")
        yield definition, clock, SalesforceSide(state), SqlSide(engine, table)


def test_records_one_salesforce_call_stamps_alike_all_reach_the_table(tmp_path, monkeypatch):
    """250 contacts written in one millisecond of the org's clock: the run's read begins on
    that very millisecond and 250 more come after it, stamped alike; the next run still
    brings every one of them across (a tie at the cursor is read again, never skipped)."""
    with crm_and_table(tmp_path, monkeypatch) as (definition, clock, crm, db):
        for i in range(250):
            crm.add(email=f"a{i}@example.com", first="A", last=f"Tie{i}")
        completed(run_sync(definition))  # reads at the stamp's own instant
        for i in range(250):
            crm.add(email=f"b{i}@example.com", first="B", last=f"Tie{i}")
        stamps = {r["SystemModstamp"] for r in crm.state.records("Contact")}
        assert len(stamps) == 1
        clock.tick()
        second = completed(run_sync(definition))
        assert second.systems["db"]["created"] == 250
        assert len(assert_converged(crm, db)) == 500


def test_system_only_bumps_write_nothing_and_are_read_once(tmp_path, monkeypatch):
    """A roll-up summary or automated process moves SystemModstamp alone: the next run reads
    those records once and writes nothing, the run after reads none; and a bump after a
    person's edit does not make that edit win a conflict against a later one."""
    with crm_and_table(tmp_path, monkeypatch) as (definition, clock, crm, db):
        for i in range(6):
            crm.add(email=f"c{i}@example.com", first=f"C{i}", last="Crm")
        for i in range(3):
            db.add(email=f"d{i}@example.com", first=f"D{i}", last="Db")
        clock.tick()
        completed(run_sync(definition))
        assert len(assert_converged(crm, db)) == 9
        clock.tick()
        completed(run_sync(definition))  # the echoes of the first run's creates
        clock.tick()
        quiet = completed(run_sync(definition))
        assert quiet.systems["crm"]["extracted"] == 0 and written(quiet) == 0

        bumped = [key_of(crm, f"c{i}@example.com") for i in range(4)]
        clock.tick()
        crm.state.system_bump("Contact", bumped)
        clock.tick()
        after = completed(run_sync(definition))
        assert after.systems["crm"]["extracted"] == 4 and written(after) == 0
        clock.tick()
        settled = completed(run_sync(definition))
        assert settled.systems["crm"]["extracted"] == 0 and written(settled) == 0

        # the org's edit is older than the table's; a bump after both must not reverse that
        crm.edit("c5@example.com", phone="+1 555 0001")  # at the org's now
        db.edit("c5@example.com", phone="+1 555 0002", at=clock.now + timedelta(seconds=1))
        clock.tick(2)
        crm.state.system_bump("Contact", [key_of(crm, "c5@example.com")])
        clock.tick()
        decided = completed(run_sync(definition))
        assert decided.conflicts == 1
        assert row(crm, "c5@example.com")["phone"] == row(db, "c5@example.com")["phone"]
        assert row(crm, "c5@example.com")["phone"] == "+1 555 0002"


def test_an_edit_landing_between_the_check_and_the_write_is_deferred_then_merged(
    tmp_path, monkeypatch
):
    """A person edits a contact in the org right after the run's version check and before
    its write: the guarded update is refused (412), the run defers it, the edit stays; the
    next run merges both sides' changes (the later phone wins, the table's name comes)."""
    with crm_and_table(tmp_path, monkeypatch) as (definition, clock, crm, db):
        crm.add(email="ann@example.com", first="Ann", last="Lee", phone="+1 555 0100")
        clock.tick()
        completed(run_sync(definition))
        assert len(assert_converged(crm, db)) == 1
        clock.tick()
        db.edit("ann@example.com", first="Anna", phone="+1 555 0199", at=clock.now)
        clock.tick()
        key = key_of(crm, "ann@example.com")
        crm.state.edit_after_read("Contact", key, {"Phone": "+1 555 0142"}, user=crm.person)
        raced = run_sync(definition)
        assert raced.systems["crm"]["deferred"] == 1, raced.systems
        assert row(crm, "ann@example.com")["phone"] == "+1 555 0142"  # not overwritten
        assert row(crm, "ann@example.com")["first"] == "Ann"
        clock.tick()
        completed(run_sync(definition))
        merged = assert_converged(crm, db)
        assert merged == [("ann@example.com", "Anna", "Lee", "+1 555 0142")]
        clock.tick()
        assert written(completed(run_sync(definition))) == 0


def test_items_the_list_lost_are_created_again_after_upload_differences(tmp_path, monkeypatch):
    """Graph's 410 resyncChangesUploadDifferences says the list may have lost items and asks
    the client to upload the ones it did not return: the linked item missing from the full
    read is created in the list again from the table's record (a new key, the old one
    forgotten), never taken for a deletion. A run that does not write to the list leaves
    it for the run that does."""
    with ExitStack() as stack:
        state, server = stack.enter_context(graph_server())
        url = server_url("sqlite", tmp_path)
        engine, table = stack.enter_context(fresh_table(url))
        graph_env(monkeypatch, state, server)
        monkeypatch.setenv("CONTACTS_DB_URL", url)
        definition = example("sharepoint-postgres.sync.yaml", tmp_path, db__table=str(table.name))
        sp, db = GraphSide(state), SqlSide(engine, table)
        for name in ("ann", "bob", "cy"):
            sp.add(email=f"{name}@example.com", first=name.title(), last="Lee")
        completed(run_sync(definition))
        one_way = {"sources": {"sharepoint"}, "targets": {"db"}}
        completed(run_sync(definition, **one_way))  # the one-way runs' own cursor
        lost = key_of(sp, "bob@example.com")
        # gone from the list, and then the delta token: the full read after the 410 does not
        # return the item, and nothing says it was deleted
        state.user_delete(LIST, lost)
        state.expire_delta_tokens("resyncChangesUploadDifferences")

        assert written(completed(run_sync(definition, **one_way))) == 0
        assert row(sp, "bob@example.com") is None and row(db, "bob@example.com") is not None

        again = completed(run_sync(definition))
        assert again.systems["sharepoint"]["created"] == 1 and written(again) == 1
        assert again.systems["db"]["deleted"] == 0
        assert len(assert_converged(sp, db)) == 3
        store = StateStore(definition.state or "")
        try:
            keys = store.live_keys(definition.name, "sharepoint")
        finally:
            store.engine.dispose()
        assert lost not in keys and key_of(sp, "bob@example.com") in keys and len(keys) == 3
        assert written(completed(run_sync(definition))) == 0
