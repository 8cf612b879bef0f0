"""Two-way sync of a real Directus 10 collection and a SQLite table: the scenario the SQL
syncs pass (first sync links by match_on, merges, conflicts by policy, deletes, no echo),
with the definition naming only the Directus ``url``, ``collection`` and ``token``."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from tests.contract.rig_directus import DirectusPerson
from tests.directus_server import DirectusServer, shared_server
from tests.sqlrig import SqlPerson, fresh_table, server_url
from twoway.definition import load_definition
from twoway.engine import RunReport, Runtime, run_sync

FIELDS = ("email", "first_name", "last_name", "phone")
TOKEN_VARIABLE = "TWOWAY_TEST_DIRECTUS_TOKEN"


def writes(report: RunReport) -> int:
    return sum(c["created"] + c["updated"] + c["deleted"] for c in report.systems.values())


class DirectusSqlRig:
    """System ``cms`` (a fresh Directus collection) and ``db`` (a SQLite table)."""

    def __init__(self, server: DirectusServer, tmp_path: Path, engine, table, **options: Any):
        self.server = server
        self.collection = server.create_collection(list(FIELDS))
        self.engine, self.table = engine, table
        self.cms_person = DirectusPerson(server, self.collection, server.person)
        self.db_person = SqlPerson(engine, table, "id", "updated_at", "updated_by", name="dba")
        doc: dict[str, Any] = {
            "name": f"d{uuid.uuid4().hex[:8]}",
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "systems": {
                "cms": {
                    "kind": "directus",
                    "url": server.url,
                    "collection": self.collection,
                    "token": "${" + TOKEN_VARIABLE + "}",
                    "overlap_seconds": 5,
                },
                "db": {
                    "kind": "sql",
                    "url": engine.url.render_as_string(hide_password=False),
                    "table": str(table.name),
                    "key": "id",
                    "modified_at": "updated_at",
                    "modified_by": "updated_by",
                    "integration_account": "svc-sync",
                    "overlap_seconds": 5,
                },
            },
            "fields": {f: {"cms": f, "db": f} for f in FIELDS},
            "match_on": ["email"],
            **options,
        }
        self.path = tmp_path / "sync.yaml"
        self.path.write_text(yaml.safe_dump(doc))

    def run(self, **kwargs: Any) -> RunReport:
        return run_sync(load_definition(self.path), Runtime(), **kwargs)

    def activity(self) -> int:
        """How many writes Directus itself logged for the collection (counted at the server)."""
        meta = self.server.api(
            "GET",
            "/activity",
            params={
                "filter[collection][_eq]": self.collection,
                "aggregate[count]": "id",
            },
        )
        return int(meta[0]["count"]["id"])

    # people editing each side -----------------------------------------------------------

    def add(self, system: str, email: str, first: str = "Ann", last: str = "Lee", phone=None):
        values = {"email": email, "first_name": first, "last_name": last, "phone": phone}
        return (self.cms_person if system == "cms" else self.db_person).create(values)

    def edit(self, system: str, email: str, **values: Any) -> None:
        person = self.cms_person if system == "cms" else self.db_person
        person.update(self.row(system, email)["_key"], values)

    def delete(self, system: str, email: str) -> None:
        person = self.cms_person if system == "cms" else self.db_person
        person.delete(self.row(system, email)["_key"])

    # what each side holds ---------------------------------------------------------------

    def rows(self, system: str) -> list[dict[str, Any]]:
        if system == "cms":
            items = self.server.api(
                "GET", f"/items/{self.collection}", params={"limit": "-1", "sort": "id"}
            )
            out = [
                {f: i[f] for f in FIELDS} | {"_key": str(i["id"]), "_by": i["user_updated"]}
                for i in items
            ]
        else:
            with self.engine.connect() as conn:
                found = conn.execute(sa.select(self.table)).mappings().all()
            out = [
                {f: r[f] for f in FIELDS} | {"_key": str(r["id"]), "_by": r["updated_by"]}
                for r in found
            ]
        return sorted(out, key=lambda r: (r["email"] or "", r["_key"]))

    def row(self, system: str, email: str) -> dict[str, Any] | None:
        found = [r for r in self.rows(system) if r["email"] == email]
        assert len(found) <= 1, f"duplicate {email} in {system}: {found}"
        return found[0] if found else None

    def data(self, system: str) -> list[tuple]:
        return [tuple(r[f] for f in FIELDS) for r in self.rows(system)]


@pytest.fixture
def directus():
    return shared_server()


@contextmanager
def rig_for(server: DirectusServer, tmp_path: Path, monkeypatch, **options: Any):
    monkeypatch.setenv(TOKEN_VARIABLE, server.sync_user.token)
    with fresh_table(server_url("sqlite", tmp_path)) as (engine, table):
        rig = DirectusSqlRig(server, tmp_path, engine, table, **options)
        try:
            yield rig
        finally:
            server.drop_collection(rig.collection)


def test_first_sync_links_by_match_on_and_a_second_run_writes_nothing(
    directus, tmp_path, monkeypatch
):
    with rig_for(directus, tmp_path, monkeypatch) as rig:
        rig.add("cms", "both@example.com", "Ann", "Lee", "111")
        rig.add("db", "BOTH@example.com ", "Ann", "Lee")
        rig.add("cms", "cms-only@example.com", "Bo", "Cms", "222")
        rig.add("db", "db-only@example.com", "Cy", "Db")
        report = rig.run()
        assert report.status == "completed", report
        assert report.systems["cms"]["created"] == 1 and report.systems["db"]["created"] == 1
        for system in ("cms", "db"):
            emails = [r["email"].strip().lower() for r in rig.rows(system)]
            assert emails == ["both@example.com", "cms-only@example.com", "db-only@example.com"]
        assert rig.data("cms") == rig.data("db")
        assert rig.row("db", "cms-only@example.com")["phone"] == "222"
        assert rig.row("db", "cms-only@example.com")["_by"] == "svc-sync"
        assert rig.row("db", "BOTH@example.com ")["phone"] == "111"  # merged into db's record
        logged = rig.activity()
        second = rig.run()
        assert writes(second) == 0
        assert second.systems["cms"]["echo_skipped"] >= 1  # our create came back, skipped
        assert rig.activity() == logged, "a run after a run wrote to Directus"
        assert writes(rig.run()) == 0 and rig.activity() == logged


def test_field_changes_merge_and_conflicts_follow_last_writer(directus, tmp_path, monkeypatch):
    with rig_for(directus, tmp_path, monkeypatch) as rig:
        rig.add("cms", "m@example.com", "Max", "Muster", "1")
        rig.run()
        rig.edit("cms", "m@example.com", first_name="Maxi")
        rig.edit("db", "m@example.com", last_name="Mustermann")
        report = rig.run()
        assert report.conflicts == 0
        for system in ("cms", "db"):
            row = rig.row(system, "m@example.com")
            assert (row["first_name"], row["last_name"]) == ("Maxi", "Mustermann")
        rig.edit("db", "m@example.com", first_name="Early")
        rig.edit("cms", "m@example.com", first_name="Late")  # edited last: wins
        report = rig.run()
        assert report.conflicts == 1
        assert rig.row("db", "m@example.com")["first_name"] == "Late"
        assert rig.row("cms", "m@example.com")["first_name"] == "Late"
        assert writes(rig.run()) == 0


def test_prefer_policy_and_manual_hold(directus, tmp_path, monkeypatch):
    with rig_for(directus, tmp_path, monkeypatch, conflicts="prefer cms") as rig:
        rig.add("db", "p@example.com", "A", "B")
        rig.run()
        rig.edit("cms", "p@example.com", first_name="FromCms")
        rig.edit("db", "p@example.com", first_name="FromDb")
        rig.run()
        assert rig.row("db", "p@example.com")["first_name"] == "FromCms"
    (tmp_path / "m").mkdir()
    with rig_for(directus, tmp_path / "m", monkeypatch, conflicts="manual") as rig:
        rig.add("db", "q@example.com", "A", "B")
        rig.run()
        rig.edit("cms", "q@example.com", first_name="One", last_name="Merged")
        rig.edit("db", "q@example.com", first_name="Two")
        report = rig.run()
        assert report.conflicts == 1
        assert rig.row("db", "q@example.com")["first_name"] == "Two"  # held: nobody overwritten
        assert rig.row("cms", "q@example.com")["first_name"] == "One"
        assert rig.row("db", "q@example.com")["last_name"] == "Merged"
        again = rig.run()
        assert again.conflicts == 0 and writes(again) == 0


def test_deletes_propagate_both_ways_and_never_come_back(directus, tmp_path, monkeypatch):
    with rig_for(directus, tmp_path, monkeypatch) as rig:
        for email in ("gone-cms@example.com", "gone-db@example.com", "keep@example.com"):
            rig.add("cms", email)
        rig.run()
        rig.delete("cms", "gone-cms@example.com")  # learnt from Directus's activity log
        rig.delete("db", "gone-db@example.com")
        report = rig.run()
        assert report.systems["db"]["deleted"] == 1 and report.systems["cms"]["deleted"] == 1
        assert [r["email"] for r in rig.rows("cms")] == ["keep@example.com"]
        assert [r["email"] for r in rig.rows("db")] == ["keep@example.com"]
        assert writes(rig.run()) == 0


def test_an_edit_made_with_the_integration_token_is_a_real_change(directus, tmp_path, monkeypatch):
    with rig_for(directus, tmp_path, monkeypatch) as rig:
        rig.add("db", "lu@example.com", "Lost", "Update")
        rig.run()
        key = rig.row("cms", "lu@example.com")["_key"]
        # someone using the integration user's token edits after our write
        directus.api(
            "PATCH",
            f"/items/{rig.collection}/{key}",
            directus.sync_user.token,
            json={"first_name": "Kept"},
        )
        report = rig.run()
        assert report.systems["db"]["updated"] == 1
        assert rig.row("db", "lu@example.com")["first_name"] == "Kept"
        assert writes(rig.run()) == 0


def test_a_record_edited_in_directus_after_the_read_is_not_overwritten(
    directus, tmp_path, monkeypatch
):
    """The guarded update matches no row when date_updated moved since the read: the write
    is deferred, and the next run merges the person's edit instead of losing it."""
    from blocks.directus import DirectusCollection

    with rig_for(directus, tmp_path, monkeypatch) as rig:
        rig.add("cms", "race@example.com", "Ra", "Ce")
        rig.run()
        rig.edit("db", "race@example.com", first_name="FromDb")
        write = DirectusCollection.write

        def edit_first(self, ops):
            rig.edit("cms", "race@example.com", last_name="FromCms")
            return write(self, ops)

        monkeypatch.setattr(DirectusCollection, "write", edit_first)
        report = rig.run()
        monkeypatch.setattr(DirectusCollection, "write", write)
        assert report.systems["cms"]["deferred"] == 1
        assert rig.row("cms", "race@example.com")["first_name"] == "Ra"
        rig.run()
        for system in ("cms", "db"):
            row = rig.row(system, "race@example.com")
            assert (row["first_name"], row["last_name"]) == ("FromDb", "FromCms")
        assert writes(rig.run()) == 0


def test_a_wrong_token_stops_with_a_clear_error_that_never_shows_it(directus):
    from blocks.directus import DirectusCollection
    from twoway.errors import Fatal

    endpoint = DirectusCollection(
        url=directus.url, collection="anything", token="not-the-token-0123456789"
    )
    with pytest.raises(Fatal, match=r"authentication refused \(401\)") as info:
        endpoint.columns()
    assert "not-the-token" not in str(info.value)
    endpoint.close()


def test_a_collection_without_accountability_fields_is_read_whole_and_written_unguarded(
    directus,
):
    """Without date_updated and user_updated every read is full, deletions are found by
    keys, and records carry no modifier (none to tell echoes by: values decide)."""
    from tests.contract.rig_directus import directus_endpoint
    from twoway.contract import Create, Update

    collection = directus.create_collection(["email"], accountability=False)
    try:
        endpoint = directus_endpoint(directus, collection, columns_to_sync=["email"], page_size=2)
        made = endpoint.write(
            [Create(ref=str(n), values={"email": f"{n}@x.org"}) for n in range(3)]
        )
        assert [r.ok for r in made] == [True] * 3
        page = endpoint.read_changes(None)
        assert page.full and {r.modified_by for r in page.records} == {None}
        again = endpoint.read_changes(page.cursor)
        assert again.full and len(again.records) == 3
        assert endpoint.list_keys() == {r.key for r in made}
        (updated,) = endpoint.write(
            [Update(key=made[0].key, values={"email": "new@x.org"}, version=made[0].version)]
        )
        assert updated.ok and endpoint.read([made[0].key])[0].values == {"email": "new@x.org"}
        endpoint.close()
    finally:
        directus.drop_collection(collection)


def test_one_refused_item_of_a_batch_does_not_refuse_the_others(directus):
    """Directus applies an array of items in one transaction: the endpoint sends each alone
    to find the refused one, and a shared update with one stale version updates the rest."""
    from tests.contract.rig_directus import DirectusPerson, directus_endpoint
    from twoway.contract import Create, Update
    from twoway.errors import PreconditionFailed, Skippable

    collection = directus.create_collection(["email"])
    try:
        endpoint = directus_endpoint(directus, collection, columns_to_sync=["email"])
        made = endpoint.write(
            [Create(ref=str(n), values={"email": e}) for n, e in enumerate(["a", "x" * 300, "c"])]
        )
        assert [r.ok for r in made] == [True, False, True]
        assert isinstance(made[1].error, Skippable) and "too long" in str(made[1].error)
        assert [r.values for r in endpoint.read([made[0].key, made[2].key])] == [
            {"email": "a"},
            {"email": "c"},
        ]
        DirectusPerson(directus, collection, directus.person).update(made[2].key, {"email": "C"})
        both = endpoint.write(
            [
                Update(key=r.key, values={"email": "same"}, version=r.version)
                for r in (made[0], made[2])
            ]
        )
        assert both[0].ok and isinstance(both[1].error, PreconditionFailed)
        assert [r.values["email"] for r in endpoint.read([made[0].key, made[2].key])] == [
            "same",
            "C",
        ]
        endpoint.close()
    finally:
        directus.drop_collection(collection)


def test_an_error_after_creates_were_applied_comes_back_per_operation(directus, monkeypatch):
    """A refused update must not hide the creates of the same batch that Directus applied:
    their keys come back, the operations not done carry the error."""
    from blocks.directus import DirectusCollection
    from blocks.replies import Reply
    from tests.contract.rig_directus import directus_endpoint
    from twoway.contract import Create, Update
    from twoway.errors import Fatal

    collection = directus.create_collection(["email"])
    send = DirectusCollection._send

    def no_updates(self, method, path, params=None, body=None):
        if method == "PATCH":
            return Reply(403, {}, {"errors": [{"message": "You don't have permission"}]})
        return send(self, method, path, params, body)

    try:
        endpoint = directus_endpoint(directus, collection, columns_to_sync=["email"])
        (first,) = endpoint.write([Create(ref="0", values={"email": "old"})])
        monkeypatch.setattr(DirectusCollection, "_send", no_updates)
        results = endpoint.write(
            [
                Create(ref="1", values={"email": "new"}),
                Update(key=first.key, values={"email": "changed"}, version=first.version),
            ]
        )
        assert results[0].ok and results[0].key
        assert isinstance(results[1].error, Fatal) and "403" in str(results[1].error)
        assert {r.values["email"] for r in endpoint.read([first.key, results[0].key])} == {
            "old",
            "new",
        }
        endpoint.close()
    finally:
        directus.drop_collection(collection)
