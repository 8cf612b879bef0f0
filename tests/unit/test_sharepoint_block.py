"""The SharePoint-list block: tokens, retries, eTags and batching, against the simulator."""

from __future__ import annotations

import json
import pickle
import random
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from blocks.credentials import IntegrationAccountCredentials
from blocks.sharepoint import SharePointList
from tasks.load import load_changes
from twoway.contract import Create, Delete, Update, fold_pages
from twoway.definition import load_definition
from twoway.errors import DefinitionError, Fatal, PreconditionFailed, Retriable, Skippable
from twoway.records import PlannedOp
from twoway.retry import RetryPolicy
from twoway.simulators.graph import GraphState, create_app
from twoway.simulators.server import BackgroundServer

SECRET = "very-secret-value"


class Recorder(httpx.BaseTransport):
    """Passes requests to the network and keeps them (method, path, JSON body), and the most
    requests that were waiting for their answers at once."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[tuple[str, str, object]] = []
        self.lock = threading.Lock()
        self.waiting = self.most_waiting = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = body.decode()
        with self.lock:
            self.sent.append((request.method, request.url.path, payload))
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            return self.inner.handle_request(request)
        finally:
            with self.lock:
                self.waiting -= 1

    def paths(self, suffix: str) -> list[object]:
        return [body for _, path, body in self.sent if path.endswith(suffix)]


@pytest.fixture(scope="module")
def served():
    state = GraphState(client_id="app", client_secret=SECRET, display_name="twoway-sync")
    with BackgroundServer(create_app(state)) as server:
        yield state, server.url
    state.close()


@pytest.fixture
def env(served):
    state, url = served
    state.faults.set()
    state.token_lifetime = 3599
    sleeps: list[float] = []
    recorder = Recorder()
    block = SharePointList(
        graph_url=url,
        token_url=f"{url}/{state.tenant_id}/oauth2/v2.0/token",
        list="Contacts",
        integration_account="twoway-sync",
        columns_to_sync=["Title", "Email"],
        page_size=4,
        retry_attempts=3,
        credentials=IntegrationAccountCredentials(client_id="app", client_secret=SecretStr(SECRET)),
    )
    block.use_transport(recorder)
    block.use_retry_hooks(sleeps.append)
    yield state, block, recorder, sleeps
    block.close()
    state.faults.set()


def test_token_is_cached_and_renewed_once_on_401(env):
    state, block, recorder, _ = env
    key = state.user_create("Contacts", {"Title": "T"})
    block.read([key])
    block.read([key])
    assert len(recorder.paths("/token")) == 1
    state.expire_tokens()
    (record,) = block.read([key])
    assert record.key == key
    assert len(recorder.paths("/token")) == 2


def test_refused_credentials_are_fatal_without_the_secret(served):
    state, url = served
    block = SharePointList(
        graph_url=url,
        token_url=f"{url}/{state.tenant_id}/oauth2/v2.0/token?x=1",
        credentials=IntegrationAccountCredentials(
            client_id="app", client_secret=SecretStr("wrong!")
        ),
    )
    with pytest.raises(Fatal) as caught:
        block.columns()
    message = str(caught.value)
    assert "invalid_client" in message and "AADSTS7000215" in message
    assert "wrong!" not in message and SECRET not in message and "x=1" not in message
    block.close()


def test_a_401_inside_every_try_is_fatal_after_one_renewal():
    tokens = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tokens
        if request.url.path.endswith("/token"):
            tokens += 1
            return httpx.Response(200, json={"access_token": f"t{tokens}", "expires_in": 3599})
        return httpx.Response(401, json={"error": {"code": "InvalidAuthenticationToken"}})

    block = SharePointList(
        graph_url="https://graph.example",
        tenant="contoso",
        credentials=IntegrationAccountCredentials(client_id="a", client_secret=SecretStr("b")),
    )
    block.use_transport(httpx.MockTransport(handler))
    with pytest.raises(Fatal, match="fresh token"):
        block.write([Create(ref="r", values={"Title": "x"})])
    assert tokens == 2


def test_retry_after_is_honoured_and_only_failed_items_are_retried():
    envelopes: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3599})
        if len(envelopes) == 0:
            envelopes.append([])
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": {}})
        ids = [r["id"] for r in json.loads(request.content)["requests"]]
        envelopes.append(ids)
        responses = []
        for rid in ids:
            if rid == "1" and len(envelopes) == 2:
                responses.append({"id": rid, "status": 503, "headers": {"Retry-After": "3"}})
            else:
                body = {"id": str(100 + int(rid)), "eTag": f'"g{rid},1"', "fields": {"Title": "x"}}
                responses.append({"id": rid, "status": 201, "body": body})
        return httpx.Response(200, json={"responses": responses})

    sleeps: list[float] = []
    block = SharePointList(
        graph_url="https://graph.example",
        tenant="contoso",
        credentials=IntegrationAccountCredentials(client_id="a", client_secret=SecretStr("b")),
    )
    block.use_transport(httpx.MockTransport(handler))
    block.use_retry_hooks(sleeps.append)
    results = block.write([Create(ref=str(i), values={"Title": "x"}) for i in range(3)])
    assert sleeps == [7.0, 3.0]
    assert envelopes[1] == ["0", "1", "2"] and envelopes[2] == ["1"]
    assert [r.key for r in results] == ["100", "101", "102"]
    assert all(r.ok for r in results)


def test_transient_failures_that_persist_come_back_as_retriable_results(env):
    state, block, _, sleeps = env
    state.faults.set(throttle=1.0)
    (result,) = block.write([Create(ref="r", values={"Title": "never"})])
    assert isinstance(result.error, Retriable)
    assert result.error.retry_after == 1.0
    assert sleeps == [1.0, 1.0]  # three tries, each wait as Retry-After asked


def test_locked_items_are_retried_then_written(env):
    state, block, recorder, sleeps = env
    block.retry_attempts = 10
    state.faults.set(lock=0.3)
    state.faults._rng.seed(7)  # a fixed draw: some items locked once or twice, none ten times
    results = block.write([Create(ref=str(i), values={"Title": f"L{i}"}) for i in range(8)])
    assert all(r.ok for r in results), results
    assert len(recorder.paths("$batch")) > 1 and sleeps


def test_stale_etag_is_precondition_failed_and_missing_is_skippable(env):
    state, block, _, _ = env
    key = state.user_create("Contacts", {"Title": "Orig"})
    (before,) = block.read([key])
    state.user_update("Contacts", key, {"Title": "Someone else"})
    results = block.write(
        [
            Update(key=key, values={"Title": "Mine"}, version=before.version),
            Update(key="999999", values={"Title": "x"}),
            Update(key=key, values={"Unknown": "x"}),
            Delete(key="999998"),
            Delete(key="not-a-number"),
        ]
    )
    assert isinstance(results[0].error, PreconditionFailed)
    assert isinstance(results[1].error, Skippable)
    assert isinstance(results[2].error, Skippable) and "not recognized" in str(results[2].error)
    assert results[3].ok and results[4].ok
    assert state.item_json("Contacts", key)["fields"]["Title"] == "Someone else"


def test_writes_split_into_batches_of_twenty(env):
    state, block, recorder, _ = env
    state.reverse_batch_responses = True  # answers are matched by id, not by position
    try:
        results = block.write([Create(ref=str(i), values={"Title": f"B{i}"}) for i in range(45)])
    finally:
        state.reverse_batch_responses = False
    sizes = [len(body["requests"]) for body in recorder.paths("$batch")]
    assert sizes == [20, 20, 5]
    assert all(r.ok and r.version for r in results)
    assert len({r.key for r in results}) == 45
    stored = {r.key: r.values["Title"] for r in block.read([r.key for r in results])}
    assert [stored[r.key] for r in results] == [f"B{i}" for i in range(45)]
    assert block.max_batch() >= 20


def test_modified_by_names_the_app_and_person(env):
    state, block, _, _ = env
    mine = block.write([Create(ref="m", values={"Title": "Mine"})])[0].key
    theirs = state.user_create("Contacts", {"Title": "Theirs"}, user="Dana Person")
    got = {r.key: r for r in block.read([mine, theirs])}
    assert got[mine].modified_by == "twoway-sync" == block.integration_account
    assert got[theirs].modified_by == "Dana Person"
    assert got[mine].modified_at is not None and got[mine].modified_at.tzinfo is not None
    assert set(got[mine].values) == {"Title", "Email"}


def test_expired_delta_token_reads_everything_again(env):
    state, block, _, _ = env
    first = block.read_changes(None)
    assert first.full and first.cursor
    key = state.user_create("Contacts", {"Title": "After"})
    state.user_delete("Contacts", state.user_create("Contacts", {"Title": "Gone"}))
    later = block.read_changes(first.cursor)
    assert not later.full and key in {r.key for r in later.records} and later.deleted
    state.expire_delta_tokens()
    again = block.read_changes(later.cursor)
    assert again.full and key in {r.key for r in again.records}
    assert again.cursor and again.cursor != later.cursor


def test_after_upload_differences_missing_items_are_lost_not_deleted(env, caplog):
    state, block, _, _ = env
    keep = state.user_create("Contacts", {"Title": "Kept"})
    first = block.read_changes(None)
    state.expire_delta_tokens("resyncChangesUploadDifferences")
    with caplog.at_level("WARNING", logger="twoway.sharepoint"):
        again = block.read_changes(first.cursor)
    # every item is read again, but one missing from the list is not a deletion: SharePoint
    # says it may lack items it should have, and asks for them to be uploaded
    assert keep in {r.key for r in again.records}
    assert not again.full and again.absent_lost
    assert again.deleted == [] and again.cursor != first.cursor
    assert "resyncChangesUploadDifferences" in caplog.text
    state.expire_delta_tokens("resyncChangesApplyDifferences")
    assert block.read_changes(again.cursor).full  # its state stands, deletions included


def test_delta_only_mode_reads_without_modifiers(env):
    state, block, _, _ = env
    block.read_modifiers = False
    first = block.read_changes(None)
    assert first.full and all(r.modified_by is None for r in first.records)
    key = state.user_create("Contacts", {"Title": "Quiet"})
    later = block.read_changes(first.cursor)
    assert [r.key for r in later.records] == [key] and later.records[0].values["Title"] == "Quiet"


def test_cursor_on_another_host_is_refused(env):
    _, block, _, _ = env
    with pytest.raises(Fatal, match="refusing"):
        block.read_changes("https://elsewhere.example/v1.0/sites/root/lists/x/items/delta?token=a")


def test_columns_come_from_the_list(env):
    _, block, _, _ = env
    assert {"Title", "Email", "FirstName", "Phone", "id"} <= block.columns()


def test_pickling_drops_the_client_and_token(env):
    _, block, _, _ = env
    block.columns()
    copy = pickle.loads(pickle.dumps(block))
    assert copy._http is None
    assert copy.credentials.client_secret.get_secret_value() == SECRET


def test_from_definition(tmp_path: Path):
    path = tmp_path / "sync.yaml"
    path.write_text(
        "name: contacts\n"
        "systems:\n"
        "  crm: {kind: sql, url: 'sqlite:///crm.db', table: contacts}\n"
        "  sp: {kind: sharepoint, tenant: contoso, list: People, integration_account: bot}\n"
        "fields:\n"
        "  email: {crm: email, sp: Email}\n",
        encoding="utf-8",
    )
    definition = load_definition(path)
    block = SharePointList.from_definition("sp", definition.systems["sp"], ["Email"])
    assert block.list == "People" and block.columns_to_sync == ["Email"]
    assert block.integration_account == "bot" and block.max_writes_in_flight() == 2
    assert block._token_endpoint() == "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
    with pytest.raises(ValueError):
        SharePointList(key=str(uuid.uuid4()))


def _load_creates(block: SharePointList, n: int, sleeps: list[float]) -> list:
    """``n`` creates of Titles T0.. through the load step; the planned ops and the results."""
    planned = [
        PlannedOp(link_id=f"l{i}", system="sp", op=Create(ref=f"l{i}", values={"Title": f"T{i}"}))
        for i in range(n)
    ]
    return planned, load_changes(block, planned, RetryPolicy(), sleeps.append, random.Random(3))


def test_a_load_keeps_two_batch_writes_in_flight_and_answers_in_order(env):
    state, block, recorder, sleeps = env
    state.latency_ms = 30  # each answer takes a while: the second write goes out meanwhile
    try:
        planned, results = _load_creates(block, 450, sleeps)  # writes of 200, 200 and 50
    finally:
        state.latency_ms = 0
    assert recorder.most_waiting == 2
    assert [r.op for r in results] == [p.op for p in planned]
    assert all(r.ok for r in results) and len({r.key for r in results}) == 450
    stored = {r.key: r.values["Title"] for r in block.read([r.key for r in results])}
    assert [stored[r.key] for r in results] == [f"T{i}" for i in range(450)]


def test_writes_in_flight_renew_an_expired_token_once(env):
    state, block, recorder, sleeps = env
    block.columns()
    state.expire_tokens()  # both writes start with the same refused token
    state.latency_ms = 30
    try:
        _, results = _load_creates(block, 400, sleeps)
    finally:
        state.latency_ms = 0
    assert all(r.ok for r in results)
    assert len(recorder.paths("/token")) == 2  # the first token and one renewal


def test_one_write_in_flight_sends_batches_one_after_another(env):
    state, block, recorder, sleeps = env
    block.writes_in_flight = 1
    state.latency_ms = 10
    try:
        _, results = _load_creates(block, 300, sleeps)
    finally:
        state.latency_ms = 0
    assert all(r.ok for r in results) and recorder.most_waiting == 1


def test_subscribing_goes_through_the_blocks_client_retries_and_token_renewal(env):
    state, block, recorder, sleeps = env

    async def hook(request: Request) -> Response:
        return PlainTextResponse(request.query_params.get("validationToken", ""))

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    with BackgroundServer(app) as receiver:
        url = f"{receiver.url}/hook"
        created = block.subscribe(url, SecretStr("client-state-secret"), 60)
        state.expire_tokens()
        state.faults.set(throttle=1.0)

        def released(seconds: float) -> None:
            sleeps.append(seconds)
            state.faults.set()

        block.use_retry_hooks(released)
        renewed = block.subscribe(url, SecretStr("client-state-secret"), 120)
    assert created["action"] == "created" and renewed["action"] == "renewed"
    assert renewed["id"] == created["id"] and len(state.subscriptions) == 1
    assert len(recorder.paths("/token")) == 2  # the expired token was renewed once
    assert sleeps == [1.0]  # the throttled call waited as Graph asked, then went through
    assert "client-state-secret" not in json.dumps([created, renewed])


def test_subscribing_follows_the_subscription_pages(env):
    state, block, _, _ = env

    async def hook(request: Request) -> Response:
        return PlainTextResponse(request.query_params.get("validationToken", ""))

    before = len(state.subscriptions)
    with BackgroundServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as other:
        for n in range(3):  # other subscriptions fill the first pages
            block.subscribe(f"{other.url}/hook?n={n}", SecretStr("s"), 60)
        mine = block.subscribe(f"{other.url}/hook", SecretStr("s"), 60)
        state.subscriptions_page_size = 2
        try:
            again = block.subscribe(f"{other.url}/hook", SecretStr("s"), 90)
        finally:
            state.subscriptions_page_size = 100
    assert again["action"] == "renewed" and again["id"] == mine["id"]
    assert len(state.subscriptions) == before + 4


@pytest.mark.parametrize("url", ["http://hooks.example/graph/s/x", "https://127.0.0.1/graph/s/x"])
def test_real_graph_refuses_a_notification_url_it_cannot_call_before_any_request(url):
    sent: list[httpx.Request] = []
    block = SharePointList(
        tenant="contoso",
        credentials=IntegrationAccountCredentials(client_id="a", client_secret=SecretStr("b")),
    )
    block.use_transport(httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(500)))
    with pytest.raises(DefinitionError, match="public HTTPS"):
        block.subscribe(url, SecretStr("s"), 60)
    assert sent == []


def test_graph_retry_after_of_minutes_is_honoured_without_a_cap(env):
    state, block, _, sleeps = env
    key = state.user_create("Contacts", {"Title": "Wait"})
    block.read([key])  # the token first
    state.faults.retry_after = 90
    state.faults.set(throttle=1.0)

    def released(seconds: float) -> None:
        sleeps.append(seconds)
        state.faults.set()

    block.use_retry_hooks(released)
    try:
        assert [r.key for r in block.read([key])] == [key]
    finally:
        state.faults.retry_after = 1
    assert sleeps == [90]


def test_a_spent_resource_unit_budget_is_waited_out_as_graph_asks():
    now = [datetime(2026, 1, 5, 9, 0, 5, tzinfo=UTC)]
    state = GraphState(client_id="app", client_secret=SECRET, clock=lambda: now[0])
    state.resource_units_per_minute = 3
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        now[0] += timedelta(seconds=seconds)

    with BackgroundServer(create_app(state)) as server:
        block = SharePointList(
            graph_url=server.url,
            token_url=f"{server.url}/{state.tenant_id}/oauth2/v2.0/token",
            columns_to_sync=["Title"],
            credentials=IntegrationAccountCredentials(
                client_id="app", client_secret=SecretStr(SECRET)
            ),
        )
        block.use_retry_hooks(wait)
        key = state.user_create("Contacts", {"Title": "Budget"})
        for _ in range(4):
            assert [r.key for r in block.read([key])] == [key]
        block.close()
    state.close()
    assert waits == [55.0]  # the rest of the minute, not a 30 s guess


def test_items_repeated_across_delta_pages_come_once(env):
    state, block, _, _ = env
    block.read_modifiers = False
    state.repeat_delta_items = True
    try:
        first = block.read_changes(None)
        keys = [state.user_create("Contacts", {"Title": f"Rep{i}"}) for i in range(9)]
        later = block.read_changes(first.cursor)
    finally:
        state.repeat_delta_items = False
    assert sorted(r.key for r in later.records) == sorted(keys)


def _changes_read(block: SharePointList, state: GraphState, recorder: Recorder, cursor: str):
    """Read the changes since ``cursor``; the change set, the HTTP calls it made (method,
    path) and the requests the simulator served for it (``$batch`` sub-requests included)."""
    sent, served = len(recorder.sent), state.requests
    changes = block.read_changes(cursor)
    calls = [(method, path) for method, path, _ in recorder.sent[sent:]]
    return changes, calls, state.requests - served


def test_a_read_of_changed_items_asks_graph_for_modifiers_twenty_a_batch_not_per_item(env):
    state, block, recorder, _ = env
    block.page_size = 50
    first = block.read_changes(None)
    keys = [state.user_create("Contacts", {"Title": f"N{i}"}, user="Nina") for i in range(45)]
    changes, calls, served = _changes_read(block, state, recorder, first.cursor)
    assert sorted(r.key for r in changes.records) == sorted(keys)
    assert {r.modified_by for r in changes.records} == {"Nina"}
    # one delta page; Graph's feed leaves out lastModifiedBy, so the 45 items are read
    # again in three $batch calls of 20, 20 and 5: four calls, none per item
    assert [path.rsplit("/", 1)[-1] for _, path in calls] == ["delta"] + ["$batch"] * 3
    assert [len(b["requests"]) for b in recorder.paths("$batch")[-3:]] == [20, 20, 5]
    assert changes.requests == 4 and served == 1 + 45


def test_a_modifier_column_comes_with_the_delta_page_and_nothing_is_read_again():
    state = GraphState(client_id="app", client_secret=SECRET)
    state.add_list("Contacts", {"ChangedBy": "text"})
    with BackgroundServer(create_app(state)) as server:
        recorder = Recorder()
        block = SharePointList(
            graph_url=server.url,
            token_url=f"{server.url}/{state.tenant_id}/oauth2/v2.0/token",
            columns_to_sync=["Title"],
            modified_by="ChangedBy",
            integration_account="twoway-sync",
            page_size=20,
            credentials=IntegrationAccountCredentials(
                client_id="app", client_secret=SecretStr(SECRET)
            ),
        )
        block.use_transport(recorder)
        first = block.read_changes(None)
        for i in range(45):
            state.user_create("Contacts", {"Title": f"C{i}", "ChangedBy": f"P{i % 3}"})
        changes, calls, served = _changes_read(block, state, recorder, first.cursor)
        block.close()
    state.close()
    assert len(changes.records) == 45
    assert {r.modified_by for r in changes.records} == {"P0", "P1", "P2"}
    assert {r.values["Title"] for r in changes.records} == {f"C{i}" for i in range(45)}
    # three delta pages (20, 20, 5) carry values and modifier: three calls, not 45 reads
    assert [path.rsplit("/", 1)[-1] for _, path in calls] == ["delta"] * 3
    assert changes.requests == 3 and served == 3


def test_items_the_delta_page_carries_fully_are_not_read_again():
    """A feed whose items hold ``lastModifiedBy`` (the item property) spares the re-read of
    those; the rest of the page is read through $batch, 20 a call."""
    batches: list[list[str]] = []

    def item(n: int, by: str | None) -> dict:
        body = {
            "id": str(n),
            "eTag": f'"g{n},2"',
            "lastModifiedDateTime": "2026-01-05T09:00:00Z",
            "fields": {"Title": f"T{n}", "@odata.etag": f'"g{n},2"'},
        }
        if by:
            body["lastModifiedBy"] = {"user": {"displayName": by, "id": "u"}}
        return body

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3599})
        if request.url.path.endswith("$batch"):
            subs = json.loads(request.content)["requests"]
            batches.append([s["url"].split("/items/")[1].split("?")[0] for s in subs])
            answers = []
            for s in subs:
                n = int(batches[-1][len(answers)])
                answers.append({"id": s["id"], "status": 200, "body": item(n, "R")})
            return httpx.Response(200, json={"responses": answers})
        page = [item(n, None if n % 8 == 0 else "Carried") for n in range(1, 26)]
        return httpx.Response(
            200, json={"value": page, "@odata.deltaLink": "https://graph.example/v1.0/next?token=b"}
        )

    block = SharePointList(
        graph_url="https://graph.example",
        tenant="contoso",
        columns_to_sync=["Title"],
        credentials=IntegrationAccountCredentials(client_id="a", client_secret=SecretStr("b")),
    )
    block.use_transport(httpx.MockTransport(handler))
    changes = block.read_changes(
        "https://graph.example/v1.0/sites/root/lists/x/items/delta?token=a"
    )
    assert batches == [["8", "16", "24"]]  # only the three the page did not carry fully
    assert changes.requests == 2
    by = {r.key: r.modified_by for r in changes.records}
    assert [r.key for r in changes.records] == [str(n) for n in range(1, 26)]  # page order
    assert {k for k, v in by.items() if v == "R"} == {"8", "16", "24"}
    assert {v for k, v in by.items() if k not in ("8", "16", "24")} == {"Carried"}


def test_an_item_changed_between_the_pages_that_repeat_it_is_taken_from_the_later_one(env):
    state, block, _, _ = env
    block.read_modifiers = False  # the initial enumeration pages the delta feed itself
    for key in [str(i["id"]) for i in state.items("Contacts")]:
        state.user_delete("Contacts", key)
    keys = [state.user_create("Contacts", {"Title": f"P{i}"}) for i in range(10)]
    state.repeat_delta_items = True
    try:
        pages = block.read_pages(None)
        first = next(pages)
        repeated = first.records[-1].key  # Graph shows it again at the top of the next page
        state.user_update("Contacts", repeated, {"Title": "changed between pages"})
        read = fold_pages([first, *pages])
    finally:
        state.repeat_delta_items = False
    titles = {r.key: r.values["Title"] for r in read.records}
    assert sorted(r.key for r in read.records) == sorted(keys)  # each item once
    assert titles[repeated] == "changed between pages"  # its last occurrence


def test_an_item_repeated_within_a_delta_page_is_taken_from_its_last_occurrence():
    def live(n: int, title: str) -> dict:
        return {"id": str(n), "eTag": f'"g{n},1"', "fields": {"Title": title}}

    page = [
        live(5, "first"),
        live(6, "alive"),
        {"id": "7", "deleted": {"state": "deleted"}},
        live(5, "last"),
        {"id": "6", "deleted": {"state": "deleted"}},
        live(7, "back"),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3599})
        return httpx.Response(200, json={"value": page, "@odata.deltaLink": f"{request.url}b"})

    block = SharePointList(
        graph_url="https://graph.example",
        tenant="contoso",
        columns_to_sync=["Title"],
        read_modifiers=False,
        credentials=IntegrationAccountCredentials(client_id="a", client_secret=SecretStr("b")),
    )
    block.use_transport(httpx.MockTransport(handler))
    read = block.read_changes("https://graph.example/v1.0/sites/root/lists/x/items/delta?token=a")
    assert {r.key: r.values["Title"] for r in read.records} == {"5": "last", "7": "back"}
    assert read.deleted == ["6"]


def test_an_item_repeated_on_the_next_delta_page_unchanged_is_not_read_again(env):
    state, block, recorder, _ = env
    first = block.read_changes(None)
    keys = [state.user_create("Contacts", {"Title": f"Q{i}"}, user="Quinn") for i in range(9)]
    state.repeat_delta_items = True  # pages of 4: each next page repeats the last item
    try:
        changes, calls, served = _changes_read(block, state, recorder, first.cursor)
    finally:
        state.repeat_delta_items = False
    assert sorted(r.key for r in changes.records) == sorted(keys)
    assert {r.modified_by for r in changes.records} == {"Quinn"}
    pages = [c for c in calls if c[1].endswith("/delta")]
    assert len(pages) == 3  # 4, then 1 repeated + 3, then 1 repeated + 2
    read_again = [r["url"] for b in recorder.paths("$batch")[-3:] for r in b["requests"]]
    assert len(read_again) == 9  # each item once, not the repeats again
    assert served == len(pages) + 9


def test_a_throttled_answer_says_how_much_of_the_resource_unit_budget_is_left():
    now = [datetime(2026, 1, 5, 9, 0, 20, tzinfo=UTC)]
    state = GraphState(client_id="app", client_secret=SECRET, clock=lambda: now[0])
    state.resource_units_per_minute = 5
    with BackgroundServer(create_app(state)) as server:
        block = SharePointList(
            graph_url=server.url,
            token_url=f"{server.url}/{state.tenant_id}/oauth2/v2.0/token",
            retry_attempts=1,
            credentials=IntegrationAccountCredentials(
                client_id="app", client_secret=SecretStr(SECRET)
            ),
        )
        for _ in range(2):
            block.columns()  # a list of columns: 2 units each
        with pytest.raises(Retriable) as caught:
            block.columns()
        block.close()
    state.close()
    assert caught.value.status == 429 and caught.value.retry_after == 40.0
    assert "resource units this minute: 0 of 5 left, the budget renews in 40 s" in str(caught.value)


@pytest.mark.parametrize("status", [429, 503])
def test_graph_asking_for_minutes_inside_a_batch_is_waited_out_up_to_the_definitions_deadline(
    tmp_path: Path, status: int
):
    """Graph throttles with 429 or 503 and a Retry-After of minutes, for a whole call or
    for one request inside a $batch; each wait is honoured in full while the run's waits
    stay within the retry_deadline_seconds the definition sets, and past it the run stops."""
    path = tmp_path / "sync.yaml"
    path.write_text(
        "name: contacts\n"
        "systems:\n"
        "  crm: {kind: sql, url: 'sqlite:///crm.db', table: contacts}\n"
        "  sp: {kind: sharepoint, tenant: contoso, list: People, retry_deadline_seconds: 400}\n"
        "fields:\n"
        "  email: {crm: email, sp: Email}\n",
        encoding="utf-8",
    )
    spec = load_definition(path).systems["sp"]
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3599})
        calls += 1
        if calls == 1:
            return httpx.Response(status, headers={"Retry-After": "150"}, json={"error": {}})
        answers = []
        for sub in json.loads(request.content)["requests"]:
            if calls == 2 and sub["id"] == "1":
                answers.append({"id": "1", "status": status, "headers": {"Retry-After": "200"}})
            else:
                key = sub["url"].split("/items/")[1].split("?")[0]
                body = {"id": key, "eTag": '"g,1"', "fields": {"Email": f"{key}@x"}}
                answers.append({"id": sub["id"], "status": 200, "body": body})
        return httpx.Response(200, json={"responses": answers})

    block = SharePointList.from_definition("sp", spec, ["Email"])
    credentials = IntegrationAccountCredentials(client_id="a", client_secret=SecretStr("b"))
    block.credentials = credentials
    waits: list[float] = []
    block.use_transport(httpx.MockTransport(handler))
    block.use_retry_hooks(waits.append)
    assert [r.key for r in block.read(["1", "2", "3"])] == ["1", "2", "3"]
    assert waits == [150.0, 200.0]  # in full: no 30 s cap
    calls = 0
    with pytest.raises(Fatal, match=r"wait 150 s .* waited 350 s and may wait 400 s"):
        block.read(["1"])  # 150 more would pass the deadline: the run stops
    assert waits == [150.0, 200.0]
