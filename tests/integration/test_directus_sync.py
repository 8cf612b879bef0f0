"""A real Directus 10 collection kept in step with SQLite tables: what only Directus has
(its activity log, the token's user, date_updated as the version, batches applied in one
transaction). The scenarios every SQL sync passes run on Directus too: test_sql_sync.py
with the backend ``directus``."""

from __future__ import annotations

import uuid

import httpx
import pytest

from blocks.directus import DirectusCollection
from tests.contract.rig_directus import DirectusPerson, directus_endpoint
from tests.syncrig import sync_rig
from twoway.contract import Create, Update
from twoway.errors import Fatal, PreconditionFailed, Skippable
from twoway.report import RunReport


def writes(report: RunReport) -> int:
    return sum(c["created"] + c["updated"] + c["deleted"] for c in report.systems.values())


def logged(rig) -> int:
    """How many changes Directus itself logged for the collection (counted at the server)."""
    server, collection = rig.directus["s0"]
    found = server.api(
        "GET",
        "/activity",
        params={"filter[collection][_eq]": collection, "aggregate[count]": "id"},
    )
    return int(found[0]["count"]["id"])


def test_a_run_after_a_run_writes_nothing_to_directus_by_its_own_activity_log(tmp_path):
    with sync_rig(tmp_path, "directus") as rig:
        rig.add("s0", "both@example.com", "Ann", "Lee", "111")
        rig.add("s1", "both@example.com", "Ann", "Lee")
        rig.add("s0", "cms-only@example.com", "Bo", "Cms")
        rig.add("s1", "db-only@example.com", "Cy", "Db")
        first = rig.run()
        assert first.systems["s0"]["created"] == 1 and first.systems["s1"]["created"] == 1
        assert rig.row("s0", "db-only@example.com")["_by"] == "svc-sync"
        before = logged(rig)
        second = rig.run()
        assert writes(second) == 0 and second.systems["s0"]["echo_skipped"] >= 1
        assert writes(rig.run()) == 0
        assert logged(rig) == before, "a run after a run wrote to Directus"


def test_an_edit_made_with_the_integration_token_is_a_real_change(directus, tmp_path):
    with sync_rig(tmp_path, "directus") as rig:
        rig.add("s1", "lu@example.com", "Lost", "Update")
        rig.run()
        _, collection = rig.directus["s0"]
        key = rig.key_of("s0", "lu@example.com")
        # someone using the integration user's token edits after our write
        directus.api(
            "PATCH",
            f"/items/{collection}/{key}",
            directus.sync_user.token,
            json={"first_name": "Kept"},
        )
        report = rig.run()
        assert report.systems["s1"]["updated"] == 1
        assert rig.row("s1", "lu@example.com")["first_name"] == "Kept"
        assert writes(rig.run()) == 0


def test_a_record_edited_in_directus_after_the_read_is_not_overwritten(tmp_path, monkeypatch):
    """The guarded update matches no row when date_updated moved since the read: the write
    is deferred, and the next run merges the person's edit instead of losing it."""

    with sync_rig(tmp_path, "directus") as rig:
        rig.add("s0", "race@example.com", "Ra", "Ce")
        rig.run()
        rig.edit("s1", "race@example.com", first_name="FromDb")
        write = DirectusCollection.write

        def edit_first(self, ops):
            rig.edit("s0", "race@example.com", last_name="FromCms")
            return write(self, ops)

        monkeypatch.setattr(DirectusCollection, "write", edit_first)
        report = rig.run()
        monkeypatch.setattr(DirectusCollection, "write", write)
        assert report.systems["s0"]["deferred"] == 1
        assert rig.row("s0", "race@example.com")["first_name"] == "Ra"
        rig.run()
        for system in ("s0", "s1"):
            row = rig.row(system, "race@example.com")
            assert (row["first_name"], row["last_name"]) == ("FromDb", "FromCms")
        assert writes(rig.run()) == 0


def test_a_wrong_token_stops_with_a_clear_error_that_never_shows_it(directus):

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


class RefusedUpdates(httpx.HTTPTransport):
    """Directus as seen by a token that may create but not update: every PATCH gets 403."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            body = {"errors": [{"message": "You don't have permission", "extensions": {}}]}
            return httpx.Response(403, json=body)
        return super().handle_request(request)


def test_an_error_after_creates_were_applied_comes_back_per_operation(directus):
    """A refused update must not hide the creates of the same batch that Directus applied:
    their keys come back, the operations not done carry the error."""

    collection = directus.create_collection(["email"])
    try:
        endpoint = directus_endpoint(directus, collection, columns_to_sync=["email"])
        (first,) = endpoint.write([Create(ref="0", values={"email": "old"})])
        endpoint.use_transport(RefusedUpdates())
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


def test_a_uuid_keyed_collection_creates_one_by_one_and_reads_many_keys(directus):
    """Directus lists created items by key, which is no creation order for UUIDs: each
    create is sent alone. Reading many keys stays within Node's 16 KB request line."""
    collection = directus.create_collection(["email"], uuid_key=True)
    try:
        endpoint = directus_endpoint(directus, collection, columns_to_sync=["email"])
        emails = [f"u{n}@example.com" for n in range(5)]
        made = endpoint.write(
            [Create(ref=str(n), values={"email": e}) for n, e in enumerate(emails)]
        )
        assert [r.ok for r in made] == [True] * 5
        by_key = {r.key: r.values["email"] for r in endpoint.read([r.key for r in made])}
        assert [by_key[r.key] for r in made] == emails
        unknown = [str(uuid.uuid4()) for _ in range(600)]
        assert {r.key for r in endpoint.read(unknown + [made[0].key])} == {made[0].key}
        endpoint.close()
    finally:
        directus.drop_collection(collection)


def test_a_collection_that_is_not_there_is_named_in_the_error(directus):
    """Directus answers 403 for a collection that does not exist: the error says both."""
    endpoint = directus_endpoint(directus, "no_such_collection", columns_to_sync=["email"])
    with pytest.raises(Fatal, match="'no_such_collection' does not exist, or the token's user"):
        endpoint.columns()
    endpoint.close()
