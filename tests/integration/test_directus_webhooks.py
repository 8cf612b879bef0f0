"""Directus Flows with an event hook trigger reach ``twoway webhooks serve``: a real Directus
server calls the real receiver on 127.0.0.1 for item creates, updates and deletes."""

from __future__ import annotations

import time

from pydantic import SecretStr

from tests.contract.rig_directus import DirectusPerson
from tests.directus_server import DirectusServer
from twoway.simulators.server import BackgroundServer
from twoway.webhooks import SECRET_HEADER, CachedSecrets, Debouncer, Receiver

SECRET = "flow-shared-secret"


async def no_runs(sync: str) -> list:
    return []


def flow(server: DirectusServer, collection: str, url: str, secret: str) -> str:
    """The Flow the README describes: event hook on the collection -> Webhook / Request URL."""
    created = server.api(
        "POST",
        "/flows",
        json={
            "name": f"twoway {collection}",
            "status": "active",
            "trigger": "event",
            "accountability": "all",
            "options": {
                "type": "action",
                "scope": ["items.create", "items.update", "items.delete"],
                "collections": [collection],
            },
        },
    )
    operation = server.api(
        "POST",
        "/operations",
        json={
            "flow": created["id"],
            "key": "notify_twoway",
            "name": "Notify twoway",
            "type": "request",
            "position_x": 19,
            "position_y": 1,
            "options": {
                "method": "POST",
                "url": url,
                "headers": [
                    {"header": SECRET_HEADER, "value": secret},
                    {"header": "Content-Type", "value": "application/json"},
                ],
                "body": "{{$trigger}}",
            },
        },
    )
    server.api("PATCH", f"/flows/{created['id']}", json={"operation": operation["id"]})
    return created["id"]


def wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_directus_flow_starts_a_run_for_creates_updates_and_deletes(directus):
    server = directus
    collection = server.create_collection(["email", "first_name"])
    emitted: list[tuple[str, dict]] = []
    receiver = Receiver(
        secrets=CachedSecrets(lambda sync, system: SecretStr(SECRET)),
        debouncer=Debouncer(no_runs, settle=0),
        emit=lambda sync, payload: emitted.append((sync, payload)),
        known_sync=lambda sync: sync == "contacts",
    )
    flows = []
    try:
        with BackgroundServer(receiver.app()) as hooks:
            flows.append(flow(server, collection, f"{hooks.url}/directus/contacts/cms", SECRET))
            flows.append(flow(server, collection, f"{hooks.url}/directus/contacts/cms", "wrong"))
            person = DirectusPerson(server, collection, server.person)
            key = person.create({"email": "hook@example.com", "first_name": "Hu"})
            assert wait_for(lambda: len(emitted) == 1), (emitted, receiver.stats)
            person.update(key, {"first_name": "Hugo"})
            assert wait_for(lambda: len(emitted) == 2), (emitted, receiver.stats)
            person.delete(key)
            assert wait_for(lambda: len(emitted) == 3), (emitted, receiver.stats)
            assert wait_for(lambda: receiver.stats.refused == 3), receiver.stats
        events = [payload["event"] for _, payload in emitted]
        assert [e.rsplit(".", 2)[-2:] for e in events] == [
            ["items", "create"],
            ["items", "update"],
            ["items", "delete"],
        ]
        assert {sync for sync, _ in emitted} == {"contacts"}
        assert all(p["source"] == "directus" and p["system"] == "cms" for _, p in emitted)
    finally:
        for made in flows:
            server.api("DELETE", f"/flows/{made}")
        server.drop_collection(collection)
