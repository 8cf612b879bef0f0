"""docs/operations.md from an empty machine, against a real Prefect server: the demo data
where TWOWAY_DEMO_DIR says, `prefect deploy --all` with no schedule that would fail, and
the SharePoint demo's simulator and block, after which its sync runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_simulate_cli import free_port
from twoway import cli

pytestmark = pytest.mark.usefixtures("prefect_api")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_the_documented_setup_deploys_nothing_that_fails_and_the_sharepoint_demo_runs(
    tmp_path, monkeypatch, capsys
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL
    from pydantic import SecretStr

    from blocks.credentials import IntegrationAccountCredentials
    from flows.twoway_flows import two_way_sync

    demo = tmp_path / "demo"
    monkeypatch.setenv("TWOWAY_DEMO_DIR", str(demo))
    monkeypatch.setenv("TWOWAY_SYNCS_DIR", str(REPO / "syncs"))
    # 3. the demo data, where the definitions of ./syncs read it
    assert cli.main(["demo", "--sql", "--records", "30"]) == 0
    assert (demo / "crm.db").is_file() and (demo / "portal.db").is_file()

    # 4. the pool and every deployment of prefect.yaml
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="twoway-process", type="process"))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    deployed = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    with get_client(sync_client=True) as client:
        contacts = client.read_deployment_by_name("twoway-sync/contacts")
        sharepoint = client.read_deployment_by_name("twoway-sync/sharepoint-contacts")
    assert [s.active for s in contacts.schedules] == [True]
    assert [s.active for s in sharepoint.schedules] == [False]  # nothing scheduled to fail

    # the SharePoint demo, as the docs set it up: the simulator and the saved block
    port = free_port()
    simulator = subprocess.Popen(
        [
            str(BIN / "twoway"),
            "simulate",
            "sharepoint",
            "--port",
            str(port),
            "--tenant",
            "twoway-demo",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "twoway-demo/oauth2/v2.0/token" in "".join(
            simulator.stdout.readline() for _ in range(2)
        )
        monkeypatch.setenv("TWOWAY_GRAPH_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv(
            "TWOWAY_GRAPH_TOKEN_URL", f"http://127.0.0.1:{port}/twoway-demo/oauth2/v2.0/token"
        )
        IntegrationAccountCredentials(
            client_id="twoway",
            client_secret=SecretStr("twoway-secret"),
            webhook_secret=SecretStr("a long random string"),
        ).save("sharepoint-demo", overwrite=True)
        state = two_way_sync(definition="sharepoint-contacts", return_state=True)
        assert state.is_completed(), state.message
        counts = state.result()["systems"]
        assert counts["sharepoint"]["created"] == counts["crm"]["extracted"] > 0
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
