"""The REST-collection block: paging guards, retries, per-item errors, the definition form."""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import yaml
from pydantic import SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.rest import RestCollection, dig, safe_url
from twoway.connectors import open_endpoint
from twoway.contract import Create, Delete, Update
from twoway.definition import RestSystem, parse_definition
from twoway.errors import Fatal, PreconditionFailed, Retriable, Skippable
from twoway.simulators.faults import FaultPlan
from twoway.simulators.rest import RestState, create_app
from twoway.simulators.server import BackgroundServer

TOKEN = "token-sync"
TOKENS = {TOKEN: "sync-bot", "token-alice": "alice"}
BASE = "http://api.test"


def block(**overrides) -> RestCollection:
    settings = {
        "base_url": BASE,
        "cursor_param": "modified_since",
        "page_size_param": "$top",
        "page_size": 2,
        "modified_at": "modified_at",
        "modified_by": "modified_by",
        "integration_account": "sync-bot",
        "columns_to_sync": ["name"],
        "credentials": IntegrationAccountCredentials(token=SecretStr(TOKEN)),
    }
    settings.update(overrides)
    return RestCollection(**settings)


def mocked(
    endpoint: RestCollection, handler: Callable[[httpx.Request], httpx.Response]
) -> list[float]:
    """Route the block's requests to ``handler``; returns the list its retry waits land in."""
    endpoint.use_transport(httpx.MockTransport(handler))
    waits: list[float] = []
    endpoint.use_retry_hooks(waits.append, random.Random(0))
    return waits


def record(key: str, stamp: str = "2024-01-01T00:00:00.000000Z", **values) -> dict:
    return {"id": key, "modified_at": stamp, "modified_by": "alice", "version": 1, **values}


@pytest.fixture
def served():
    """A real simulator with auth: (state, faults, base URL)."""
    state = RestState()
    faults = FaultPlan()
    with BackgroundServer(create_app(state, tokens=TOKENS, faults=faults, max_batch=5)) as server:
        yield state, faults, server.url


# -- reading ----------------------------------------------------------------------------


def test_next_link_that_repeats_a_page_is_refused():
    endpoint = block()

    def handler(request):
        return httpx.Response(
            200, json={"value": [record("a")], "@odata.nextLink": f"{BASE}/items?$skiptoken=x"}
        )

    mocked(endpoint, handler)
    with pytest.raises(Fatal, match="nextLink loops"):
        endpoint.read_changes(None)


def test_next_link_to_another_host_is_refused():
    endpoint = block()

    def handler(request):
        return httpx.Response(
            200, json={"value": [], "@odata.nextLink": "https://evil.example/items?page=2"}
        )

    mocked(endpoint, handler)
    with pytest.raises(Fatal, match="another host") as caught:
        endpoint.read_changes(None)
    assert TOKEN not in str(caught.value)


def test_dotted_paths_relative_links_and_cursor_overlap():
    endpoint = block(records="data.items", next_link="links.next", overlap_seconds=60)
    seen: list[httpx.URL] = []

    def handler(request):
        seen.append(request.url)
        if "page" not in request.url.params:
            body = {
                "data": {"items": [record("a", "2024-01-01T10:00:00.000000Z", name="A")]},
                "links": {"next": "/items?page=2"},
            }
        else:
            body = {
                "data": {
                    "items": [
                        record("b", "2024-01-01T11:00:00.500000Z", name="B"),
                        {
                            "id": "c",
                            "@removed": {"reason": "deleted"},
                            "modified_at": "2024-01-01T10:30:00.000000Z",
                        },
                    ]
                }
            }
        return httpx.Response(200, json=body)

    mocked(endpoint, handler)
    changes = endpoint.read_changes("2024-01-01T09:00:00.000000Z")
    assert seen[0].params["modified_since"] == "2024-01-01T08:59:00.000000Z"
    assert seen[0].params["$top"] == "2"
    assert [r.key for r in changes.records] == ["a", "b"]
    assert changes.records[0].values == {"name": "A"}
    assert changes.deleted == ["c"]
    assert changes.cursor == "2024-01-01T11:00:00.500000Z"
    assert changes.requests == 2 and not changes.full
    assert endpoint.list_keys() is None


def test_cursor_never_moves_back():
    endpoint = block()
    mocked(endpoint, lambda r: httpx.Response(200, json={"value": []}))
    changes = endpoint.read_changes("2024-05-01T00:00:00.000000Z")
    assert changes.cursor == "2024-05-01T00:00:00.000000Z"


def test_version_falls_back_to_etag_then_modified_at():
    endpoint = block()
    items = [
        {"id": "a", "modified_at": "2024-01-01T00:00:00Z", "@odata.etag": 'W/"7"'},
        {"id": "b", "modified_at": "2024-01-01T00:00:01Z"},
    ]
    mocked(endpoint, lambda r: httpx.Response(200, json={"value": items}))
    a, b = endpoint.read_changes(None).records
    assert a.version == 'W/"7"'
    assert b.version == "2024-01-01T00:00:01Z"
    assert a.values == {"name": None}


def test_without_cursor_param_every_read_is_full_and_keys_are_listed():
    endpoint = block(cursor_param=None)
    mocked(endpoint, lambda r: httpx.Response(200, json={"value": [record("a"), record("b")]}))
    changes = endpoint.read_changes("2024-01-01T00:00:00Z")
    assert changes.full
    assert endpoint.list_keys() == {"a", "b"}


def test_retry_after_is_honoured_on_reads():
    endpoint = block()
    answers = iter(
        [
            httpx.Response(
                429, headers={"Retry-After": "7"}, json={"error": {"message": "slow down"}}
            ),
            httpx.Response(503, headers={"Retry-After": "3"}, text="busy"),
            httpx.Response(200, json={"value": [record("a")]}),
        ]
    )
    waits = mocked(endpoint, lambda r: next(answers))
    changes = endpoint.read_changes(None)
    assert [r.key for r in changes.records] == ["a"]
    assert changes.requests == 3  # retries are calls too
    assert waits == [7.0, 3.0]


def test_reads_give_up_as_retriable_after_the_tries():
    endpoint = block(retry_attempts=3)
    waits = mocked(endpoint, lambda r: httpx.Response(503, headers={"Retry-After": "1"}))
    with pytest.raises(Retriable, match="503"):
        endpoint.read_changes(None)
    assert waits == [1.0, 1.0]


@pytest.mark.parametrize(
    ("response", "error", "words"),
    [
        (
            httpx.Response(401, json={"error": {"message": "bad token"}}),
            Fatal,
            "authentication refused",
        ),
        (
            httpx.Response(200, text="<html>login</html>", headers={"Content-Type": "text/html"}),
            Fatal,
            "HTML page",
        ),
        (
            httpx.Response(
                502, text="<html>bad gateway</html>", headers={"Content-Type": "text/html"}
            ),
            Retriable,
            "HTML page",
        ),
        (httpx.Response(200, content=b'{"value": [{"id": "a", "na'), Retriable, "truncated"),
        (httpx.Response(200, content=b'{"value": [}, 1]}'), Fatal, "malformed JSON"),
        (httpx.Response(200, json={"items": []}), Fatal, "no list at 'value'"),
        (
            httpx.Response(404, json={"error": {"message": "no such collection"}}),
            Fatal,
            "no such collection",
        ),
    ],
)
def test_broken_answers_are_clear_errors_naming_the_url(response, error, words):
    endpoint = block(retry_attempts=1, base_url="http://user:pw@api.test")
    mocked(endpoint, lambda r: response)
    with pytest.raises(error, match=words) as caught:
        endpoint.read_changes(None)
    message = str(caught.value)
    assert "http://api.test/items" in message
    assert TOKEN not in message and "pw" not in message


def test_transport_failures_are_retriable(caplog):
    endpoint = block(retry_attempts=2)

    def handler(request):
        raise httpx.ConnectError("connection refused")

    waits = mocked(endpoint, handler)
    with pytest.raises(Retriable, match="ConnectError"):
        endpoint.read(["a"])
    assert len(waits) == 1


def test_safe_url_and_dig():
    assert (
        safe_url("https://u:p@h/x?api_key=abc&$skiptoken=t&n=1")
        == "https://h/x?api_key=***&$skiptoken=t&n=1"
    )
    assert dig({"@odata.nextLink": "x"}, "@odata.nextLink") == "x"
    assert dig({"a": {"b.c": {"d": 1}}}, "a.b.c.d") == 1
    assert dig({"a": 1}, "a.b") is None


# -- writing ----------------------------------------------------------------------------


def test_only_refused_batch_items_are_retried_honouring_retry_after():
    endpoint = block(batch="/$batch")
    batches: list[list[dict]] = []

    def handler(request):
        requests = json.loads(request.content)["requests"]
        batches.append(requests)
        responses = []
        for sub in requests:
            if sub["id"] == "1" and len(batches) == 1:
                responses.append(
                    {"id": "1", "status": 429, "headers": {"Retry-After": "4"}, "body": None}
                )
            else:
                responses.append(
                    {
                        "id": sub["id"],
                        "status": 201,
                        "headers": {},
                        "body": record("k" + sub["id"], name=sub["body"]["name"]),
                    }
                )
        return httpx.Response(200, json={"responses": responses})

    waits = mocked(endpoint, handler)
    results = endpoint.write(
        [Create(ref="r0", values={"name": "A"}), Create(ref="r1", values={"name": "B"})]
    )
    assert [r.key for r in results] == ["k0", "k1"]
    assert all(r.ok for r in results)
    assert [s["id"] for s in batches[1]] == ["1"]
    assert batches[0][0]["headers"]["Idempotency-Key"] == "r0"
    assert waits == [4.0]


def test_items_still_refused_come_back_as_retriable_results():
    endpoint = block(retry_attempts=2)
    waits = mocked(endpoint, lambda r: httpx.Response(423, json={"error": {"message": "locked"}}))
    (result,) = endpoint.write([Update(key="a", values={"name": "x"}, version="3")])
    assert isinstance(result.error, Retriable) and result.error.status == 423
    assert len(waits) == 1


def test_auth_failure_in_a_batch_is_fatal():
    endpoint = block(batch="/$batch")

    def handler(request):
        return httpx.Response(200, json={"responses": [{"id": "0", "status": 401, "body": None}]})

    mocked(endpoint, handler)
    with pytest.raises(Fatal, match="401") as caught:
        endpoint.write([Delete(key="a")])
    assert TOKEN not in str(caught.value)


def test_per_item_outcomes_through_the_batch(served):
    state, _, url = served
    alive = state.user_create({"name": "alive"})
    stale = state.user_create({"name": "stale"})
    state.user_update(stale["id"], {"name": "edited"})
    endpoint = block(base_url=url, batch="/$batch", batch_limit=5)
    ops = [Create(ref=f"r{i}", values={"name": f"n{i}"}) for i in range(6)]
    ops += [
        Update(key=alive["id"], values={"name": "changed"}, version=str(alive["version"])),
        Update(key=stale["id"], values={"name": "lost"}, version=str(stale["version"])),
        Update(key="missing", values={"name": "x"}),
        Update(key=alive["id"], values={"id": "not allowed"}),
        Delete(key="missing"),
    ]
    with endpoint:
        results = endpoint.write(ops)
    assert all(r.ok and r.key for r in results[:6])
    assert results[0].values == {"name": "n0"} and results[0].version == "1"
    assert results[6].ok and results[6].version == "2"
    assert isinstance(results[7].error, PreconditionFailed)
    assert isinstance(results[8].error, Skippable) and results[8].error.status == 404
    assert isinstance(results[9].error, Skippable) and "set by the server" in str(results[9].error)
    assert results[10].ok
    assert state.get(stale["id"])["name"] == "edited"
    assert {r["modified_by"] for r in state.records() if r["name"].startswith("n")} == {"sync-bot"}


def test_faults_are_ridden_out_with_retries(served):
    state, faults, url = served
    faults.set(lock=0.2, throttle=0.2, unavailable=0.1)
    faults.retry_after = 0
    for batch in ("/$batch", None):
        endpoint = block(base_url=url, batch=batch, batch_limit=5, retry_attempts=30, page_size=3)
        endpoint.use_retry_hooks(lambda seconds: None)
        with endpoint:
            results = endpoint.write(
                [Create(ref=f"{batch}-{i}", values={"name": str(i)}) for i in range(12)]
            )
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            got = endpoint.read([r.key for r in results])
            assert sorted(r.values["name"] for r in got) == sorted(str(i) for i in range(12))
            assert len(endpoint.read_changes(None).records) == len(state)
    assert faults.counts["lock"] and faults.counts["throttle"]


def test_one_request_per_operation_without_a_batch_endpoint(served):
    state, _, url = served
    person = state.user_create({"name": "p"})
    endpoint = block(base_url=url, batch=None)
    with endpoint:
        created, updated, gone = endpoint.write(
            [
                Create(ref="r", values={"name": "c"}),
                Update(key=person["id"], values={"name": "q"}, version=str(person["version"])),
                Delete(key=person["id"], version="1"),
            ]
        )
        assert created.ok and updated.ok
        assert isinstance(gone.error, PreconditionFailed)  # the update moved the version on
        assert [r.key for r in endpoint.read([person["id"], "nope"])] == [person["id"]]
        assert endpoint.columns() >= {"id", "name", "modified_at", "modified_by", "version"}


def test_wrong_token_is_fatal(served):
    _, _, url = served
    endpoint = block(
        base_url=url, credentials=IntegrationAccountCredentials(token=SecretStr("wrong-secret"))
    )
    with endpoint, pytest.raises(Fatal, match="authentication refused") as caught:
        endpoint.read_changes(None)
    assert "wrong-secret" not in str(caught.value)


def test_pickling_drops_the_client(served):
    _, _, url = served
    endpoint = block(base_url=url)
    endpoint.read_changes(None)
    copy = pickle.loads(pickle.dumps(endpoint))
    assert copy._http is None
    assert copy.read_changes(None).records == []
    endpoint.close()
    copy.close()


# -- the definition form -----------------------------------------------------------------

DEFINITION = """
name: orders
systems:
  db:
    kind: sql
    url: sqlite:///orders.db
    table: orders
  api:
    kind: rest
    base_url: {url}
    collection: /items            # GET pages, POST creates
    item: /items/{{id}}             # GET, PATCH, DELETE
    batch: /$batch                # optional JSON batch endpoint, Graph's shape
    records: value                # where the list sits in a page
    next_link: "@odata.nextLink"  # where the next page's URL sits
    cursor_param: modified_since  # query parameter for incremental reads
    page_size_param: $top
    page_size: 1000
    key: id
    modified_at: modified_at
    modified_by: modified_by
    integration_account: sync-bot
fields:
  name: {{db: name, api: name}}
"""


def test_the_definition_form_builds_a_working_block(tmp_path):
    state = RestState()
    state.user_create({"name": "from alice"})
    with BackgroundServer(create_app(state, max_batch=20, default_user="sync-bot")) as server:
        raw = yaml.safe_load(DEFINITION.format(url=server.url))
        definition = parse_definition(raw, Path(tmp_path) / "orders.sync.yaml")
        system = definition.systems["api"]
        assert isinstance(system, RestSystem)
        endpoint = open_endpoint(definition, "api")
        assert isinstance(endpoint, RestCollection)
        assert endpoint.batch == "/$batch" and endpoint.next_link == "@odata.nextLink"
        assert endpoint.columns_to_sync == ["name"] and endpoint.overlap_seconds == 300
        with endpoint:
            first = endpoint.read_changes(None)
            assert [r.values for r in first.records] == [{"name": "from alice"}]
            (created,) = endpoint.write([Create(ref="link-1", values={"name": "from db"})])
            assert created.ok
            later = endpoint.read_changes(first.cursor)
            assert {r.values["name"] for r in later.records} == {"from alice", "from db"}
            assert endpoint.list_keys() is None


@pytest.mark.parametrize(
    "base",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8080/",
        "http://u:secret@h.example/api/v1/",
        "https://h.example/api?token=abc&x=1",
        "http://h/a%20b",
        "http://[::1]:9/x",
    ],
)
def test_messages_name_each_call_as_its_safe_url(base):
    """A call's ``METHOD url`` in messages, made from the base's safe form once, is what
    safe_url says of the call's whole URL (no user info, secrets masked), for every path."""
    rest = RestCollection(base_url=base, collection="/items")
    keys = ["r1", "a b", "ü/?#", "x%y"]
    paths = ["/items/" + quote(k, safe="") for k in keys] + ["/$batch", "/items?x=1", "/it ems"]
    for path in paths:
        assert rest._where("PATCH", path) == f"PATCH {safe_url(rest._url(path))}"
    assert "secret" not in rest._where("GET", "/items")
