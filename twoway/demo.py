"""``twoway demo``: a SharePoint list and a SQLite table kept in step by the two-way flow.

The SharePoint side is the Graph simulator (twoway.simulators.graph), started in this
process on a free 127.0.0.1 port; the SQL side is a SQLite file. The demo fills both with
a few hundred contacts (a third of them on both sides), syncs them, plays people editing
both sides (two merging edits, a conflict, a delete and new contacts; SharePoint edits
come from another identity through the simulator's user API, SQL edits straight into the
table), syncs again, shows what happened, runs once more to show that nothing echoes
back, and checks its own expectations: exit code 0 only when every one holds.

The definition it writes carries the app's client id and secret itself (the secret read
from an environment variable), so no Prefect server and no saved block are needed.

``twoway demo --sql`` is the older demo of two SQLite databases (``crm.db`` and
``portal.db``); the ``contacts`` deployment in prefect.yaml keeps those two in step.
"""

from __future__ import annotations

import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from twoway.values import format_timestamp

FIRST = [
    "Ada",
    "Ben",
    "Chloe",
    "Dan",
    "Eva",
    "Finn",
    "Grace",
    "Hugo",
    "Ines",
    "Jon",
    "Kara",
    "Liam",
    "Mia",
    "Noah",
    "Olga",
    "Paul",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Uma",
    "Vik",
    "Wes",
    "Yara",
    "Zoe",
]
LAST = [
    "Adams",
    "Berg",
    "Costa",
    "Diaz",
    "Evans",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Novak",
    "Olsen",
    "Petrov",
    "Rossi",
    "Silva",
    "Tanaka",
    "Ueda",
    "Vogel",
    "Weber",
    "Young",
    "Zhou",
]
DOMAINS = ["example.com", "example.org", "example.net"]

DEFINITION = """\
name: contacts
state: sqlite:///state.db
systems:
  crm:
    kind: sql
    url: sqlite:///crm.db
    table: contacts
    key: id
    modified_at: updated_at
    modified_by: updated_by
    integration_account: svc-sync
  portal:
    kind: sql
    url: sqlite:///portal.db
    table: people
    key: pid
    modified_at: modified
    modified_by: editor
    integration_account: svc-sync
fields:
  email: {crm: email, portal: mail}
  first_name: {crm: first_name, portal: fname}
  last_name: {crm: last_name, portal: lname}
  phone: {crm: phone, portal: tel, direction: crm -> portal}
match_on: [email]
conflicts: last_writer_wins
deletes: propagate
"""

CRM = ("contacts", "id", "email", "first_name", "last_name", "phone", "updated_at", "updated_by")
PORTAL = ("people", "pid", "mail", "fname", "lname", "tel", "modified", "editor")


def _table(layout: tuple[str, ...]) -> sa.Table:
    name, key, email, first, last, phone, modified, by = layout
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column(key, sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(email, sa.String(200), nullable=False),
        sa.Column(first, sa.String(100)),
        sa.Column(last, sa.String(100)),
        sa.Column(phone, sa.String(40)),
        sa.Column(modified, sa.String(32)),
        sa.Column(by, sa.String(60)),
    )


def _people(rng: random.Random, count: int) -> list[dict[str, Any]]:
    out, seen = [], set()
    while len(out) < count:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}".lower()
        if email in seen:
            continue
        seen.add(email)
        phone = (
            f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
            if rng.random() < 0.8
            else None
        )
        out.append({"email": email, "first": first, "last": last, "phone": phone})
    return out


class _Side:
    """One demo database and a person editing it."""

    def __init__(self, folder: Path, file: str, layout: tuple[str, ...], user: str):
        self.engine = sa.create_engine(f"sqlite:///{folder / file}")
        self.table = _table(layout)
        self.layout = layout
        self.user = user
        self.table.create(self.engine)

    def _row(self, person: dict[str, Any], when: datetime) -> dict[str, Any]:
        _, _, email, first, last, phone, modified, by = self.layout
        return {
            email: person["email"],
            first: person["first"],
            last: person["last"],
            phone: person["phone"],
            modified: format_timestamp(when),
            by: self.user,
        }

    def insert(self, people: list[dict[str, Any]], when: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), [self._row(p, when) for p in people])

    def edit(self, email: str, **values: Any) -> None:
        cols = dict(zip(("email", "first", "last", "phone"), self.layout[2:6], strict=True))
        stamp = {self.layout[6]: format_timestamp(datetime.now(UTC)), self.layout[7]: self.user}
        with self.engine.begin() as conn:
            conn.execute(
                self.table.update()
                .where(self.table.c[self.layout[2]] == email)
                .values({cols[k]: v for k, v in values.items()} | stamp)
            )

    def delete(self, email: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.delete().where(self.table.c[self.layout[2]] == email))

    def get(self, email: str) -> dict[str, Any] | None:
        _, _, e, first, last, phone, _, by = self.layout
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(self.table).where(self.table.c[e] == email))
                .mappings()
                .first()
            )
        if row is None:
            return None
        return {"first": row[first], "last": row[last], "phone": row[phone], "by": row[by]}

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar() or 0


def _show(label: str, report: dict[str, Any]) -> None:
    from twoway.report import COUNT_COLUMNS, text_table

    print(f"\n== {label}: {report['status']}, {report.get('conflicts', 0)} conflicts")
    rows = [{"system": s, **c} for s, c in sorted(report["systems"].items())]
    print(text_table(rows, ["system", *COUNT_COLUMNS]))


def run_sql_demo(folder: Path, records: int = 300, seed: int = 7) -> int:
    """The two-database demo (``twoway demo --sql``): build it, run it, print what happened;
    0 when every expectation held. Its files are what syncs/contacts.sync.yaml reads."""
    from flows.run import run_flow

    if folder.exists():
        for name in ("crm.db", "portal.db", "state.db", "contacts.sync.yaml"):
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / ".twoway", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    people = _people(rng, records * 2)
    shared = people[: records // 3]
    crm_only = people[records // 3 : records]
    portal_only = people[records : records * 2 - records // 3]
    crm = _Side(folder, "crm.db", CRM, "maria@crm")
    portal = _Side(folder, "portal.db", PORTAL, "paul@portal")
    start = datetime.now(UTC) - timedelta(days=1)
    crm.insert(shared + crm_only, start)
    portal.insert([dict(p, phone=None) for p in shared] + portal_only, start)
    definition = folder / "contacts.sync.yaml"
    definition.write_text(DEFINITION)
    print(
        f"twoway demo in {folder}/: crm.db ({crm.count()} contacts) and portal.db ({portal.count()})"
    )
    print(f"{len(shared)} contacts are on both sides; the definition is {definition}")

    first = run_flow(str(definition), dry_run=False, full=False, allow_mass_change=False)
    _show("first sync (links matches on email, creates the rest)", first)

    merge, conflict, gone = shared[0]["email"], shared[1]["email"], crm_only[0]["email"]
    print("\nPeople edit both sides:")
    print(f"  crm:    {merge}: first name -> 'Alexandra'")
    crm.edit(merge, first="Alexandra")
    print(f"  portal: {merge}: last name -> 'Lovelace'        (a different field: both survive)")
    portal.edit(merge, last="Lovelace")
    print(f"  portal: {conflict}: first name -> 'Early'")
    portal.edit(conflict, first="Early")
    time.sleep(0.01)
    print(f"  crm:    {conflict}: first name -> 'Later'          (same field, later edit wins)")
    crm.edit(conflict, first="Later")
    print(f"  portal: deletes {gone}                            (deletes propagate)")
    portal.delete(gone)
    newcomer = {
        "email": "new.person@example.com",
        "first": "Nia",
        "last": "New",
        "phone": "+1 555 000 1111",
    }
    print(f"  crm:    adds {newcomer['email']}")
    crm.insert([newcomer], datetime.now(UTC))

    second = run_flow(str(definition), dry_run=False, full=False, allow_mass_change=False)
    _show("second sync", second)
    third = run_flow(str(definition), dry_run=False, full=False, allow_mass_change=False)
    _show("third sync (no edits since: nothing to write, no echoes)", third)

    print("\nWhat each side holds now:")
    merged = (crm.get(merge), portal.get(merge))
    checks = {
        f"{merge} merged": all(
            m and (m["first"], m["last"]) == ("Alexandra", "Lovelace") for m in merged
        ),
        f"{conflict} conflict won by the later edit": (crm.get(conflict) or {}).get("first")
        == (portal.get(conflict) or {}).get("first")
        == "Later",
        f"{gone} deleted on both sides": crm.get(gone) is None and portal.get(gone) is None,
        f"{newcomer['email']} created in the portal": (portal.get(newcomer["email"]) or {}).get(
            "by"
        )
        == "svc-sync",
        "same number of contacts on both sides": crm.count() == portal.count(),
        "third run wrote nothing": all(
            c["created"] + c["updated"] + c["deleted"] == 0 for c in third["systems"].values()
        ),
    }
    for email in (merge, conflict, gone, newcomer["email"]):
        print(f"  {email}\n    crm:    {crm.get(email)}\n    portal: {portal.get(email)}")
    print()
    for label, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {label}")
    print(f"\nInspect it: twoway status {definition}   |   twoway plan {definition}")
    return 0 if all(checks.values()) and first["status"] == "completed" else 1


# -- the SharePoint demo (the default) ------------------------------------------------------

SP_LIST = "Contacts"
SP_CLIENT_ID = "twoway-demo"
SP_TENANT = "twoway-demo"
SP_ACCOUNT = "twoway-sync"  # the app registration's display name: lastModifiedBy of our writes
SP_PERSON = "Paula Lists"  # someone editing the list in SharePoint
SQL_ACCOUNT = "svc-sharepoint"
SQL_PERSON = "maria@crm"
SECRET_VARIABLE = "TWOWAY_DEMO_CLIENT_SECRET"
SP_FILES = ("sharepoint-crm.db", "sharepoint-demo-state.db", "sharepoint-demo.sync.yaml")

SP_DEFINITION = """\
# The sync of `twoway demo`: a SharePoint list (the Graph simulator the demo started on
# {url}; it is gone when the demo ends) and the SQLite table `contacts` of
# sharepoint-crm.db. The app's credentials are written here, the secret read from the
# environment; against a real tenant, keep them in a saved block instead (`block:`).
name: sharepoint-demo
state: sqlite:///sharepoint-demo-state.db
systems:
  sharepoint:
    kind: sharepoint
    graph_url: {url}
    token_url: {url}/{tenant}/oauth2/v2.0/token
    site: root
    list: {list}
    client_id: {client_id}
    client_secret: ${{{secret_variable}}}
    integration_account: {sp_account}
  crm:
    kind: sql
    url: sqlite:///sharepoint-crm.db
    table: contacts
    key: id
    modified_at: updated_at
    modified_by: updated_by
    integration_account: {sql_account}
fields:
  email: {{sharepoint: Email, crm: email}}
  first_name: {{sharepoint: FirstName, crm: first_name}}
  last_name: {{sharepoint: Title, crm: last_name}}
  phone: {{sharepoint: Phone, crm: phone}}
match_on: [email]
conflicts: last_writer_wins
deletes: propagate
"""


class _ListSide:
    """The demo's SharePoint list in the Graph simulator, and a person editing it there."""

    def __init__(self, graph: Any, user: str):
        self.graph = graph
        self.user = user

    def insert(self, people: list[dict[str, Any]]) -> None:
        for p in people:
            self.graph.user_create(SP_LIST, self._fields(p), user=self.user)

    @staticmethod
    def _fields(person: dict[str, Any]) -> dict[str, Any]:
        out = {"Email": person["email"], "FirstName": person["first"], "Title": person["last"]}
        if person.get("phone") is not None:
            out["Phone"] = person["phone"]
        return out

    def _item(self, email: str) -> dict[str, Any] | None:
        found = [i for i in self.graph.items(SP_LIST) if i["fields"].get("Email") == email]
        if len(found) > 1:
            raise AssertionError(f"{email} is in the SharePoint list {len(found)} times")
        return found[0] if found else None

    def edit(self, email: str, **values: Any) -> None:
        names = {"first": "FirstName", "last": "Title", "phone": "Phone"}
        item = self._item(email)
        if item is None:
            raise AssertionError(f"{email} is not in the SharePoint list")
        fields = {names[k]: v for k, v in values.items()}
        self.graph.user_update(SP_LIST, item["id"], fields, user=self.user)

    def delete(self, email: str) -> None:
        item = self._item(email)
        if item is None:
            raise AssertionError(f"{email} is not in the SharePoint list")
        self.graph.user_delete(SP_LIST, item["id"], user=self.user)

    def get(self, email: str) -> dict[str, Any] | None:
        item = self._item(email)
        if item is None:
            return None
        fields = item["fields"]
        by = item["lastModifiedBy"]
        who = (by.get("application") or by.get("user") or {}).get("displayName")
        return {
            "first": fields.get("FirstName"),
            "last": fields.get("Title"),
            "phone": fields.get("Phone"),
            "by": who,
        }

    def count(self) -> int:
        return self.graph.count(SP_LIST)


def run_demo(folder: Path, records: int = 300, seed: int = 7) -> int:
    """The SharePoint demo: build it, run it through the Prefect flow, print what happened;
    0 when every expectation held.

    The Graph simulator runs in this process for the length of the demo; the flow reaches
    it over HTTP on 127.0.0.1 like any SharePoint tenant.
    """
    import os
    import secrets

    from flows.run import run_flow
    from twoway.simulators.graph import GraphState, create_app
    from twoway.simulators.server import BackgroundServer

    folder.mkdir(parents=True, exist_ok=True)
    for name in SP_FILES:
        (folder / name).unlink(missing_ok=True)
    rng = random.Random(seed)
    people = _people(rng, records * 2)
    shared = people[: records // 3]
    crm_only = people[records // 3 : records]
    list_only = people[records : records * 2 - records // 3]

    secret = secrets.token_urlsafe(24)
    graph = GraphState(
        client_id=SP_CLIENT_ID,
        client_secret=secret,
        display_name=SP_ACCOUNT,
        tenant_id=SP_TENANT,
    )
    previous = os.environ.get(SECRET_VARIABLE)
    os.environ[SECRET_VARIABLE] = secret
    try:
        with BackgroundServer(create_app(graph)) as server:
            return _play(folder, server.url, graph, shared, crm_only, list_only, run_flow)
    finally:
        graph.close()
        if previous is None:
            os.environ.pop(SECRET_VARIABLE, None)
        else:
            os.environ[SECRET_VARIABLE] = previous


def _play(
    folder: Path,
    url: str,
    graph: Any,
    shared: list[dict[str, Any]],
    crm_only: list[dict[str, Any]],
    list_only: list[dict[str, Any]],
    run_flow: Any,
) -> int:
    """Fill both sides, sync, edit, sync twice more, and check the outcome."""
    crm = _Side(folder, "sharepoint-crm.db", CRM, SQL_PERSON)
    sharepoint = _ListSide(graph, SP_PERSON)
    start = datetime.now(UTC) - timedelta(days=1)
    crm.insert(shared + crm_only, start)
    sharepoint.insert([dict(p, phone=None) for p in shared] + list_only)
    definition = folder / "sharepoint-demo.sync.yaml"
    definition.write_text(
        SP_DEFINITION.format(
            url=url,
            tenant=SP_TENANT,
            list=SP_LIST,
            client_id=SP_CLIENT_ID,
            secret_variable=SECRET_VARIABLE,
            sp_account=SP_ACCOUNT,
            sql_account=SQL_ACCOUNT,
        )
    )
    print(f"twoway demo in {folder}/")
    print(
        f"  SharePoint list {SP_LIST!r} ({sharepoint.count()} contacts) in the Graph simulator "
        f"at {url}"
    )
    print(f"  SQLite table 'contacts' in sharepoint-crm.db ({crm.count()} contacts)")
    print(f"  {len(shared)} contacts are on both sides; the definition is {definition}")

    def sync() -> dict[str, Any]:
        return run_flow(str(definition), dry_run=False, full=False, allow_mass_change=False)

    first = sync()
    _show("first sync (links matches on email, creates the rest)", first)

    merge, conflict = shared[0]["email"], shared[1]["email"]
    gone = crm_only[0]["email"]
    from_crm = {"email": "new.person@example.com", "first": "Nia", "last": "New", "phone": None}
    from_list = {
        "email": "list.newcomer@example.com",
        "first": "Lena",
        "last": "Listwell",
        "phone": "+1 555 010 2020",
    }
    print(f"\nPeople edit both sides ({SP_PERSON} in SharePoint, {SQL_PERSON} in the table):")
    print(f"  crm:        {merge}: first name -> 'Alexandra'")
    crm.edit(merge, first="Alexandra")
    print(f"  sharepoint: {merge}: last name -> 'Lovelace'   (another field: both survive)")
    sharepoint.edit(merge, last="Lovelace")
    print(f"  sharepoint: {conflict}: first name -> 'Early'")
    sharepoint.edit(conflict, first="Early")
    time.sleep(0.01)
    print(f"  crm:        {conflict}: first name -> 'Later'     (same field: the later edit wins)")
    crm.edit(conflict, first="Later")
    print(f"  sharepoint: deletes {gone}                  (deletes propagate)")
    sharepoint.delete(gone)
    print(f"  crm:        adds {from_crm['email']}")
    crm.insert([from_crm], datetime.now(UTC))
    print(f"  sharepoint: adds {from_list['email']}")
    sharepoint.insert([from_list])

    second = sync()
    _show("second sync", second)
    third = sync()
    _show("third sync (no edits since: nothing to write, no echoes)", third)

    print("\nWhat each side holds now:")
    for email in (merge, conflict, gone, from_crm["email"], from_list["email"]):
        print(
            f"  {email}\n    crm:        {crm.get(email)}\n    sharepoint: {sharepoint.get(email)}"
        )
    sides = (crm, sharepoint)
    checks = {
        "every run completed": all(r.get("status") == "completed" for r in (first, second, third)),
        f"{merge} merged (first name from crm, last name from SharePoint)": all(
            (s.get(merge) or {}).get("first") == "Alexandra"
            and (s.get(merge) or {}).get("last") == "Lovelace"
            for s in sides
        ),
        f"{conflict} conflict won by the later edit": all(
            (s.get(conflict) or {}).get("first") == "Later" for s in sides
        ),
        f"{gone} deleted on both sides": all(s.get(gone) is None for s in sides),
        f"{from_crm['email']} created in SharePoint by {SP_ACCOUNT}": (
            sharepoint.get(from_crm["email"]) or {}
        ).get("by")
        == SP_ACCOUNT,
        f"{from_list['email']} created in the table by {SQL_ACCOUNT}": (
            crm.get(from_list["email"]) or {}
        ).get("by")
        == SQL_ACCOUNT,
        f"same number of contacts on both sides ({crm.count()}, {sharepoint.count()})": (
            crm.count() == sharepoint.count() == len(shared) + len(crm_only) + len(list_only) + 1
        ),
        "third run wrote nothing": all(
            c["created"] + c["updated"] + c["deleted"] == 0
            for c in third.get("systems", {}).values()
        ),
    }
    print()
    for label, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {label}")
    print(
        f"\nThe definition stays in {definition}; the simulator stops with the demo.\n"
        f"Against a real tenant: set graph_url/token_url, and keep the client id and secret "
        f"in a saved block (`block:`)."
    )
    return 0 if all(checks.values()) else 1
