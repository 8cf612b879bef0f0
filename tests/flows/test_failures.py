"""A run that fails for a known reason, against a real Prefect API: a Failed state whose
message is one line naming the system and what is wrong, one error line in the log, the
report artifact still published, no traceback; ``twoway run`` prints that line, exit 1."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from flows.twoway_flows import two_way_sync
from tests.flows.runs import run_logs, sync_events
from tests.integration.test_simulate_cli import free_port  # nothing listens there
from twoway.simulators.graph import GraphState, create_app
from twoway.simulators.server import BackgroundServer

pytestmark = pytest.mark.usefixtures("prefect_api")

SECRET = "graph-" + uuid.uuid4().hex
TENANT = "contoso"


def _definition(tmp_path: Path, url: str, **sharepoint) -> Path:
    """A SharePoint list and a SQLite table; ``sharepoint`` replaces keys of the list."""
    doc = {
        "name": "failing",
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "systems": {
            "sharepoint": {
                "kind": "sharepoint",
                "graph_url": url,
                "token_url": f"{url}/{TENANT}/oauth2/v2.0/token",
                "client_id": "twoway",
                "client_secret": "${FAILING_SECRET}",
                "site": "root",
                "list": "Contacts",
                "integration_account": "twoway-sync",
                "retry_attempts": 1,  # an unreachable service fails at once, not after backoff
                **sharepoint,
            },
            "crm": {
                "kind": "sql",
                "url": f"sqlite:///{tmp_path / 'crm.db'}",
                "table": "contacts",
                "key": "id",
                "modified_at": "updated_at",
                "modified_by": "updated_by",
                "integration_account": "svc",
            },
        },
        "fields": {
            "email": {"sharepoint": "Email", "crm": "email"},
            "first_name": {"sharepoint": "FirstName", "crm": "first_name"},
        },
        "match_on": ["email"],
    }
    with sqlite3.connect(tmp_path / "crm.db") as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS contacts (id INTEGER PRIMARY KEY, email TEXT, "
            "first_name TEXT, updated_at TEXT, updated_by TEXT)"
        )
    if "block" in sharepoint:
        del doc["systems"]["sharepoint"]["client_id"], doc["systems"]["sharepoint"]["client_secret"]
    path = tmp_path / "failing.sync.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("FAILING_SECRET", SECRET)


@pytest.fixture
def graph():
    state = GraphState(client_id="twoway", client_secret=SECRET, tenant_id=TENANT)
    try:
        with BackgroundServer(create_app(state)) as server:
            yield server
    finally:
        state.close()


def _artifacts(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.type: a for a in found}


def _fails_with_one_line(path: Path, line: str) -> None:
    """The run ends Failed with ``line``: in its state, as the flow's one error log line,
    in its report artifact and its event; no traceback in any log of the run (the command
    run below shows the terminal)."""
    state = two_way_sync(definition=str(path), return_state=True)
    assert state.is_failed() and state.name == "Failed"
    assert state.message == line
    run_id = state.state_details.flow_run_id
    logs = run_logs(run_id)
    # one error line in all the run's logs, its task runs' included
    errors = [log.message for log in logs if log.level >= 40]
    assert errors == [line]
    assert not any("Traceback" in log.message for log in logs)
    report = _artifacts(run_id)["markdown"]
    assert f"**Error:** {line.removeprefix('failing failed: ')}" in report.data
    assert "Failed" in report.description
    (event,) = sync_events("failing", run_id, ["twoway.sync.failed"], expected=1)
    assert event.payload["error"] == line.removeprefix("failing failed: ")


def test_an_unreachable_system_fails_the_run_in_one_line(tmp_path):
    port = free_port()
    _fails_with_one_line(
        _definition(tmp_path, f"http://127.0.0.1:{port}"),
        f"failing failed: sharepoint: POST http://127.0.0.1:{port}/{TENANT}/oauth2/v2.0/token: "
        "ConnectError ([Errno 111] Connection refused)",
    )


def test_a_list_that_does_not_exist_fails_the_run_in_one_line(tmp_path, graph):
    _fails_with_one_line(
        _definition(tmp_path, graph.url, list="Nope"),
        f"failing failed: sharepoint: GET {graph.url}/v1.0/sites/root/lists/Nope/items/delta: "
        "answered 404: itemNotFound: List does not exist.",
    )


def test_a_saved_block_that_does_not_exist_fails_the_run_in_one_line(tmp_path):
    _fails_with_one_line(
        _definition(tmp_path, "http://127.0.0.1:9", block="no-such-block"),
        "failing failed: systems.sharepoint.block: no saved block 'no-such-block' "
        "(no block document with that name)",
    )


def test_a_table_that_does_not_exist_fails_the_run_in_one_line(tmp_path, graph):
    path = _definition(tmp_path, graph.url)
    with sqlite3.connect(tmp_path / "crm.db") as conn:
        conn.execute("DROP TABLE contacts")
    _fails_with_one_line(
        path,
        f"failing failed: crm: table 'contacts' in sqlite:///{tmp_path / 'crm.db'} does not exist",
    )


def test_a_refused_token_fails_the_run_in_one_line(tmp_path, graph, monkeypatch):
    monkeypatch.setenv("FAILING_SECRET", "not-the-secret")
    _fails_with_one_line(
        _definition(tmp_path, graph.url),
        f"failing failed: sharepoint: the token endpoint "
        f"{graph.url}/{TENANT}/oauth2/v2.0/token refused the client credentials "
        "(401 invalid_client AADSTS7000215)",
    )


def test_twoway_run_prints_the_line_and_exits_1(tmp_path):
    """The command, as a user runs it: the Failed state's line on stderr, exit code 1."""
    from prefect.settings import PREFECT_API_URL

    port = free_port()
    path = _definition(tmp_path, f"http://127.0.0.1:{port}")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "FAILING_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "twoway.cli", "run", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    line = (
        f"failing failed: sharepoint: POST http://127.0.0.1:{port}/{TENANT}/oauth2/v2.0/token: "
        "ConnectError ([Errno 111] Connection refused)"
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == line
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unexpected_error_keeps_its_traceback_with_secrets_masked(tmp_path, monkeypatch):
    """A bug is not a known failure: its traceback stays in the run's log, redacted."""
    from prefect import task

    from flows import steps
    from tasks.common import TASK_OPTIONS

    def broken(*args, **kwargs):
        raise RuntimeError("lost postgresql://svc:hunter2@db.internal/crm")

    monkeypatch.setattr(
        steps, "commit_state_task", task(broken, name="commit state", **TASK_OPTIONS)
    )
    path = _definition(tmp_path, "http://127.0.0.1:9")
    doc = yaml.safe_load(path.read_text())
    del doc["systems"]["sharepoint"]  # two SQL tables: no service to reach
    doc["systems"]["portal"] = {**doc["systems"]["crm"]}
    doc["fields"] = {f: {"crm": c["crm"], "portal": c["crm"]} for f, c in doc["fields"].items()}
    path.write_text(yaml.safe_dump(doc))
    state = two_way_sync(definition=str(path), return_state=True)
    assert state.is_failed()
    assert (
        state.message == "failing failed: RuntimeError: lost postgresql://svc:***@db.internal/crm"
    )
    logs = [log.message for log in run_logs(state.state_details.flow_run_id)]
    traces = [m for m in logs if "Traceback" in m]
    assert traces and all("in broken" in t and "svc:***@" in t for t in traces)
    assert not any("hunter2" in m for m in logs)


def test_the_sharded_flow_fails_in_one_line_too(tmp_path):
    from flows.sharded import sharded_sync

    path = _definition(tmp_path, "http://127.0.0.1:9", block="no-such-block")
    state = sharded_sync(definition=str(path), return_state=True)
    assert state.is_failed()
    assert state.message == (
        "failing failed: systems.sharepoint.block: no saved block 'no-such-block' "
        "(no block document with that name)"
    )
    bad = sharded_sync(definition=str(path), direction="crm -> nowhere", return_state=True)
    assert bad.is_failed() and "target 'nowhere' is not a system of failing" in bad.message
    logs = run_logs(bad.state_details.flow_run_id)
    assert not any("Traceback" in log.message for log in logs)
