"""``twoway demo``: two SQLite databases of contacts kept in step by the two-way flow.

It creates a CRM and a portal database with different column names and a few hundred
contacts (a third of them on both sides), syncs them, plays people editing both sides
(two merging edits, a conflict, a delete, a new contact), syncs again, shows what
happened, and runs once more to show that nothing echoes back.
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


def run_demo(folder: Path, records: int = 300, seed: int = 7) -> int:
    """Build the demo, run it, print what happened; 0 when every expectation held."""
    from twoway.cli import run_flow

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
