"""The webhook receiver under hostile input: size, content type, signature, timestamp,
replays. Driven through httpx's ASGI transport with fake secrets and emitter."""

from __future__ import annotations

import asyncio
import json

import httpx
from pydantic import SecretStr

from twoway import cli
from twoway.webhooks import (
    DELIVERY_HEADER,
    MAX_BODY,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CachedSecrets,
    Debouncer,
    Receiver,
    signed_headers,
)

SECRET = SecretStr("hook-secret-4711")
NOW = 1_800_000_000.0


async def _no_runs(sync):
    return []


def _receiver():
    emitted: list[tuple[str, dict]] = []
    receiver = Receiver(
        secrets=CachedSecrets(lambda sync, system: SECRET),
        debouncer=Debouncer(_no_runs, settle=0),
        emit=lambda sync, payload: emitted.append((sync, payload)),
        known_sync=lambda sync: True,
        clock=lambda: NOW,
    )
    return receiver, emitted


def _post(receiver, *requests):
    async def go():
        transport = httpx.ASGITransport(app=receiver.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
            answers = []
            for path, body, headers in requests:
                answers.append(await c.post(path, content=body, headers=headers))
                await receiver.drain()
            return answers

    return asyncio.run(go())


BODY = json.dumps({"object": "Contact", "ids": ["003A0000006Vm9rIAC"]}).encode()


def test_a_body_over_the_limit_gets_413_before_it_is_read():
    receiver, emitted = _receiver()
    big = b"[" + b"0," * (MAX_BODY // 2) + b"0]"
    (answer,) = _post(receiver, ("/notify/c/s", big, signed_headers(big, SECRET, NOW)))
    assert answer.status_code == 413 and emitted == []


def test_a_body_that_is_not_declared_json_gets_415():
    receiver, emitted = _receiver()
    headers = {**signed_headers(BODY, SECRET, NOW), "Content-Type": "text/html"}
    graph = {"Content-Type": "application/x-www-form-urlencoded"}
    a, b = _post(receiver, ("/notify/c/s", BODY, headers), ("/graph/c/s", b'{"value":[]}', graph))
    assert (a.status_code, b.status_code) == (415, 415) and emitted == []


def test_a_stale_or_future_timestamp_is_refused_even_when_signed():
    receiver, emitted = _receiver()
    old = signed_headers(BODY, SECRET, NOW - 301)
    future = signed_headers(BODY, SECRET, NOW + 301)
    garbage = {**signed_headers(BODY, SECRET, NOW), TIMESTAMP_HEADER: "yesterday"}
    missing = {k: v for k, v in signed_headers(BODY, SECRET, NOW).items() if k != TIMESTAMP_HEADER}
    answers = _post(receiver, *[("/notify/c/s", BODY, h) for h in (old, future, garbage, missing)])
    assert [a.status_code for a in answers] == [401] * 4 and emitted == []
    assert "away from our clock" in answers[0].json()["error"]
    assert "missing X-Twoway-Timestamp" in answers[3].json()["error"]


def test_a_timestamp_moved_without_resigning_fails_the_hmac():
    receiver, emitted = _receiver()
    moved = {**signed_headers(BODY, SECRET, NOW - 1000), TIMESTAMP_HEADER: str(int(NOW))}
    (answer,) = _post(receiver, ("/notify/c/s", BODY, moved))
    assert answer.status_code == 401 and SIGNATURE_HEADER in answer.json()["error"]


def test_a_replayed_notification_is_processed_once():
    receiver, emitted = _receiver()
    headers = signed_headers(BODY, SECRET, NOW)
    with_id = {**signed_headers(BODY + b" ", SECRET, NOW), DELIVERY_HEADER: "d-1"}
    same_id = {**signed_headers(BODY + b"  ", SECRET, NOW), DELIVERY_HEADER: "d-1"}
    answers = _post(
        receiver,
        ("/notify/c/s", BODY, headers),
        ("/notify/c/s", BODY, headers),
        ("/notify/c/s", BODY + b" ", with_id),
        ("/notify/c/s", BODY + b"  ", same_id),
    )
    assert [a.status_code for a in answers] == [202] * 4
    assert len(emitted) == 2 and receiver.stats.duplicates == 2


def test_a_notification_is_a_hint_none_of_its_data_is_passed_on():
    receiver, emitted = _receiver()
    body = json.dumps({"Email": "attacker@evil", "Name": "<script>"}).encode()
    (answer,) = _post(receiver, ("/notify/c/s", body, signed_headers(body, SECRET, NOW)))
    assert answer.status_code == 202
    ((sync, payload),) = emitted
    assert payload == {"source": "signed", "system": "s"}


def test_the_receiver_listens_on_127_0_0_1_unless_told_otherwise():
    args = cli.build_parser().parse_args(["webhooks", "serve"])
    assert args.host == "127.0.0.1"


def test_the_secret_never_appears_in_an_answer():
    receiver, _ = _receiver()
    graph = {"value": [{"clientState": "guess", "subscriptionId": "x"}]}
    answers = _post(
        receiver,
        ("/graph/c/s", json.dumps(graph).encode(), {"Content-Type": "application/json"}),
        ("/notify/c/s", BODY, signed_headers(BODY, "wrong", NOW)),
    )
    for answer in answers:
        assert answer.status_code == 401
        assert SECRET.get_secret_value() not in answer.text
