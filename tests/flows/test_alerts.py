"""The automation of prefect.yaml on a real Prefect server: `twoway alerts create` makes
it with a saved notification block, and a run that holds a conflict sets it off."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.twoway_flows import two_way_sync
from tests.syncrig import sync_rig
from twoway import cli

pytestmark = pytest.mark.usefixtures("prefect_api")

PROJECT = Path(__file__).resolve().parents[2] / "prefect.yaml"


class _Inbox(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append(json.loads(body or b"{}"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_automation_notifies_when_a_run_holds_a_conflict(tmp_path, capsys):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Inbox)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = f"alerts-{uuid.uuid4().hex[:8]}"
        CustomWebhookNotificationBlock(
            name="twoway",
            url=f"http://127.0.0.1:{server.server_address[1]}/notify",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        ).save(name)
        assert (
            cli.main(["alerts", "create", f"custom-webhook/{name}", "--project", str(PROJECT)]) == 0
        )
        assert "automation 'twoway sync needs attention' created" in capsys.readouterr().out
        with get_client(sync_client=True) as client:
            (automation,) = client.read_automations_by_name("twoway sync needs attention")
        assert automation.trigger.expect == {
            "twoway.sync.failed",
            "twoway.conflict.held",
            "twoway.deadletter.parked",
        }

        with sync_rig(tmp_path, conflicts="manual") as rig:
            rig.add("s0", "alert@example.com", "A", "B")
            two_way_sync(definition=str(rig.path))
            rig.edit("s1", "alert@example.com", first_name="Left")
            rig.edit("s0", "alert@example.com", first_name="Right")
            two_way_sync(definition=str(rig.path))
            sync = rig.doc["name"]
        deadline = time.monotonic() + 60
        while not _Inbox.received and time.monotonic() < deadline:
            time.sleep(0.5)
        (note,) = _Inbox.received
        assert note["subject"] == f"twoway: {sync} needs attention"
        assert note["body"].startswith(f"twoway.conflict.held: {sync}: 1 conflicts held")
    finally:
        server.shutdown()
