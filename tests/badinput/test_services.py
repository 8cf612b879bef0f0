"""A REST system answering badly: each answer is a clear error naming the request, a
transient one is retried, none loops, none follows a link to another host."""

from __future__ import annotations

import random

import httpx
import pytest
from pydantic import SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.rest import RestCollection
from twoway.errors import Fatal, Retriable, SyncError

TOKEN = "tok-4711"
BASE = "http://api.test"


def _block(handler) -> tuple[RestCollection, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) > 50:
            raise AssertionError("the block kept requesting: a loop")
        return handler(request, len(seen))

    endpoint = RestCollection(
        base_url=BASE,
        page_size=2,
        modified_at="modified_at",
        columns_to_sync=["name"],
        credentials=IntegrationAccountCredentials(token=SecretStr(TOKEN)),
        retry_attempts=2,
    )
    endpoint.use_transport(httpx.MockTransport(record))
    endpoint.use_retry_hooks(lambda seconds: None, random.Random(0))
    return endpoint, seen


def _item(key: str) -> dict:
    return {"id": key, "name": key, "modified_at": "2024-01-01T00:00:00Z"}


def _read(handler):
    endpoint, seen = _block(handler)
    with pytest.raises(SyncError) as caught:
        endpoint.read_changes(None)
    assert TOKEN not in str(caught.value)
    return caught.value, seen


def test_malformed_json_is_a_fatal_error_naming_the_request():
    error, _ = _read(lambda r, n: httpx.Response(200, content=b"{'single': quotes}"))
    assert isinstance(error, Fatal) and "malformed JSON" in str(error) and "GET" in str(error)


def test_an_html_error_page_is_named_as_such_and_retried():
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    error, seen = _read(
        lambda r, n: httpx.Response(502, content=page, headers={"content-type": "text/html"})
    )
    assert isinstance(error, Retriable) and "HTML page" in str(error) and "<h1>" not in str(error)


def test_a_truncated_body_is_transient():
    body = b'{"value": [{"id": "1", "name": "on'
    error, _ = _read(lambda r, n: httpx.Response(200, content=body))
    assert isinstance(error, Retriable) and "truncated" in str(error)


def test_a_next_link_that_loops_is_refused():
    def handler(request, n):
        return httpx.Response(
            200, json={"value": [_item(str(n))], "@odata.nextLink": f"{BASE}/items?page=1"}
        )

    error, seen = _read(handler)
    assert isinstance(error, Fatal) and "loops back" in str(error) and len(seen) <= 3


def test_a_page_that_repeats_under_a_new_link_is_refused():
    """Gap in blocks/rest.py (RestCollection._pages): only repeated URLs are refused; a
    server that answers every link with the same records pages on for ever."""

    def handler(request, n):
        return httpx.Response(
            200, json={"value": [_item("1"), _item("2")], "@odata.nextLink": f"{BASE}/items?p={n}"}
        )

    error, seen = _read(handler)
    assert isinstance(error, Fatal) and "repeat" in str(error)


def test_a_next_link_to_another_host_is_refused_and_not_followed():
    def handler(request, n):
        assert request.url.host == "api.test", "followed a link to another host"
        return httpx.Response(
            200, json={"value": [_item("1")], "@odata.nextLink": "http://evil.test/steal"}
        )

    error, seen = _read(handler)
    assert isinstance(error, Fatal) and "another host" in str(error)


def test_a_redirect_to_another_host_is_not_followed():
    def handler(request, n):
        assert request.url.host == "api.test", "followed a redirect to another host"
        return httpx.Response(302, headers={"location": "http://evil.test/items"})

    error, seen = _read(handler)
    assert len(seen) <= 2 and all(r.url.host == "api.test" for r in seen)
    assert "302" in str(error)


def test_an_expired_token_stops_the_run_with_a_clear_reason():
    error, _ = _read(lambda r, n: httpx.Response(401, json={"error": {"message": "expired"}}))
    assert isinstance(error, Fatal) and "authentication refused (401)" in str(error)


def test_a_401_in_the_middle_of_paging_stops_the_read():
    def handler(request, n):
        if n == 1:
            return httpx.Response(
                200, json={"value": [_item("1")], "@odata.nextLink": f"{BASE}/items?page=2"}
            )
        return httpx.Response(401, json={"error": {"message": "token expired"}})

    error, seen = _read(handler)
    assert isinstance(error, Fatal) and "401" in str(error) and len(seen) == 2


def test_a_salesforce_record_with_a_malformed_id_is_parked_not_fatal():
    """A record whose Id is not a Salesforce id identifies nothing: it is read with no key."""
    from blocks.salesforce import SalesforceObject

    block = SalesforceObject(instance_url="http://127.0.0.1:1", columns_to_sync=["Email"])
    record = block._record({"Id": "not-an-id!", "Email": "x@example.com", "SystemModstamp": None})
    assert record.key == ""


def test_a_state_url_that_cannot_be_opened_is_a_clear_error():
    import pytest

    from twoway.errors import Fatal
    from twoway.state import StateStore

    with pytest.raises(Fatal, match="cannot open the state store"):
        StateStore("nosuchdriver+foo://user:pw@127.0.0.1/x")
