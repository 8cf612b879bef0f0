"""The Graph simulator, driven with raw HTTP calls written from the public Graph docs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from twoway.simulators.faults import FaultPlan
from twoway.simulators.graph import GraphState, create_app
from twoway.simulators.server import BackgroundServer

CLIENT_ID, SECRET = "app-1", "secret-1"
ITEMS = "/v1.0/sites/root/lists/Contacts/items"


@pytest.fixture
def graph():
    state = GraphState(client_id=CLIENT_ID, client_secret=SECRET, display_name="twoway-sync")
    server = BackgroundServer(create_app(state))
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        yield state, http, server.url
    state.close()


def token(http: httpx.Client, state: GraphState, client_id=CLIENT_ID, secret=SECRET) -> str:
    response = http.post(
        f"/{state.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "https://graph.microsoft.com/.default",
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def auth(http: httpx.Client, state: GraphState, **kw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(http, state, **kw)}"}


def test_token_endpoint_client_credentials(graph):
    state, http, _ = graph
    url = f"/{state.tenant_id}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "scope": "https://graph.microsoft.com/.default",
    }
    ok = http.post(url, data=form).json()
    assert ok["token_type"] == "Bearer" and ok["expires_in"] == 3599 and ok["access_token"]
    wrong = http.post(url, data={**form, "client_secret": "nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert wrong.json()["error_codes"] == [7000215]
    assert "nope" not in wrong.text
    unknown = http.post(url, data={**form, "client_id": "other"})
    assert unknown.status_code == 400 and unknown.json()["error"] == "unauthorized_client"
    grant = http.post(url, data={**form, "grant_type": "password"})
    assert grant.json()["error"] == "unsupported_grant_type"
    scope = http.post(url, data={**form, "scope": "User.Read"})
    assert scope.json()["error"] == "invalid_scope"
    tenant = http.post("/not-a-tenant/oauth2/v2.0/token", data=form)
    assert tenant.status_code == 400


def test_bearer_is_required_and_expires(graph):
    state, http, _ = graph
    missing = http.get(ITEMS)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "InvalidAuthenticationToken"
    headers = auth(http, state)
    assert http.get(ITEMS, headers=headers).status_code == 200
    state.expire_tokens()
    expired = http.get(ITEMS, headers=headers)
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]
    state.token_lifetime = 0.2
    short = auth(http, state)
    time.sleep(0.3)
    assert http.get(ITEMS, headers=short).status_code == 401


def test_create_get_update_delete_item_shapes(graph):
    state, http, base = graph
    headers = auth(http, state)
    created = http.post(
        ITEMS, headers=headers, json={"fields": {"Title": "Ann", "Email": "ann@example.com"}}
    )
    assert created.status_code == 201
    item = created.json()
    assert item["id"].isdigit()
    assert item["eTag"].startswith('"') and item["eTag"].endswith(',1"')
    assert item["createdDateTime"].endswith("Z") and item["lastModifiedDateTime"].endswith("Z")
    assert item["lastModifiedBy"]["application"]["displayName"] == "twoway-sync"
    assert item["fields"]["Email"] == "ann@example.com" and item["fields"]["id"] == item["id"]
    assert {"Modified", "Created"} <= set(item["fields"])

    got = http.get(f"{ITEMS}/{item['id']}", params={"$expand": "fields($select=Email)"}).json()
    assert got.get("error", {}).get("code") == "InvalidAuthenticationToken"  # no bearer
    got = http.get(
        f"{ITEMS}/{item['id']}", headers=headers, params={"$expand": "fields($select=Email)"}
    ).json()
    assert set(got["fields"]) == {"@odata.etag", "Email"}

    stale = item["eTag"]
    patched = http.patch(
        f"{ITEMS}/{item['id']}/fields", headers={**headers, "If-Match": stale}, json={"Phone": "1"}
    )
    assert patched.status_code == 200
    assert patched.json()["Phone"] == "1" and patched.json()["@odata.etag"].endswith(',2"')
    refused = http.patch(
        f"{ITEMS}/{item['id']}/fields", headers={**headers, "If-Match": stale}, json={"Phone": "2"}
    )
    assert refused.status_code == 412
    assert state.item_json("Contacts", item["id"])["fields"]["Phone"] == "1"

    unknown = http.patch(f"{ITEMS}/{item['id']}/fields", headers=headers, json={"Nope": "x"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "invalidRequest"
    assert http.delete(f"{ITEMS}/{item['id']}", headers=headers).status_code == 204
    assert http.get(f"{ITEMS}/{item['id']}", headers=headers).status_code == 404


def test_people_and_other_clients_are_other_identities(graph):
    state, http, _ = graph
    key = state.user_create("Contacts", {"Title": "Bo"}, user="Alice Example")
    by = state.item_json("Contacts", key)["lastModifiedBy"]
    assert by["user"]["displayName"] == "Alice Example" and "application" not in by
    state.add_client("bob-app", "bob-secret", "Bob Example", kind="user")
    headers = auth(http, state, client_id="bob-app", secret="bob-secret")
    http.patch(f"{ITEMS}/{key}/fields", headers=headers, json={"Title": "Bob"})
    after = state.item_json("Contacts", key)
    assert after["lastModifiedBy"]["user"]["displayName"] == "Bob Example"
    assert after["createdBy"]["user"]["displayName"] == "Alice Example"


def test_item_pages_follow_next_links_without_repeats(graph):
    state, http, _ = graph
    keys = {state.user_create("Contacts", {"Title": f"P{i}"}) for i in range(12)}
    headers = auth(http, state)
    url: str | None = f"{ITEMS}?$top=5&$expand=fields"
    seen: list[str] = []
    pages = 0
    while url:
        page = http.get(url, headers=headers).json()
        seen += [i["id"] for i in page["value"]]
        url = page.get("@odata.nextLink")
        if url:
            assert "$skiptoken=" in url
            # an item deleted between pages does not shift the next page (keyset paging)
            if pages == 0:
                state.user_delete("Contacts", seen[0])
        pages += 1
    assert pages == 3 and len(seen) == len(set(seen)) == 12
    assert set(seen) == keys


def test_delta_initial_pages_changes_deletes_and_gone(graph):
    state, http, _ = graph
    keys = [state.user_create("Contacts", {"Title": f"D{i}"}) for i in range(7)]
    headers = auth(http, state)
    url = f"{ITEMS}/delta?$expand=fields($select=Title)&$top=3"
    seen: list[dict[str, Any]] = []
    while True:
        page = http.get(url, headers=headers).json()
        seen += page["value"]
        if "@odata.nextLink" in page:
            url = page["@odata.nextLink"]
            continue
        delta_link = page["@odata.deltaLink"]
        break
    assert [i["id"] for i in seen] == keys
    assert all("lastModifiedBy" not in i and i["eTag"] and i["fields"]["Title"] for i in seen)
    assert {i["createdBy"]["user"]["displayName"] for i in seen} == {"Alice"}  # as documented
    assert "token=" in delta_link

    state.user_update("Contacts", keys[1], {"Title": "first"})
    state.user_update("Contacts", keys[1], {"Title": "second"})
    state.user_delete("Contacts", keys[2])
    new = state.user_create("Contacts", {"Title": "new"})
    changes = http.get(delta_link, headers=headers).json()
    by_id = {i["id"]: i for i in changes["value"]}
    assert set(by_id) == {keys[1], keys[2], new}
    assert by_id[keys[1]]["fields"]["Title"] == "second"  # latest state, once
    assert by_id[keys[2]] == {"id": keys[2], "deleted": {"state": "deleted"}}
    quiet = http.get(changes["@odata.deltaLink"], headers=headers).json()
    assert quiet["value"] == [] and "@odata.deltaLink" in quiet

    latest = http.get(f"{ITEMS}/delta", params={"token": "latest"}, headers=headers).json()
    assert latest["value"] == [] and latest["@odata.deltaLink"]

    state.expire_delta_tokens()
    gone = http.get(quiet["@odata.deltaLink"], headers=headers)
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "resyncChangesApplyDifferences"
    assert gone.headers["Location"].endswith("/items/delta")
    fresh = http.get(gone.headers["Location"], headers=headers)  # a new enumeration
    assert fresh.status_code == 200 and "value" in fresh.json()
    state.expire_delta_tokens("resyncChangesUploadDifferences")
    upload = http.get(quiet["@odata.deltaLink"], headers=headers)
    assert upload.status_code == 410
    assert upload.json()["error"]["code"] == "resyncChangesUploadDifferences"
    assert http.get(f"{ITEMS}/delta?token=madeup", headers=headers).status_code == 410


def test_columns_and_lists(graph):
    state, http, _ = graph
    headers = auth(http, state)
    columns = http.get("/v1.0/sites/root/lists/Contacts/columns", headers=headers).json()["value"]
    names = {c["name"] for c in columns}
    assert {"Title", "FirstName", "Email", "Phone", "Modified"} <= names
    lists = http.get("/v1.0/sites/root/lists", headers=headers).json()["value"]
    contacts = next(x for x in lists if x["displayName"] == "Contacts")
    by_id = http.get(f"/v1.0/sites/root/lists/{contacts['id']}/items", headers=headers)
    assert by_id.status_code == 200
    assert http.get("/v1.0/sites/root/lists/Nope/items", headers=headers).status_code == 404


def test_batch_limits_depends_on_and_failed_dependency(graph):
    state, http, _ = graph
    headers = auth(http, state)
    url = "/sites/root/lists/Contacts/items"
    too_many = {"requests": [{"id": str(i), "method": "GET", "url": url} for i in range(21)]}
    over = http.post("/v1.0/$batch", headers=headers, json=too_many)
    assert over.status_code == 400 and over.json()["error"]["code"] == "BadRequest"

    key = state.user_create("Contacts", {"Title": "Batch"})
    batch = {
        "requests": [
            {
                "id": "1",
                "method": "POST",
                "url": url,
                "headers": {"Content-Type": "application/json"},
                "body": {"fields": {"Title": "A"}},
            },
            {
                "id": "2",
                "dependsOn": ["1"],
                "method": "PATCH",
                "url": f"{url}/{key}/fields",
                "headers": {"Content-Type": "application/json", "If-Match": '"stale,1"'},
                "body": {"Title": "B"},
            },
            {"id": "3", "dependsOn": ["2"], "method": "DELETE", "url": f"{url}/{key}"},
            {"id": "4", "method": "GET", "url": f"{url}/{key}?$expand=fields"},
            {"id": "5", "method": "POST", "url": url, "body": {"fields": {"Title": "C"}}},
        ]
    }
    answer = http.post("/v1.0/$batch", headers=headers, json=batch)
    assert answer.status_code == 200
    responses = {r["id"]: r for r in answer.json()["responses"]}
    assert responses["1"]["status"] == 201 and responses["1"]["body"]["fields"]["Title"] == "A"
    assert responses["2"]["status"] == 412
    assert responses["3"]["status"] == 424  # its dependency failed: never run
    assert responses["4"]["status"] == 200 and responses["4"]["body"]["fields"]["Title"] == "Batch"
    assert responses["5"]["status"] == 400  # a body needs a Content-Type header
    assert state.count("Contacts") == 2

    dup = {"requests": [{"id": "1", "method": "GET", "url": url}] * 2}
    assert http.post("/v1.0/$batch", headers=headers, json=dup).status_code == 400


def test_faults_answer_before_touching_data(graph):
    state, http, _ = graph
    headers = auth(http, state)
    state.faults.set(throttle=1.0)
    throttled = http.get(ITEMS, headers=headers)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    state.faults.set(unavailable=1.0)
    assert http.get(ITEMS, headers=headers).status_code == 503
    state.faults.set(lock=1.0)
    locked = http.post(ITEMS, headers=headers, json={"fields": {"Title": "x"}})
    assert locked.status_code == 423
    assert state.count("Contacts") == 0
    batch = {
        "requests": [
            {
                "id": str(i),
                "method": "POST",
                "url": "/sites/root/lists/Contacts/items",
                "headers": {"Content-Type": "application/json"},
                "body": {"fields": {"Title": "y"}},
            }
            for i in range(3)
        ]
    }
    answer = http.post("/v1.0/$batch", headers=headers, json=batch)
    assert answer.status_code == 200  # a lock concerns records, not the envelope
    assert {r["status"] for r in answer.json()["responses"]} == {423}
    assert state.count("Contacts") == 0
    state.faults.timeout_seconds = 0.1
    state.faults.set(timeout=1.0)
    assert http.get(ITEMS, headers=headers).status_code == 504
    state.faults.set()
    state.latency_ms = 50
    started = time.monotonic()
    assert http.get(ITEMS, headers=headers).status_code == 200
    assert time.monotonic() - started >= 0.05


def test_lost_fault_applies_then_answers_a_gateway_timeout(graph):
    """``lost``: the request is applied, then the client gets 504 (as after a gateway gave
    up on a backend still working), in a plain request and inside a $batch."""
    state, http, _ = graph
    headers = auth(http, state)
    state.faults.set(lost=1.0)
    lost = http.post(ITEMS, headers=headers, json={"fields": {"Title": "made"}})
    assert lost.status_code == 504 and lost.json()["error"]["code"] == "gatewayTimeout"
    assert [i["fields"]["Title"] for i in state.items("Contacts")] == ["made"]
    create = {
        "id": "1",
        "method": "POST",
        "url": "/sites/root/lists/Contacts/items",
        "headers": {"Content-Type": "application/json"},
        "body": {"fields": {"Title": "batched"}},
    }
    # the envelope's answer is lost (one draw), or the sub-request's (one draw each)
    state.faults = FaultPlan(rates={"lost": 1.0})
    assert (
        http.post("/v1.0/$batch", headers=headers, json={"requests": [create]}).status_code == 504
    )
    assert state.count("Contacts") == 2
    state.faults.set()
    assert http.get(ITEMS, headers=headers).status_code == 200


class Receiver:
    """A subscriber's webhook endpoint: echoes validation tokens, records notifications."""

    def __init__(self, echo: bool = True):
        self.echo = echo
        self.notifications: list[dict[str, Any]] = []
        self.validations = 0
        self.arrived = threading.Event()
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        if "validationToken" in request.query_params:
            self.validations += 1
            if not self.echo:
                return Response(status_code=500)
            return PlainTextResponse(request.query_params["validationToken"])
        self.notifications.append(await request.json())
        self.arrived.set()
        return Response(status_code=202)


def subscription(url: str, **extra: str) -> dict[str, str]:
    """A list subscription's body, expiring in two days."""
    expires = (datetime.now(UTC) + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    return {
        "changeType": "updated",
        "notificationUrl": url,
        "resource": "sites/root/lists/Contacts",
        "expirationDateTime": expires,
        **extra,
    }


def test_subscription_handshake_notifications_renew_delete(graph):
    state, http, _ = graph
    headers = auth(http, state)
    receiver = Receiver()
    with BackgroundServer(receiver.app) as hook:
        body = subscription(f"{hook.url}/hook", clientState="secretClientState")
        created = http.post("/v1.0/subscriptions", headers=headers, json=body)
        assert created.status_code == 201, created.text
        sub = created.json()
        assert receiver.validations == 1 and sub["clientState"] == "secretClientState"

        state.user_create("Contacts", {"Title": "Notify me"})
        assert receiver.arrived.wait(5)
        note = receiver.notifications[0]["value"][0]
        assert note["subscriptionId"] == sub["id"]
        assert note["clientState"] == "secretClientState"
        assert note["changeType"] == "updated"
        assert note["resource"] == "sites/root/lists/Contacts"
        assert note["tenantId"] == state.tenant_id and note["subscriptionExpirationDateTime"]

        later = (datetime.now(UTC) + timedelta(days=10)).isoformat()
        renewed = http.patch(
            f"/v1.0/subscriptions/{sub['id']}", headers=headers, json={"expirationDateTime": later}
        )
        assert renewed.status_code == 200
        too_far = (datetime.now(UTC) + timedelta(days=40)).isoformat()
        refused = http.patch(
            f"/v1.0/subscriptions/{sub['id']}",
            headers=headers,
            json={"expirationDateTime": too_far},
        )
        assert refused.status_code == 400
        assert http.delete(f"/v1.0/subscriptions/{sub['id']}", headers=headers).status_code == 204
        count = len(receiver.notifications)
        state.user_create("Contacts", {"Title": "Nobody hears this"})
        assert state.flush_notifications()
        assert len(receiver.notifications) == count

        receiver.echo = False
        failed = http.post("/v1.0/subscriptions", headers=headers, json=body)
        assert failed.status_code == 400
        assert "validation" in failed.json()["error"]["message"]
        elsewhere = http.post(
            "/v1.0/subscriptions",
            headers=headers,
            json={**body, "notificationUrl": "https://example.com/hook"},
        )
        assert elsewhere.status_code == 400


def test_data_file_adds_lists_clients_and_records(tmp_path):
    data = tmp_path / "seed.yaml"
    data.write_text(
        "clients:\n"
        "  - {client_id: carol-app, client_secret: c, display_name: Carol, kind: user}\n"
        "lists:\n"
        "  - title: Projects\n"
        "    columns: {Budget: number, Active: boolean, Due: dateTime}\n"
        "    items:\n"
        "      - {Title: Apollo, Budget: 12.5, Active: true, Due: '2024-05-01T10:00:00Z'}\n"
        "      - {Title: Zeus, _by: Dana}\n"
        "  - title: Contacts\n"
        "    items: [{Title: Seeded, Email: s@example.com}]\n",
        encoding="utf-8",
    )
    state = GraphState()
    state.load_data(data)
    assert state.count("Projects") == 2 and state.count("Contacts") == 1
    first = state.item_json("Projects", "1")
    assert first["fields"]["Budget"] == 12.5 and first["fields"]["Active"] is True
    assert state.item_json("Projects", "2")["lastModifiedBy"]["user"]["displayName"] == "Dana"
    with pytest.raises(Exception, match="Invalid value"):
        state.user_create("Projects", {"Budget": "lots"})


def test_serve_prints_its_urls_and_answers():
    code = (
        "from twoway.simulators.graph import serve; "
        "serve(0, 'cli-app', 'cli-secret', None, 0.0, None, tenant='t1')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        base = proc.stdout.readline().split()[2]
        token_url = proc.stdout.readline().split()[2]
        assert token_url == f"{base}/t1/oauth2/v2.0/token"
        assert "cli-secret" not in proc.stdout.readline()
        form = {
            "grant_type": "client_credentials",
            "client_id": "cli-app",
            "client_secret": "cli-secret",
            "scope": f"{base}/.default",
        }
        for _ in range(100):
            try:
                answer = httpx.post(token_url, data=form, timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        assert answer.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_microsoft_graph_sdk_basic_calls(graph):
    """Microsoft's own Python SDK (when installed) talks to the simulator unchanged."""
    import asyncio

    from kiota_abstractions.authentication import (
        AccessTokenProvider,
        AllowedHostsValidator,
        BaseBearerTokenAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph.generated.models.field_value_set import FieldValueSet
    from msgraph.generated.models.list_item import ListItem
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError

    state, http, base = graph
    access_token = token(http, state)

    class StaticToken(AccessTokenProvider):
        async def get_authorization_token(self, uri, additional_authentication_context=None):
            return access_token

        def get_allowed_hosts_validator(self):
            return AllowedHostsValidator(["127.0.0.1"])

    async def calls() -> None:
        adapter = GraphRequestAdapter(BaseBearerTokenAuthenticationProvider(StaticToken()))
        adapter.base_url = f"{base}/v1.0"
        items = GraphServiceClient(request_adapter=adapter).sites.by_site_id("root")
        items = items.lists.by_list_id("Contacts").items
        fields = FieldValueSet(additional_data={"Title": "SDK", "Email": "sdk@example.com"})
        created = await items.post(ListItem(fields=fields))
        assert created.id and created.e_tag
        assert created.last_modified_by.application.display_name == "twoway-sync"
        patched = await items.by_list_item_id(created.id).fields.patch(
            FieldValueSet(additional_data={"Phone": "555"})
        )
        assert patched.additional_data["Phone"] == "555"
        page = await items.get()
        assert [i.id for i in page.value] == [created.id]
        delta = await items.delta.get()
        assert delta.odata_delta_link and [i.id for i in delta.value] == [created.id]
        state.expire_delta_tokens("resyncChangesUploadDifferences")
        with pytest.raises(ODataError) as gone:
            await items.delta.with_url(delta.odata_delta_link).get()
        assert gone.value.response_status_code == 410
        assert gone.value.error.code == "resyncChangesUploadDifferences"

    asyncio.run(calls())


def test_subscription_listing_pages_and_public_urls_only_when_set(graph):
    state, http, _ = graph
    headers = auth(http, state)
    receiver = Receiver()
    state.subscriptions_page_size = 2
    with BackgroundServer(receiver.app) as hook:
        body = subscription(f"{hook.url}/hook")
        for _ in range(3):
            assert http.post("/v1.0/subscriptions", headers=headers, json=body).status_code == 201
        first = http.get("/v1.0/subscriptions", headers=headers).json()
        assert len(first["value"]) == 2
        second = http.get(first["@odata.nextLink"], headers=headers).json()
        assert len(second["value"]) == 1 and "@odata.nextLink" not in second
        state.public_notifications_only = True
        refused = http.post("/v1.0/subscriptions", headers=headers, json=body)
        assert refused.status_code == 400
        assert "public HTTPS" in refused.json()["error"]["message"]


def test_resource_units_per_minute_throttle_with_retry_after_and_ratelimit_headers():
    now = [datetime(2026, 1, 5, 9, 0, 5, tzinfo=UTC)]
    state = GraphState(client_id=CLIENT_ID, client_secret=SECRET, clock=lambda: now[0])
    state.resource_units_per_minute = 10
    with BackgroundServer(create_app(state)) as server, httpx.Client(base_url=server.url) as http:
        headers = auth(http, state)
        answers = [http.get(ITEMS, headers=headers) for _ in range(6)]  # 2 units each
        assert [a.status_code for a in answers] == [200] * 5 + [429]
        assert "RateLimit-Limit" not in answers[2].headers  # 6 of 10 spent
        assert answers[3].headers["RateLimit-Remaining"] == "2"  # 80% spent: the headers
        assert answers[4].headers["RateLimit-Remaining"] == "0"
        assert answers[4].headers["RateLimit-Limit"] == "10"
        assert answers[5].headers["Retry-After"] == "55"  # the rest of the minute
        assert answers[5].headers["RateLimit-Reset"] == "55"
        assert answers[5].json()["error"]["code"] == "TooManyRequests"
        now[0] += timedelta(seconds=55)
        assert http.get(ITEMS, headers=headers).status_code == 200
    state.close()


def test_resource_units_cost_what_sharepoint_documents():
    now = [datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)]
    state = GraphState(client_id=CLIENT_ID, client_secret=SECRET, clock=lambda: now[0])
    key = state.user_create("Contacts", {"Title": "Cost"})
    with BackgroundServer(create_app(state)) as server, httpx.Client(base_url=server.url) as http:
        headers = auth(http, state)

        def cost(method: str, url: str, **kw: Any) -> int:
            state.resource_units_per_minute = 100  # a fresh budget, watched from 80 on
            state._units = (int(now[0].timestamp() // 60), 80)
            answer = http.request(method, url, headers=headers, **kw)
            assert answer.status_code < 300, answer.text
            return 100 - 80 - int(answer.headers["RateLimit-Remaining"])

        assert cost("GET", f"{ITEMS}/{key}") == 1  # a single item
        assert cost("GET", ITEMS) == 2  # several items
        assert cost("GET", f"{ITEMS}/delta") == 2  # a delta without a token
        link = http.get(f"{ITEMS}/delta", headers=headers).json()["@odata.deltaLink"]
        assert cost("GET", link) == 1  # a delta with a token
        assert cost("POST", ITEMS, json={"fields": {"Title": "n"}}) == 2  # a create
        assert cost("PATCH", f"{ITEMS}/{key}/fields", json={"Title": "u"}) == 2  # an update
        get = {"method": "GET", "url": f"/sites/root/lists/Contacts/items/{key}"}
        batch = {"requests": [{"id": str(i), **get} for i in range(3)]}
        assert cost("POST", "/v1.0/$batch", json=batch) == 3  # its requests one by one
        state.resource_units_per_minute = 100
        state._units = (int(now[0].timestamp() // 60), 99)
        refused = http.post("/v1.0/$batch", headers=headers, json=batch)
        assert refused.status_code == 429  # 3 units do not fit in the 1 left
        assert http.get(f"{ITEMS}/{key}", headers=headers).status_code == 429  # it counted
    state.close()


def test_delta_pages_may_repeat_an_item(graph):
    state, http, _ = graph
    headers = auth(http, state)
    state.repeat_delta_items = True
    keys = [state.user_create("Contacts", {"Title": f"R{i}"}) for i in range(5)]
    url, params, seen = f"{ITEMS}/delta", {"$top": "2"}, []
    while url:
        page = http.get(url, params=params, headers=headers).json()
        seen += [i["id"] for i in page["value"]]
        url, params = page.get("@odata.nextLink"), None
    assert sorted(set(seen)) == sorted(keys) and len(seen) > len(keys)
    state.repeat_delta_items = False


def test_select_keeps_the_item_properties_named_and_the_delta_keeps_it_page_after_page(graph):
    state, http, _ = graph
    keys = [state.user_create("Contacts", {"Title": f"S{i}"}, user="Sam") for i in range(3)]
    headers = auth(http, state)
    listed = http.get(
        ITEMS,
        headers=headers,
        params={"$select": "id,lastModifiedBy", "$expand": "fields($select=Title)"},
    ).json()["value"]
    assert {tuple(sorted(i)) for i in listed} == {("@odata.etag", "fields", "id", "lastModifiedBy")}
    assert {i["lastModifiedBy"]["user"]["displayName"] for i in listed} == {"Sam"}
    one = http.get(f"{ITEMS}/{keys[0]}", headers=headers, params={"$select": "eTag"}).json()
    assert set(one) == {"@odata.etag", "id", "eTag"}

    params: dict[str, str] | None = {"$select": "id,eTag,lastModifiedBy", "$top": "2"}
    url, seen = f"{ITEMS}/delta", []
    while url:
        page = http.get(url, headers=headers, params=params).json()
        seen += page["value"]
        url, params = page.get("@odata.nextLink"), None
        link = page.get("@odata.deltaLink")
    # the token carries $select to the next pages; lastModifiedBy never comes in the feed
    assert [i["id"] for i in seen] == keys and len(seen) == 3
    assert all(set(i) == {"@odata.etag", "id", "eTag"} for i in seen)
    state.user_update("Contacts", keys[1], {"Title": "changed"}, user="Sam")
    (changed,) = http.get(link, headers=headers).json()["value"]
    assert set(changed) == {"@odata.etag", "id", "eTag"} and changed["id"] == keys[1]
