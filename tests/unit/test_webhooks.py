"""The webhook receiver without a Prefect server: handshake, clientState, HMAC, debounce.

Secrets, the run lister and the event emitter are replaced by fakes; the app is driven
through httpx's ASGI transport, so every status code and body is the real one.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from twoway.errors import DefinitionError
from twoway.webhooks import (
    SECRET_HEADER,
    SIGNATURE_HEADER,
    CachedSecrets,
    Debouncer,
    Receiver,
    RunInfo,
    sign,
    signature_ok,
    signed_headers,
)

SECRET = SecretStr("s3cret-state-value")


class FakeRuns:
    """What the Prefect API would say about the sync's deployment runs."""

    def __init__(self):
        self.runs: list[RunInfo] = []
        self.calls = 0

    async def __call__(self, sync: str) -> list[RunInfo]:
        self.calls += 1
        return list(self.runs)


def make(secret: SecretStr | None = SECRET, settle: float = 30.0):
    emitted: list[tuple[str, dict]] = []
    runs = FakeRuns()
    receiver = Receiver(
        secrets=CachedSecrets(lambda sync, system: secret),
        debouncer=Debouncer(runs, settle=settle),
        emit=lambda sync, payload: emitted.append((sync, payload)),
        known_sync=lambda sync: sync == "contacts",
    )
    return receiver, runs, emitted


def client(receiver: Receiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=receiver.app()), base_url="http://receiver"
    )


def graph_body(state: str | None = SECRET.get_secret_value(), count: int = 1) -> dict:
    return {
        "value": [
            {
                "subscriptionId": f"sub-{i}",
                "clientState": state,
                "changeType": "updated",
                "resource": "sites/root/lists/abc",
                "tenantId": "t",
            }
            for i in range(count)
        ]
    }


def run(coro):
    return asyncio.run(coro)


def test_graph_validation_handshake_echoes_the_token_as_text_at_once():
    receiver, runs, emitted = make()
    looked_up = []  # "at once": before any secret, run or event is looked at
    receiver.secrets = CachedSecrets(lambda sync, system: looked_up.append(sync) or SECRET)

    async def go():
        async with client(receiver) as c:
            return await c.post("/graph/contacts/sharepoint", params={"validationToken": "a b+c"})

    answer = run(go())
    assert answer.status_code == 200
    assert answer.text == "a b+c"  # URL-decoded, as Graph expects it back
    assert answer.headers["content-type"].startswith("text/plain")
    assert (looked_up, runs.calls, emitted) == ([], 0, [])


def test_graph_handshake_for_an_unknown_sync_fails_so_no_subscription_is_made():
    receiver, _, _ = make()

    async def go():
        async with client(receiver) as c:
            return await c.post("/graph/nope/sharepoint", params={"validationToken": "x"})

    assert run(go()).status_code == 404


def test_a_genuine_graph_notification_gets_202_and_one_event():
    receiver, _, emitted = make()

    async def go():
        async with client(receiver) as c:
            answer = await c.post("/graph/contacts/sharepoint", json=graph_body())
            await receiver.drain()
            return answer

    assert run(go()).status_code == 202
    assert [sync for sync, _ in emitted] == ["contacts"]
    assert emitted[0][1]["source"] == "graph" and emitted[0][1]["system"] == "sharepoint"


@pytest.mark.parametrize("state", ["wrong", None, "", SECRET.get_secret_value() + "x"])
def test_a_graph_notification_with_a_wrong_client_state_is_refused(state):
    receiver, _, emitted = make()

    async def go():
        async with client(receiver) as c:
            answer = await c.post("/graph/contacts/sharepoint", json=graph_body(state))
            await asyncio.sleep(0.05)
            return answer

    answer = run(go())
    assert answer.status_code == 401
    assert "clientState" in answer.json()["error"]
    assert SECRET.get_secret_value() not in answer.text
    assert emitted == [] and receiver.stats.refused == 1


def test_without_a_configured_secret_every_notification_is_refused():
    receiver, _, emitted = make(secret=None)

    async def go():
        async with client(receiver) as c:
            return await c.post("/graph/contacts/sharepoint", json=graph_body())

    assert run(go()).status_code == 401 and emitted == []


def test_malformed_graph_bodies_get_400():
    receiver, _, emitted = make()

    async def go():
        async with client(receiver) as c:
            a = await c.post(
                "/graph/contacts/sp",
                content=b"not json",
                headers={"Content-Type": "application/json"},
            )
            b = await c.post("/graph/contacts/sp", json={"value": []})
            return a.status_code, b.status_code

    assert run(go()) == (400, 400) and emitted == []


def test_signed_notifications_need_the_right_hmac():
    receiver, _, emitted = make()
    body = json.dumps({"object": "Contact", "ids": ["003xx"]}).encode()

    async def go():
        async with client(receiver) as c:
            headers = signed_headers(body, SECRET)
            good = await c.post("/notify/contacts/crm", content=body, headers=headers)
            await receiver.drain()
            missing = await c.post(
                "/notify/contacts/crm",
                content=body,
                headers={k: v for k, v in headers.items() if k != SIGNATURE_HEADER},
            )
            forged = await c.post(
                "/notify/contacts/crm", content=body, headers=signed_headers(body, "another")
            )
            tampered = await c.post("/notify/contacts/crm", content=body + b" ", headers=headers)
            not_json = await c.post(
                "/notify/contacts/crm", content=b"hello", headers=signed_headers(b"hello", SECRET)
            )
            await asyncio.sleep(0.05)
            return good, missing, forged, tampered, not_json

    good, missing, forged, tampered, not_json = run(go())
    assert good.status_code == 202
    assert (missing.status_code, forged.status_code, tampered.status_code) == (401, 401, 401)
    assert not_json.status_code == 400
    assert [sync for sync, _ in emitted] == ["contacts"]  # only the genuine one


def test_signature_check_accepts_bare_hex_and_refuses_garbage():
    body = b'{"a": 1}'
    assert signature_ok(body, sign(body, SECRET), SECRET)
    assert signature_ok(body, sign(body, SECRET)[7:].upper(), SECRET)
    assert not signature_ok(body, "sha256=zz\u00e9", SECRET)
    assert not signature_ok(body, None, SECRET)


def test_a_burst_of_notifications_becomes_one_run_now_and_at_most_one_queued():
    receiver, runs, emitted = make()

    async def go():
        async with client(receiver) as c:
            # a burst: the first asks for a run; the rest find that run not started yet
            answers = await asyncio.gather(
                *[c.post("/graph/contacts/sp", json=graph_body()) for _ in range(30)]
            )
            await receiver.drain()
            assert len(emitted) == 1
            # the run appears, waiting for the worker: still nothing new
            runs.runs = [RunInfo("run-1", waiting=True)]
            for _ in range(10):
                await c.post("/graph/contacts/sp", json=graph_body())
            await receiver.drain()
            assert len(emitted) == 1
            # it is running now (it may have read already): one more run is queued ...
            runs.runs = [RunInfo("run-1", waiting=False)]
            await c.post("/graph/contacts/sp", json=graph_body())
            await receiver.drain()
            assert len(emitted) == 2
            # ... and while that one waits for the slot, the burst goes on without more runs
            for _ in range(20):
                await c.post("/graph/contacts/sp", json=graph_body())
            await receiver.drain()
            runs.runs.append(RunInfo("run-2", waiting=True))
            for _ in range(20):
                await c.post("/graph/contacts/sp", json=graph_body())
            await receiver.drain()
            return answers

    answers = run(go())
    assert all(a.status_code == 202 for a in answers)
    assert len(emitted) == 2
    assert receiver.stats.coalesced >= 29 + 10 + 40


def test_debouncer_asks_again_once_the_event_should_have_become_a_run():
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    runs = FakeRuns()
    debouncer = Debouncer(runs, settle=30, clock=lambda: now[0])

    async def go():
        first = await debouncer.needs_run("s")
        now[0] += timedelta(seconds=5)
        soon = await debouncer.needs_run("s")  # the event's run is not visible yet
        now[0] += timedelta(seconds=40)
        late = await debouncer.needs_run("s")  # the trigger never fired: ask again
        return first, soon, late

    assert run(go()) == (True, False, True)


def test_debouncer_emits_when_the_api_cannot_be_read():
    async def broken(sync):
        raise httpx.ConnectError("down")

    assert run(Debouncer(broken).needs_run("s")) is True


def test_secrets_are_cached_and_read_off_the_event_loop():
    calls = []

    def source(sync, system):
        calls.append((sync, system))
        return SECRET

    cache = CachedSecrets(source, ttl=60)

    async def go():
        return [await cache.get("a", "b") for _ in range(5)]

    assert all(s is SECRET for s in run(go()))
    assert calls == [("a", "b")]
    assert "s3cret" not in repr(SECRET)


def test_health_counts():
    receiver, _, _ = make()

    async def go():
        async with client(receiver) as c:
            await c.post("/graph/contacts/sp", json=graph_body("bad"))
            await c.post("/graph/contacts/sp", params={"validationToken": "t"})
            return (await c.get("/healthz")).json()

    health = run(go())
    assert health["refused"] == 1 and health["handshakes"] == 1 and health["received"] == 1


def directus_post(receiver: Receiver, body, headers: dict[str, str]):
    async def go():
        async with client(receiver) as c:
            answer = await c.post("/directus/contacts/cms", json=body, headers=headers)
            await receiver.drain()
            return answer

    return run(go())


def test_a_directus_event_hook_with_the_shared_secret_gets_202_and_one_event():
    receiver, _, emitted = make()
    body = {"event": "contacts.items.update", "collection": "contacts", "keys": ["3"]}
    answer = directus_post(receiver, body, {SECRET_HEADER: SECRET.get_secret_value()})
    assert answer.status_code == 202
    assert emitted == [
        ("contacts", {"source": "directus", "system": "cms", "event": "contacts.items.update"})
    ]


@pytest.mark.parametrize("given", [None, "wrong", SECRET.get_secret_value() + "x"])
def test_a_directus_event_hook_without_the_right_secret_is_refused(given):
    receiver, _, emitted = make()
    headers = {} if given is None else {SECRET_HEADER: given}
    answer = directus_post(receiver, {"event": "items.create"}, headers)
    assert answer.status_code == 401 and emitted == []
    assert SECRET.get_secret_value() not in answer.text


@pytest.mark.parametrize("body", [{"event": "users.login"}, {"no": "event"}, ["items.create"]])
def test_a_directus_body_that_is_no_item_event_gets_400(body):
    receiver, _, emitted = make()
    answer = directus_post(receiver, body, {SECRET_HEADER: SECRET.get_secret_value()})
    assert answer.status_code == 400 and emitted == []


def _sharepoint_sync(tmp_path, graph_url: str | None = None) -> str:
    """A definition file with one SharePoint list (on Graph itself unless ``graph_url``)."""
    where = f", graph_url: '{graph_url}'" if graph_url else ""
    path = tmp_path / "sp.sync.yaml"
    path.write_text(
        "name: sp-sync\n"
        "systems:\n"
        "  crm: {kind: sql, url: 'sqlite:///crm.db', table: contacts}\n"
        f"  sp: {{kind: sharepoint, tenant: contoso, list: People, block: sp-creds{where}}}\n"
        "fields:\n"
        "  email: {crm: email, sp: Email}\n",
        encoding="utf-8",
    )
    return str(path)


@pytest.mark.parametrize(
    "public_url", ["http://hooks.example.com", "https://127.0.0.1:8787", "https://localhost"]
)
def test_subscribing_on_graph_refuses_a_url_it_cannot_call_in_one_line_with_exit_2(
    tmp_path, monkeypatch, capsys, public_url
):
    import blocks.base
    from twoway import cli

    def no_block(*args, **kwargs):
        raise AssertionError("no block may be loaded before the URL is checked")

    monkeypatch.setattr(blocks.base, "load_block", no_block)
    path = _sharepoint_sync(tmp_path)
    assert cli.main(["webhooks", "subscribe", path, "--public-url", public_url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: notification URL ")
    assert "public HTTPS" in err[0] and "graph.microsoft.com" in err[0]


def test_subscribing_against_a_simulated_tenant_takes_a_loopback_url(tmp_path, monkeypatch):
    import blocks.base
    from twoway import webhooks

    asked: list[str] = []

    def no_secret(name, where):
        asked.append(where)
        return None

    monkeypatch.setattr(blocks.base, "load_block", no_secret)
    path = _sharepoint_sync(tmp_path, graph_url="http://127.0.0.1:8765")
    with pytest.raises(DefinitionError, match="no webhook_secret"):
        webhooks.subscribe(path, "http://127.0.0.1:8787")
    assert asked == ["systems.sp"]  # the secret of the definition's own file, by its path
