"""The Salesforce simulator speaks the REST API: a mainstream client (simple_salesforce) for
the basic calls, raw HTTP for collections, upsert, replication, errors, limits and faults."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceResourceNotFound

from twoway import sfid
from twoway.simulators.faults import FaultPlan
from twoway.simulators.salesforce import SalesforceState, create_app
from twoway.simulators.server import BackgroundServer
from twoway.values import parse_timestamp

V = "/services/data/v60.0"


class _PlainHttp(HTTPAdapter):
    """simple_salesforce always builds https:// URLs; the simulator serves plain HTTP."""

    def send(self, request, **kwargs):
        request.url = request.url.replace("https://", "http://", 1)
        return super().send(request, **kwargs)


@pytest.fixture
def org():
    state = SalesforceState()
    state.add_client("sync", "sync-secret", "Integration User")
    state.add_client("alice", "alice-secret", "Alice")
    state.define(
        "Invoice__c",
        {
            "Number__c": {"type": "string", "length": 20, "externalId": True},
            "Amount__c": {"type": "currency"},
        },
    )
    with BackgroundServer(create_app(state)) as server:
        yield state, server.url


def _token(url: str, client: str = "sync", secret: str = "sync-secret") -> dict:
    reply = httpx.post(
        f"{url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": client, "client_secret": secret},
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture
def api(org):
    state, url = org
    token = _token(url)
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token['access_token']}"}
    ) as client:
        yield state, client, token


def _simple(url: str, token: str) -> Salesforce:
    session = requests.Session()
    session.mount("https://127.0.0.1", _PlainHttp())
    return Salesforce(instance_url=url, session_id=token, session=session, version="60.0")


def test_simple_salesforce_crud_and_query_paging(org):
    state, url = org
    sf = _simple(url, _token(url)["access_token"])
    created = sf.Contact.create({"FirstName": "Ann", "LastName": "Lee", "Email": "ann@example.com"})
    assert created["success"] and len(created["id"]) == 18 and created["id"].startswith("003")
    got = sf.Contact.get(created["id"][:15])  # 15-character ids are accepted
    assert got["Id"] == created["id"] and got["Name"] == "Ann Lee"
    assert got["attributes"]["type"] == "Contact"
    assert sf.Contact.update(created["id"], {"Phone": "555"}) == 204
    assert sf.Contact.get(created["id"])["Phone"] == "555"
    for i in range(4):
        sf.Contact.create({"LastName": f"Page{i}"})
    sf.headers["Sforce-Query-Options"] = "batchSize=2"
    first = sf.query("SELECT Id, LastName FROM Contact ORDER BY LastName")
    assert first["totalSize"] == 5 and not first["done"] and len(first["records"]) == 2
    assert first["nextRecordsUrl"].startswith(f"{V}/query/0r8")
    everything = sf.query_all(
        "SELECT Id, LastName FROM Contact WHERE LastName LIKE 'Page%' ORDER BY LastName"
    )
    assert [r["LastName"] for r in everything["records"]] == ["Page0", "Page1", "Page2", "Page3"]
    assert sf.Contact.delete(created["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.get(created["id"])
    deleted = sf.query_all(
        f"SELECT Id, IsDeleted FROM Contact WHERE Id = '{created['id']}'", include_deleted=True
    )
    assert deleted["records"][0]["IsDeleted"] is True
    with pytest.raises(SalesforceMalformedRequest):
        sf.query("SELECT Id FROM Contact WHERE")
    assert sf.api_usage["api-usage"].total == 15000


def test_token_identity_and_auth_errors(org):
    state, url = org
    token = _token(url)
    assert token["token_type"] == "Bearer" and token["instance_url"] == url
    org_id, user_id = token["id"].rsplit("/", 2)[-2:]
    assert org_id == state.org_id and user_id == state.user_id("Integration User")
    assert sfid.is_valid(user_id) and user_id.startswith("005")
    assert {"issued_at", "signature"} <= set(token)
    identity = httpx.get(
        token["id"], headers={"Authorization": f"Bearer {token['access_token']}"}
    ).json()
    assert identity["user_id"] == user_id
    bad = httpx.post(
        f"{url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "sync", "client_secret": "wrong"},
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_client"
    state.expire_sessions()
    expired = httpx.get(
        f"{url}{V}/sobjects", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert expired.status_code == 401
    assert expired.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]


def test_errors_have_salesforce_shapes_and_limits_header(api):
    state, client, _ = api
    missing = client.post(f"{V}/sobjects/Contact", json={"FirstName": "NoLast"})
    assert missing.status_code == 400
    assert missing.json() == [
        {
            "message": "Required fields are missing: [LastName]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["LastName"],
        }
    ]
    assert missing.headers["Sforce-Limit-Info"].startswith("api-usage=")
    unknown = client.post(f"{V}/sobjects/Contact", json={"LastName": "X", "Shoe__c": 1})
    assert unknown.json()[0]["errorCode"] == "INVALID_FIELD"
    long = client.post(f"{V}/sobjects/Contact", json={"LastName": "x" * 81})
    assert long.json()[0]["errorCode"] == "STRING_TOO_LONG"
    assert (
        client.get(f"{V}/query", params={"q": "SELECT Bogus FROM Contact"}).json()[0]["errorCode"]
        == "INVALID_FIELD"
    )
    assert (
        client.get(f"{V}/query", params={"q": "SELECT Id FROM Nope__c"}).json()[0]["errorCode"]
        == "INVALID_TYPE"
    )
    assert client.get(f"{V}/sobjects/Contact/003000000000000AAA").status_code == 404
    assert (
        client.get(f"{V}/sobjects/Contact/003000000000000AAA").json()[0]["errorCode"] == "NOT_FOUND"
    )
    usage = [
        int(client.get(f"{V}/sobjects").headers["Sforce-Limit-Info"].split("=")[1].split("/")[0])
        for _ in range(2)
    ]
    assert usage[1] == usage[0] + 1 and state.api_usage == usage[1]


def test_query_filters_by_datetime_and_id(api):
    state, client, _ = api
    a = state.user_create("Contact", {"LastName": "Old"})
    (a_stamp,) = [r["SystemModstamp"] for r in state.records("Contact") if r["Id"] == a]
    mark = parse_timestamp(a_stamp) + timedelta(milliseconds=1)
    time.sleep(0.005)  # stamps are the clock's milliseconds: b's comes a few later
    b = state.user_create("Contact", {"LastName": "New"})
    stamp = mark.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    q = f"SELECT Id, SystemModstamp, LastModifiedById FROM Contact WHERE SystemModstamp >= {stamp}"
    records = client.get(f"{V}/query", params={"q": q}).json()["records"]
    assert [r["Id"] for r in records] == [b]
    assert records[0]["LastModifiedById"] == state.user_id("Alice")
    by_id = client.get(
        f"{V}/query",
        params={"q": f"SELECT Id FROM Contact WHERE Id IN ('{a[:15]}', '{b}') ORDER BY Id"},
    )
    assert [r["Id"] for r in by_id.json()["records"]] == sorted([a, b])
    quoted = client.get(
        f"{V}/query", params={"q": "SELECT Id FROM Contact WHERE SystemModstamp > '2024-01-01'"}
    )
    assert quoted.status_code == 400 and quoted.json()[0]["errorCode"] == "INVALID_FIELD"


def test_collections_create_update_get_delete_and_all_or_none(api):
    state, client, _ = api
    records = [{"attributes": {"type": "Contact"}, "LastName": f"C{i}"} for i in range(3)]
    records[1] = {"attributes": {"type": "Contact"}, "FirstName": "no last name"}
    partial = client.post(f"{V}/composite/sobjects", json={"allOrNone": False, "records": records})
    assert partial.status_code == 200
    results = partial.json()
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    before = len(state.records("Contact"))
    atomic = client.post(f"{V}/composite/sobjects", json={"allOrNone": True, "records": records})
    assert [r["success"] for r in atomic.json()] == [False, False, False]
    assert atomic.json()[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert len(state.records("Contact")) == before
    ids = [results[0]["id"], results[2]["id"]]
    update = client.patch(
        f"{V}/composite/sobjects",
        json={
            "records": [
                {"attributes": {"type": "Contact"}, "id": ids[0], "Title": "Boss"},
                {"attributes": {"type": "Contact"}, "id": "003000000000099AAA", "Title": "Ghost"},
            ]
        },
    )
    assert [r["success"] for r in update.json()] == [True, False]
    got = client.get(
        f"{V}/composite/sobjects/Contact",
        params={"ids": ",".join(ids + ["003000000000099AAA"]), "fields": "Id,Title"},
    )
    assert [r and r["Title"] for r in got.json()] == ["Boss", None, None]
    too_many = client.post(
        f"{V}/composite/sobjects",
        json={"records": [{"attributes": {"type": "Contact"}, "LastName": "x"}] * 201},
    )
    assert too_many.status_code == 400 and too_many.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    gone = client.delete(
        f"{V}/composite/sobjects", params={"ids": ",".join(ids), "allOrNone": "false"}
    )
    assert [r["success"] for r in gone.json()] == [True, True]
    again = client.delete(f"{V}/composite/sobjects", params={"ids": ids[0]})
    assert again.json()[0]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"


def test_collections_retrieve_by_post_takes_ids_and_fields_in_the_body(api):
    """The POST form of the collection retrieve answers as the GET form does (for id lists
    too long for a URL), null for unknown ids, 400 when the body lacks ids or fields."""
    _, client, _ = api
    records = [{"attributes": {"type": "Contact"}, "LastName": f"P{i}"} for i in range(3)]
    created = client.post(f"{V}/composite/sobjects", json={"records": records}).json()
    ids = [r["id"] for r in created] + ["003000000000099AAA"]
    by_post = client.post(
        f"{V}/composite/sobjects/Contact", json={"ids": ids, "fields": ["Id", "LastName"]}
    )
    by_get = client.get(
        f"{V}/composite/sobjects/Contact", params={"ids": ",".join(ids), "fields": "Id,LastName"}
    )
    assert by_post.status_code == 200
    assert by_post.json() == by_get.json()
    assert [r and r["LastName"] for r in by_post.json()] == ["P0", "P1", "P2", None]
    no_fields = client.post(f"{V}/composite/sobjects/Contact", json={"ids": ids})
    assert no_fields.status_code == 400
    too_many = client.post(
        f"{V}/composite/sobjects/Contact", json={"ids": [ids[0]] * 2001, "fields": ["Id"]}
    )
    assert too_many.status_code == 400 and too_many.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


def test_upsert_by_external_id(api):
    state, client, _ = api
    path = f"{V}/sobjects/Invoice__c/Number__c/INV-1"
    created = client.patch(path, json={"Name": "First", "Amount__c": 10})
    assert created.status_code == 201 and created.json()["created"] is True
    assert created.json()["id"].startswith("a00")
    updated = client.patch(path, json={"Amount__c": 12.5})
    assert updated.status_code == 200 and updated.json()["created"] is False
    assert client.get(f"{V}/sobjects/Invoice__c/{created.json()['id']}").json()["Amount__c"] == 12.5
    assert (
        client.patch(f"{V}/sobjects/Invoice__c/Name/First", json={}).status_code == 404
    )  # not an external id
    coll = client.patch(
        f"{V}/composite/sobjects/Invoice__c/Number__c",
        json={
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Invoice__c"}, "Number__c": "INV-1", "Amount__c": 1},
                {"attributes": {"type": "Invoice__c"}, "Number__c": "INV-2", "Amount__c": 2},
            ],
        },
    )
    assert [(r["success"], r["created"]) for r in coll.json()] == [(True, False), (True, True)]
    state.user_create("Invoice__c", {"Number__c": "DUP"})
    state.user_create("Invoice__c", {"Number__c": "dup"})
    assert client.patch(f"{V}/sobjects/Invoice__c/Number__c/DUP", json={}).status_code == 300
    describe = client.get(f"{V}/sobjects/Invoice__c/describe").json()
    number = next(f for f in describe["fields"] if f["name"] == "Number__c")
    assert number["externalId"] and number["length"] == 20 and number["updateable"]
    assert describe["keyPrefix"] == "a00"


def test_if_unmodified_since(api):
    state, client, _ = api
    rid = state.user_create("Contact", {"LastName": "Cond"})
    past = "Mon, 01 Jan 2024 00:00:00 GMT"
    refused = client.patch(
        f"{V}/sobjects/Contact/{rid}", json={"Title": "x"}, headers={"If-Unmodified-Since": past}
    )
    assert refused.status_code == 412
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    ok = client.patch(
        f"{V}/sobjects/Contact/{rid}", json={"Title": "x"}, headers={"If-Unmodified-Since": future}
    )
    assert ok.status_code == 204
    bad = client.patch(
        f"{V}/sobjects/Contact/{rid}", json={"Title": "x"}, headers={"If-Unmodified-Since": "soon"}
    )
    assert bad.status_code == 400


def test_updated_and_deleted(api):
    state, client, _ = api
    start = (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds")
    keep = state.user_create("Contact", {"LastName": "Keep"})
    drop = state.user_create("Contact", {"LastName": "Drop"})
    state.user_delete("Contact", drop)
    end = (datetime.now(UTC) + timedelta(minutes=1)).isoformat(timespec="seconds")
    updated = client.get(
        f"{V}/sobjects/Contact/updated/", params={"start": start, "end": end}
    ).json()
    assert keep in updated["ids"] and drop not in updated["ids"]
    deleted = client.get(
        f"{V}/sobjects/Contact/deleted/", params={"start": start, "end": end}
    ).json()
    assert [d["id"] for d in deleted["deletedRecords"]] == [drop]
    assert deleted["deletedRecords"][0]["deletedDate"].endswith("+0000")
    assert {"earliestDateAvailable", "latestDateCovered"} <= set(deleted)
    backwards = client.get(f"{V}/sobjects/Contact/deleted/", params={"start": end, "end": start})
    assert backwards.status_code == 400


def test_get_deleted_reaches_back_15_days_and_not_past_a_purge(api):
    state, client, _ = api
    now = datetime.now(UTC)
    end = (now + timedelta(minutes=1)).isoformat(timespec="seconds")
    days16 = (now - timedelta(days=16)).isoformat(timespec="seconds")
    path = f"{V}/sobjects/Contact/%s/"
    assert client.get(path % "updated", params={"start": days16, "end": end}).status_code == 200
    too_old = client.get(path % "deleted", params={"start": days16, "end": end})
    assert too_old.status_code == 400
    assert too_old.json()[0]["errorCode"] == "INVALID_REPLICATION_DATE"

    start = (now - timedelta(minutes=1)).isoformat(timespec="seconds")
    first = state.user_create("Contact", {"LastName": "First"})
    state.user_delete("Contact", first)
    assert state.purge_deleted("Contact") == 1  # the Recycle Bin is emptied
    purged = client.get(path % "deleted", params={"start": start, "end": end})
    assert purged.status_code == 400
    assert purged.json()[0]["errorCode"] == "INVALID_REPLICATION_DATE"
    later = client.get(path % "deleted", params={"start": end, "end": end}).json()
    assert later["deletedRecords"] == []
    assert later["earliestDateAvailable"].startswith(now.strftime("%Y-%m-%dT"))


def test_replication_windows_past_the_id_limit_are_refused():
    # the org's own clock, moved by the test: every stamp lies inside the window asked for,
    # however fast or slow the machine runs
    now = [datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)]

    def tick() -> None:
        now[0] += timedelta(seconds=1)

    state = SalesforceState(clock=lambda: now[0])
    state.add_client("sync", "sync-secret", "Integration User")
    state.id_limit = 2
    start = now[0].isoformat(timespec="seconds")
    keys = []
    for i in range(3):
        tick()
        keys.append(state.user_create("Contact", {"LastName": f"L{i}"}))
    for key in keys:
        tick()
        state.user_delete("Contact", key)
    for name in ("Keep", "More", "More"):  # three live records changed in the window too
        tick()
        state.user_create("Contact", {"LastName": name})
    end = (now[0] + timedelta(minutes=1)).isoformat(timespec="seconds")
    now[0] += timedelta(minutes=2)  # the server's clock is past the window's end
    with BackgroundServer(create_app(state)) as server:
        token = _token(server.url)["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers) as client:
            for kind in ("deleted", "updated"):
                reply = client.get(
                    f"{V}/sobjects/Contact/{kind}/", params={"start": start, "end": end}
                )
                assert reply.status_code == 400, (kind, reply.text)
                assert reply.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


def test_query_locators_last_two_days_and_are_not_capped():
    now = [datetime.now(UTC)]
    state = SalesforceState(clock=lambda: now[0])
    state.add_client("sync", "sync-secret", "Integration User")
    for i in range(201):
        state.user_create("Contact", {"LastName": f"Q{i}"})
    with BackgroundServer(create_app(state)) as server:

        def client() -> httpx.Client:
            token = _token(server.url)["access_token"]
            headers = {"Authorization": f"Bearer {token}", "Sforce-Query-Options": "batchSize=200"}
            return httpx.Client(base_url=server.url, headers=headers)

        with client() as http:
            soql = {"q": "SELECT Id FROM Contact"}
            links = [
                http.get(f"{V}/query", params=soql).json()["nextRecordsUrl"] for _ in range(600)
            ]
            locator = links[0].rsplit("/", 1)[1].split("-")[0]
            assert len(locator) == 18 and locator.startswith("0r8")
            assert http.get(links[0]).status_code == 200  # the first of 600 is still open
        now[0] += timedelta(days=2, seconds=1)
        with client() as http:
            lapsed = http.get(links[1])
        assert lapsed.status_code == 400
        assert lapsed.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_second_client_is_another_user(org):
    state, url = org
    alice = _token(url, "alice", "alice-secret")
    headers = {"Authorization": f"Bearer {alice['access_token']}"}
    rid = httpx.post(
        f"{url}{V}/sobjects/Contact", json={"LastName": "Mine"}, headers=headers
    ).json()["id"]
    record = state.records("Contact")[0]
    assert record["Id"] == rid and record["LastModifiedById"] == state.user_id("Alice")
    assert record["CreatedById"] == record["LastModifiedById"] != state.user_id("Integration User")


def test_faults(api):
    state, client, _ = api
    rid = state.user_create("Contact", {"LastName": "Faulty"})
    state.faults.set(throttle=1.0)
    throttled = client.get(f"{V}/sobjects/Contact/{rid}")
    assert (
        throttled.status_code == 403
        and throttled.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    )
    state.faults.set(unavailable=1.0)
    assert client.get(f"{V}/sobjects/Contact/{rid}").status_code == 503
    state.faults.set(lock=1.0)
    locked = client.patch(f"{V}/sobjects/Contact/{rid}", json={"Title": "never"})
    assert locked.status_code == 400 and locked.json()[0]["errorCode"] == "UNABLE_TO_LOCK_ROW"
    coll = client.patch(
        f"{V}/composite/sobjects",
        json={"records": [{"attributes": {"type": "Contact"}, "id": rid, "Title": "maybe"}]},
    )
    assert (
        coll.status_code == 200
        and coll.json()[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    )
    state.faults = FaultPlan(rates={"timeout": 1.0}, timeout_seconds=0.05)
    assert client.get(f"{V}/sobjects/Contact/{rid}").status_code == 504
    state.faults.set()
    assert client.get(f"{V}/sobjects/Contact/{rid}").json()["Title"] is None  # nothing half applied


def test_lost_fault_applies_then_answers_a_timeout(api):
    """``lost``: the write is applied, then the client gets 504 REQUEST_RUNNING_TOO_LONG."""
    state, client, _ = api
    state.faults.set(lost=1.0)
    lost = client.post(f"{V}/sobjects/Contact", json={"LastName": "Applied"})
    assert lost.status_code == 504 and lost.json()[0]["errorCode"] == "REQUEST_RUNNING_TOO_LONG"
    state.faults.set()
    assert [r["LastName"] for r in state.records("Contact")] == ["Applied"]


def test_date_header_is_the_orgs_clock():
    """The Date header comes from the org's clock (a virtual one in tests), and only once."""
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    state = SalesforceState(clock=lambda: when)
    state.add_client("sync", "sync-secret", "Integration User")
    with BackgroundServer(create_app(state)) as server:
        answer = httpx.post(
            f"{server.url}/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "sync",
                "client_secret": "sync-secret",
            },
        )
    assert answer.headers.get_list("date") == ["Tue, 06 May 2031 07:08:09 GMT"]


def test_data_document_and_two_orgs_at_once(tmp_path):
    one, two = SalesforceState(), SalesforceState()
    one.load_data(
        {
            "objects": {
                "Project__c": {
                    "fields": {"Code__c": {"type": "string", "length": 8, "externalId": True}}
                }
            },
            "records": {
                "Project__c": [{"Name": "Alpha", "Code__c": "A1"}],
                "Account": [{"Name": "Acme"}],
            },
        }
    )
    assert one.org_id != two.org_id
    with BackgroundServer(create_app(one)) as s1, BackgroundServer(create_app(two)) as s2:
        one.add_client("c", "s", "Sync")
        two.add_client("c", "s", "Sync")
        t1, t2 = _token(s1.url, "c", "s"), _token(s2.url, "c", "s")
        q = {"q": "SELECT Id, Name FROM Account"}
        r1 = httpx.get(
            f"{s1.url}{V}/query",
            params=q,
            headers={"Authorization": f"Bearer {t1['access_token']}"},
        )
        r2 = httpx.get(
            f"{s2.url}{V}/query",
            params=q,
            headers={"Authorization": f"Bearer {t2['access_token']}"},
        )
        assert r1.json()["totalSize"] == 1 and r2.json()["totalSize"] == 0
        cross = httpx.get(
            f"{s2.url}{V}/query",
            params=q,
            headers={"Authorization": f"Bearer {t1['access_token']}"},
        )
        assert cross.status_code == 401
        projects = httpx.get(
            f"{s1.url}{V}/query",
            params={"q": "SELECT Code__c FROM Project__c"},
            headers={"Authorization": f"Bearer {t1['access_token']}"},
        ).json()
        assert projects["records"][0]["Code__c"] == "A1"


def test_a_long_transaction_holds_latest_date_covered_back(api):
    state, client, _ = api
    key = state.user_create("Contact", {"LastName": "Long"})
    start = (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds")
    state.user_update("Contact", key, {"Title": "Later"}, commit_lag=1.5)
    stamped = state.now()
    end = (datetime.now(UTC) + timedelta(minutes=1)).isoformat(timespec="seconds")
    window = {"start": start, "end": end}
    open_txn = client.get(f"{V}/sobjects/Contact/updated/", params=window).json()
    assert datetime.fromisoformat(open_txn["latestDateCovered"]) < stamped
    hidden = client.get(f"{V}/sobjects/Contact/{key}", params={"fields": "Title"}).json()
    assert hidden["Title"] is None  # not visible while the transaction is open
    time.sleep(1.6)
    seen = client.get(f"{V}/sobjects/Contact/{key}", params={"fields": "Title,SystemModstamp"})
    assert seen.json()["Title"] == "Later"
    assert datetime.fromisoformat(seen.json()["SystemModstamp"].replace("+0000", "+00:00")) < (
        stamped + timedelta(seconds=1)
    )  # stamped at DML time, not when it became visible
    done = client.get(f"{V}/sobjects/Contact/updated/", params=window).json()
    assert key in done["ids"]
    assert datetime.fromisoformat(done["latestDateCovered"]) > stamped


def test_simple_salesforce_meets_the_replication_limits(org):
    state, url = org
    sf = _simple(url, _token(url)["access_token"])
    now = datetime.now(UTC)
    key = state.user_create("Contact", {"LastName": "Gone"})
    state.user_delete("Contact", key)
    window = (now - timedelta(minutes=1), now + timedelta(minutes=1))
    assert [d["id"] for d in sf.Contact.deleted(*window)["deletedRecords"]] == [key]
    assert "latestDateCovered" in sf.Contact.updated(*window)
    with pytest.raises(SalesforceMalformedRequest, match="INVALID_REPLICATION_DATE"):
        sf.Contact.deleted(now - timedelta(days=16), now)
    state.purge_deleted("Contact")
    with pytest.raises(SalesforceMalformedRequest, match="INVALID_REPLICATION_DATE"):
        sf.Contact.deleted(*window)
    state.user_create("Contact", {"LastName": "Live"})
    state.id_limit = 0
    with pytest.raises(SalesforceMalformedRequest, match="EXCEEDED_ID_LIMIT"):
        sf.Contact.updated(now - timedelta(days=16), now + timedelta(minutes=1))


# -- stamps, system-only bumps, composite and interleaved edits -------------------------------


def _stamps(state: SalesforceState, field: str = "SystemModstamp") -> dict[str, str]:
    return {r["Id"]: r[field] for r in state.records("Contact")}


def test_one_dml_call_gives_every_record_one_stamp_from_the_clock():
    """Records written by one call share SystemModstamp and LastModifiedDate; separate
    calls in the same millisecond share it too: stamps never run ahead of the clock."""
    when = datetime(2031, 5, 6, 7, 8, 9, 250_000, tzinfo=UTC)
    state = SalesforceState(clock=lambda: when)
    state.add_client("sync", "sync-secret", "Integration User")
    with BackgroundServer(create_app(state)) as server:
        token = _token(server.url)["access_token"]
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
            records = [{"attributes": {"type": "Contact"}, "LastName": f"B{i}"} for i in range(200)]
            made = c.post(f"{V}/composite/sobjects", json={"records": records}).json()
            assert all(item["success"] for item in made)
            single = c.post(f"{V}/sobjects/Contact", json={"LastName": "Single"}).json()["id"]
            ids = [item["id"] for item in made]
            update = [{"attributes": {"type": "Contact"}, "id": i, "Title": "T"} for i in ids[:50]]
            assert c.patch(f"{V}/composite/sobjects", json={"records": update}).status_code == 200
    stamps, edited = _stamps(state), _stamps(state, "LastModifiedDate")
    assert set(stamps.values()) == set(edited.values()) == {"2031-05-06T07:08:09.250+0000"}
    assert len(stamps) == 201 and single in stamps


def test_stamps_of_bulk_writes_stay_on_the_clock(api):
    """200 records written in one call, then 200 more one at a time: no stamp is later
    than the clock was when the writes ended."""
    state, client, _ = api
    records = [{"attributes": {"type": "Contact"}, "LastName": f"B{i}"} for i in range(200)]
    made = client.post(f"{V}/composite/sobjects", json={"records": records}).json()
    ids = [item["id"] for item in made]
    assert len({_stamps(state)[i] for i in ids}) == 1
    for i in ids:
        state.update("Contact", i, {"Title": "T"}, state.user_id("Alice"))
    done = datetime.now(UTC)
    assert max(parse_timestamp(s) for s in _stamps(state).values()) <= done


def test_a_system_bump_moves_system_modstamp_only(api):
    state, client, _ = api
    alice = state.user_id("Alice")
    a = state.user_create("Contact", {"LastName": "Rollup"})
    b = state.user_create("Contact", {"LastName": "Other"})
    before = state.get("Contact", a)
    time.sleep(0.01)
    stamp = state.system_bump("Contact", [a])
    after = state.get("Contact", a)
    assert (
        parse_timestamp(after["SystemModstamp"])
        == stamp
        > parse_timestamp(before["SystemModstamp"])
    )
    assert after["LastModifiedDate"] == before["LastModifiedDate"]
    assert after["LastModifiedById"] == before["LastModifiedById"] == alice
    # b was created after a, possibly in a later millisecond: only the bump is newer than b
    since = state.get("Contact", b)["SystemModstamp"].replace("+0000", "Z")
    q = f"SELECT Id FROM Contact WHERE SystemModstamp > {since}"
    assert [r["Id"] for r in client.get(f"{V}/query", params={"q": q}).json()["records"]] == [a]
    # the bump fault: a request goes through, and a system process touched a record first
    stamps = _stamps(state)
    state.faults.set(bump=1.0)
    assert client.get(f"{V}/sobjects/Contact/{b}").status_code == 200
    state.faults.set()
    moved = [k for k, v in _stamps(state).items() if v != stamps[k]]
    assert len(moved) == 1 and state.faults.counts["bump"] == 1
    assert _stamps(state, "LastModifiedById") == {a: alice, b: alice}


def test_composite_sends_guarded_sobject_rows_patches_in_one_call(api):
    state, client, _ = api
    ok, stale = (
        state.user_create("Contact", {"LastName": "Ok"}),
        state.user_create("Contact", {"LastName": "Stale"}),
    )
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    past = "Mon, 01 Jan 2024 00:00:00 GMT"

    def patch(rid: str, since: str, ref: str) -> dict:
        return {
            "method": "PATCH",
            "url": f"{V}/sobjects/Contact/{rid}",
            "referenceId": ref,
            "body": {"Title": "new"},
            "httpHeaders": {"If-Unmodified-Since": since},
        }

    used = state.api_usage
    answer = client.post(
        f"{V}/composite",
        json={
            "allOrNone": False,
            "compositeRequest": [patch(ok, future, "a"), patch(stale, past, "b")],
        },
    )
    assert answer.status_code == 200 and state.api_usage == used + 1
    first, second = answer.json()["compositeResponse"]
    assert (first["referenceId"], first["httpStatusCode"], first["body"]) == ("a", 204, None)
    assert second["httpStatusCode"] == 412
    assert second["body"][0]["errorCode"] == "PRECONDITION_FAILED"
    assert (
        state.get("Contact", ok)["Title"] == "new" and state.get("Contact", stale)["Title"] is None
    )
    # all or none: the passing subrequest is rolled back with the failing one
    rolled = client.post(
        f"{V}/composite",
        json={
            "allOrNone": True,
            "compositeRequest": [patch(stale, future, "c"), patch(ok, past, "d")],
        },
    ).json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in rolled] == [400, 412]
    assert state.get("Contact", stale)["Title"] is None
    # a lock fault hits subrequests, not the call
    state.faults.set(lock=1.0)
    locked = client.post(
        f"{V}/composite", json={"compositeRequest": [patch(ok, future, "e")]}
    ).json()["compositeResponse"]
    state.faults.set()
    assert locked[0]["httpStatusCode"] == 400
    assert locked[0]["body"][0]["errorCode"] == "UNABLE_TO_LOCK_ROW"
    refused = client.post(
        f"{V}/composite",
        json={"compositeRequest": [dict(patch(ok, future, "f"), httpHeaders={"Accept": "x"})]},
    )
    assert refused.status_code == 400
    too_many = [patch(ok, future, f"r{i}") for i in range(26)]
    assert client.post(f"{V}/composite", json={"compositeRequest": too_many}).status_code == 400


def test_an_edit_can_land_right_after_a_retrieve_names_its_record(api):
    state, client, _ = api
    rid = state.user_create("Contact", {"LastName": "Read", "Title": "before"})
    other = state.user_create("Contact", {"LastName": "Else"})
    state.edit_after_read("Contact", rid, {"Title": "edited"}, user="Bob", nth=2)
    body = {"ids": [other], "fields": ["Id", "Title"]}
    client.post(f"{V}/composite/sobjects/Contact", json=body)  # names another record
    body = {"ids": [rid], "fields": ["Id", "Title"]}
    first = client.post(f"{V}/composite/sobjects/Contact", json=body).json()
    assert first[0]["Title"] == "before" and state.get("Contact", rid)["Title"] == "before"
    second = client.get(
        f"{V}/composite/sobjects/Contact", params={"ids": rid, "fields": "Id,Title"}
    ).json()
    assert second[0]["Title"] == "before"  # answered first, then the edit lands
    landed = state.get("Contact", rid)
    assert landed["Title"] == "edited" and landed["LastModifiedById"] == state.user_id("Bob")
