"""The HTTP endpoint base: classification, the send-once rule, token renewal, redaction."""

from __future__ import annotations

import random

import httpx
import pytest
from pydantic import SecretStr

from blocks.http import (
    BearerToken,
    ClientCredentials,
    HttpClient,
    NoAuth,
    Reply,
    overlap_start,
    reason,
    record_error,
    safe_headers,
    safe_url,
)
from twoway.errors import Fatal, PreconditionFailed, Retriable, Skippable
from twoway.retry import RetryPolicy

API = "https://api.example/v1/things"


def client(handler, *, auth=None, attempts=3, **options) -> tuple[HttpClient, list[float]]:
    waits: list[float] = []
    http = HttpClient(
        timeout=5,
        auth=auth or NoAuth(),
        policy=RetryPolicy(attempts=attempts),
        sleep=waits.append,
        rng=random.Random(0),
        transport=httpx.MockTransport(handler),
        **options,
    )
    return http, waits


def test_retriable_statuses_and_system_codes_honour_retry_after():
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(400, json=[{"errorCode": "UNABLE_TO_LOCK_ROW", "message": "locked"}]),
            httpx.Response(200, json={"ok": True}),
        ]
    )
    http, waits = client(lambda r: next(answers), codes={"UNABLE_TO_LOCK_ROW": Retriable})
    assert http.send("GET", API).body == {"ok": True}
    assert waits[0] == 7.0 and len(waits) == 2
    assert http.requests == 3


def test_a_code_can_make_an_answer_fatal_whatever_its_status():
    body = [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}]
    http, waits = client(
        lambda r: httpx.Response(403, json=body), codes={"REQUEST_LIMIT_EXCEEDED": Fatal}
    )
    with pytest.raises(Fatal, match="REQUEST_LIMIT_EXCEEDED"):
        http.send("GET", API)
    assert waits == []


@pytest.mark.parametrize(
    ("failure", "resent"),
    [
        (lambda r: httpx.Response(504), False),
        (lambda r: httpx.Response(503), True),
        (lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)), False),
        (lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)), True),
    ],
)
def test_a_request_sent_once_is_not_sent_again_when_it_may_have_been_applied(failure, resent):
    sent = []

    def handler(request):
        sent.append(request)
        return failure(request) if len(sent) == 1 else httpx.Response(201, json={"id": "1"})

    http, _ = client(handler)
    if resent:
        assert http.send("POST", API, json={}, once=True).status == 201
    else:
        with pytest.raises(Retriable):
            http.send("POST", API, json={}, once=True)
    assert len(sent) == (2 if resent else 1)


def test_client_credentials_are_renewed_once_on_401_then_fatal():
    grants = []

    def handler(request):
        if request.url.path == "/token":
            grants.append(request.content.decode())
            return httpx.Response(200, json={"access_token": f"t{len(grants)}", "expires_in": 3600})
        return httpx.Response(401, json={"error": {"code": "InvalidAuthenticationToken"}})

    auth = ClientCredentials("https://login.example/token", "app", SecretStr("s3cret"))
    http, _ = client(handler, auth=auth)
    with pytest.raises(Fatal, match="with a fresh token") as caught:
        http.send("GET", API)
    assert len(grants) == 2 and "s3cret" not in str(caught.value)
    assert http.requests == 2  # token requests are not counted


def test_a_refused_grant_names_the_oauth_error_without_secrets():
    def handler(request):
        body = {"error": "invalid_client", "error_codes": [7000215], "error_description": "x"}
        return httpx.Response(401, json=body)

    auth = ClientCredentials("https://login.example/token?sig=abc", "app", SecretStr("s3cret"))
    http, _ = client(handler, auth=auth)
    with pytest.raises(Fatal, match="invalid_client AADSTS7000215") as caught:
        http.send("GET", API)
    assert "s3cret" not in str(caught.value) and "abc" not in str(caught.value)


def test_a_static_token_is_fatal_on_401_and_never_leaves_for_another_host():
    http, _ = client(lambda r: httpx.Response(401), auth=BearerToken(SecretStr("tok")), origin=API)
    with pytest.raises(Fatal, match="authentication refused"):
        http.send("GET", API)
    with pytest.raises(Fatal, match="another host"):
        http.send("GET", "https://elsewhere.example/x")


def test_record_errors():
    assert isinstance(record_error(412, "item 1", deleting=False), PreconditionFailed)
    assert record_error(404, "item 1", deleting=True) is None
    assert isinstance(record_error(404, "item 1", deleting=False), Skippable)
    locked = record_error(423, "item 1", deleting=False, retry_after=3)
    assert isinstance(locked, Retriable) and locked.retry_after == 3
    assert isinstance(record_error(400, "item 1", ": bad", deleting=False), Skippable)


@pytest.mark.parametrize(
    "body",
    [
        [{"errorCode": "STRING_TOO_LONG", "message": "value too long"}],  # Salesforce
        {"error": {"code": "STRING_TOO_LONG", "message": "value too long"}},  # Graph
        {"errors": [{"message": "value too long", "extensions": {"code": "STRING_TOO_LONG"}}]},
    ],
)
def test_each_system_s_error_body_gives_its_code_and_message(body):
    assert reason(body) == ": STRING_TOO_LONG: value too long"


def test_redaction_and_cursor_overlap():
    assert safe_url("https://u:p@h/x?token=abc&n=1") == "https://h/x?token=***&n=1"
    assert safe_url("https://h/x?token=abc", query=False) == "https://h/x"
    assert safe_headers({"Authorization": "Bearer x", "Accept": "a"}) == {
        "Authorization": "***",
        "Accept": "a",
    }
    since, start = overlap_start("2024-01-01T00:05:00Z", 300)
    assert since and start and (since - start).total_seconds() == 300
    assert overlap_start(None, 300) == (None, None)
    with pytest.raises(Fatal, match="not an ISO 8601"):
        overlap_start("yesterday", 300)
    assert Reply(429, httpx.Headers({"Retry-After": "12"}), None).retry_after == 12.0


def test_a_long_retry_after_is_honoured_in_full_within_the_deadline():
    answers = iter([httpx.Response(429, headers={"Retry-After": "120"}), httpx.Response(200)])
    policy = RetryPolicy(attempts=3, max_retry_after=900)
    http, waits = client(lambda r: next(answers), deadline=900)
    http.policy = policy
    assert http.send("GET", API).status == 200
    assert waits == [120.0] and http.waited == 120.0

    throttled = httpx.Response(503, headers={"Retry-After": "300"})
    refused, waits = client(lambda r: throttled, deadline=200)
    refused.policy = policy
    with pytest.raises(Fatal, match="wait 300 s .* 200 s in all"):
        refused.send("GET", API)
    assert waits == []
