"""End to end, as an operator runs twoway: a started Prefect server, `prefect deploy --all`
from this repository, a process worker, the webhook receiver, the Graph simulator and a
headless Chromium looking at the UI.

One server, one worker and one receiver for the whole module (a few minutes in all). The
server's scheduler is off so that no polling run interleaves with what a test measures;
the schedules themselves are checked on the deployments.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.e2e.cdp import Browser, chromium_path
from twoway.webhooks import SIGNATURE_HEADER, sign, signed_headers

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "twoway-process"
WORKER_QUERY_SECONDS = "1"
WORKER_PREFETCH_SECONDS = "5"
WEBHOOK_SECRET = "e2e-" + uuid.uuid4().hex
TENANT = "twoway-demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


class Stack:
    """Everything the module started, and helpers to look at it."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.demo = tmp / "demo"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_UI_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS,
            "PREFECT_LOGGING_LEVEL": "INFO",
            "TWOWAY_DEMO_DIR": str(self.demo),
            "TWOWAY_SYNCS_DIR": str(REPO / "syncs"),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("PREFECT_PROFILE", None)

    def start(self, name: str, *args: str, cwd: Path = REPO) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args),
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self):
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)


def _demo_databases(folder: Path) -> None:
    """The demo's two SQLite databases with a handful of contacts."""
    from twoway.demo import CRM, PORTAL, _Side

    folder.mkdir(parents=True, exist_ok=True)
    when = datetime.now(UTC) - timedelta(hours=1)
    crm = _Side(folder, "crm.db", CRM, "maria@crm")
    portal = _Side(folder, "portal.db", PORTAL, "paul@portal")
    people = [
        {"email": f"p{i}@example.com", "first": f"F{i}", "last": f"L{i}", "phone": f"+1 555 {i:04}"}
        for i in range(8)
    ]
    crm.insert(people[:5], when)
    portal.insert(people[3:], when)


def _emails(db: Path, table: str, column: str) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute(f"SELECT {column} FROM {table}")}


def start_server(s: Stack) -> None:
    """A Prefect server on the stack's port, once it answers."""
    server = s.start(
        "server",
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(s.port),
    )
    _wait_http(f"{s.api}/health", 90, server)


def start_worker(s: Stack) -> None:
    """A process worker on the stack's pool."""
    s.start(
        "worker",
        str(BIN / "prefect"),
        "worker",
        "start",
        "--pool",
        POOL,
        "--prefetch-seconds",
        WORKER_PREFETCH_SECONDS,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks.credentials import IntegrationAccountCredentials
    from twoway.simulators.graph import GraphState, create_app
    from twoway.simulators.server import BackgroundServer

    tmp = tmp_path_factory.mktemp("e2e")
    s = Stack(tmp)
    _demo_databases(s.demo)
    graph = GraphState(
        client_id="twoway",
        client_secret="twoway-secret",
        display_name="twoway-sync",
        tenant_id=TENANT,
    )
    sim = BackgroundServer(create_app(graph)).start()
    s.graph, s.sim = graph, sim
    s.env["TWOWAY_GRAPH_URL"] = sim.url
    s.env["TWOWAY_GRAPH_TOKEN_URL"] = f"{sim.url}/{TENANT}/oauth2/v2.0/token"
    try:
        start_server(s)
        with temporary_settings(updates={PREFECT_API_URL: s.api}):
            IntegrationAccountCredentials(
                client_id="twoway", client_secret="twoway-secret", webhook_secret=WEBHOOK_SECRET
            ).save("sharepoint-demo", overwrite=True)
            pool = s.run(str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process")
            assert pool.returncode == 0, pool.stdout + pool.stderr
            started = time.monotonic()
            s.deploy = s.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--all")
            s.deploy_seconds = time.monotonic() - started
            start_worker(s)
            s.receiver_port = _free_port()
            receiver = s.start(
                "receiver",
                str(BIN / "twoway"),
                "webhooks",
                "serve",
                "--port",
                str(s.receiver_port),
            )
            _wait_http(f"http://127.0.0.1:{s.receiver_port}/healthz", 30, receiver)
            yield s
    finally:
        for proc in reversed(s.procs):
            _stop(proc)
        sim.stop()
        graph.close()


def _deployment_run(stack: Stack, name: str, *params: str) -> subprocess.CompletedProcess:
    args = [str(BIN / "prefect"), "deployment", "run", name, "--watch", "--watch-timeout", "150"]
    for p in params:
        args += ["--param", p]
    return stack.run(*args, timeout=200)


def _runs(stack: Stack, deployment: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with stack.client() as client:
        dep = client.read_deployment_by_name(deployment)
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        )


def _wait_runs_settled(stack: Stack, deployment: str, timeout: float = 120) -> list:
    """Wait until no run of the deployment is scheduled, pending or running."""
    deadline = time.monotonic() + timeout
    while True:
        runs = _runs(stack, deployment)
        busy = [r for r in runs if r.state and not r.state.is_final()]
        if not busy:
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(f"runs still busy: {[(r.name, r.state.name) for r in busy]}")
        time.sleep(0.5)


def _task_runs(stack: Stack, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with stack.client() as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


@pytest.fixture(scope="module")
def api(stack):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        yield stack


def test_deploy_all_creates_the_deployments_as_written(api):
    assert api.deploy.returncode == 0, api.deploy.stdout[-3000:] + api.deploy.stderr[-3000:]
    with api.client() as client:
        contacts = client.read_deployment_by_name("twoway-sync/contacts")
        sharepoint = client.read_deployment_by_name("twoway-sync/sharepoint-contacts")
    for dep, sync in ((contacts, "contacts"), (sharepoint, "sharepoint-contacts")):
        assert dep.work_pool_name == POOL
        assert dep.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
        assert dep.parameters == {"definition": sync}
        assert {"twoway", f"sync:{sync}"} <= set(dep.tags)
        assert dep.global_concurrency_limit is not None
        assert dep.global_concurrency_limit.limit == 1
        assert dep.concurrency_options.collision_strategy.value == "ENQUEUE"
        props = dep.parameter_openapi_schema["properties"]
        assert props["definition"]["enum"] == ["contacts", "sharepoint-contacts"]
        assert props["dry_run"]["type"] == "boolean" and props["full"]["type"] == "boolean"
        assert "enum" in props["direction"] and "pattern" not in props["direction"]
        assert dep.enforce_parameter_schema
    assert contacts.schedules[0].schedule.interval == timedelta(seconds=300)
    assert sharepoint.schedules[0].schedule.cron == "*/10 * * * *"
    # off until its block and simulator exist: a fresh setup has no failing scheduled run
    assert contacts.schedules[0].active and not sharepoint.schedules[0].active
    assert props["direction"]["enum"][0] == "both" and "crm -> portal" in props["direction"]["enum"]


def test_a_deployment_run_completes_and_syncs_the_demo_systems(api):
    done = _deployment_run(api, "twoway-sync/contacts")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Completed" in done.stdout
    crm = _emails(api.demo / "crm.db", "contacts", "email")
    portal = _emails(api.demo / "portal.db", "people", "mail")
    assert crm == portal == {f"p{i}@example.com" for i in range(8)}
    (run,) = [r for r in _runs(api, "twoway-sync/contacts") if r.state.is_completed()]
    assert run.name == "contacts: run"
    assert "portal: " in run.state.message and "+3" in run.state.message
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with api.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    kinds = {a.type: a for a in artifacts}
    assert set(kinds) == {"markdown", "table", "progress"}
    assert "| crm | 5 | 0 | 0 | 3 |" in kinds["markdown"].data
    assert kinds["progress"].data == 100.0
    history = api.run(str(BIN / "twoway"), "history", "contacts")
    assert history.returncode == 0, history.stderr
    assert "contacts: run" in history.stdout and "Completed" in history.stdout


def test_an_unknown_definition_is_refused_when_the_run_is_created(api):
    before = len(_runs(api, "twoway-sync/contacts"))
    refused = api.run(
        str(BIN / "prefect"),
        "deployment",
        "run",
        "twoway-sync/contacts",
        "--param",
        "definition=no-such-sync",
    )
    output = refused.stdout + refused.stderr
    assert "Validation failed for field 'definition'" in output, output
    assert "'no-such-sync' is not one of ['contacts', 'sharepoint-contacts']" in " ".join(
        output.split()
    )
    from prefect.exceptions import PrefectHTTPStatusError

    with api.client() as client:
        dep = client.read_deployment_by_name("twoway-sync/contacts")
        with pytest.raises(PrefectHTTPStatusError, match="is not one of"):
            client.create_flow_run_from_deployment(dep.id, parameters={"definition": "nope"})
        with pytest.raises(PrefectHTTPStatusError, match="direction"):
            client.create_flow_run_from_deployment(
                dep.id, parameters={"definition": "contacts", "direction": "crm to portal"}
            )
    assert len(_runs(api, "twoway-sync/contacts")) == before


def test_two_runs_started_together_never_overlap(api):
    from prefect.deployments import run_deployment

    _wait_runs_settled(api, "twoway-sync/contacts")
    first = run_deployment("twoway-sync/contacts", timeout=0, parameters={"full": True})
    second = run_deployment("twoway-sync/contacts", timeout=0, parameters={"full": True})
    _wait_runs_settled(api, "twoway-sync/contacts", timeout=150)
    windows = []
    with api.client() as client:
        for started in (first, second):
            run = client.read_flow_run(started.id)
            assert run.state.is_completed(), (run.name, run.state)
            tasks = _task_runs(api, started.id)
            # at least each system's read and the commit (a run with nothing to work on
            # plans no chunk: it commits its cursors only)
            assert len(tasks) >= 3 and any(t.name == "commit state" for t in tasks)
            windows.append(
                (min(t.start_time for t in tasks), max(t.end_time for t in tasks), run.id)
            )
    windows.sort()
    (a_start, a_end, _), (b_start, b_end, _) = windows
    assert a_end <= b_start, f"task runs interleave: {windows}"


def _sharepoint_value(api: Stack, email: str) -> dict | None:
    with sqlite3.connect(api.demo / "crm.db") as conn:
        row = conn.execute(
            "SELECT first_name, updated_by FROM contacts WHERE email = ?", (email,)
        ).fetchone()
    return {"first_name": row[0], "by": row[1]} if row else None


def test_a_graph_notification_starts_a_run_that_carries_the_change(api):
    receiver = f"http://127.0.0.1:{api.receiver_port}"
    subscribed = api.run(
        str(BIN / "twoway"),
        "webhooks",
        "subscribe",
        "sharepoint-contacts",
        "--public-url",
        receiver,
        "--json",
    )
    assert subscribed.returncode == 0, subscribed.stdout + subscribed.stderr
    (sub,) = json.loads(subscribed.stdout)
    assert sub["action"] == "created"
    assert sub["notificationUrl"] == f"{receiver}/graph/sharepoint-contacts/sharepoint"
    assert list(api.graph.subscriptions) == [sub["id"]]
    assert WEBHOOK_SECRET not in subscribed.stdout + subscribed.stderr
    again = api.run(
        str(BIN / "twoway"),
        "webhooks",
        "subscribe",
        "sharepoint-contacts",
        "--public-url",
        receiver,
        "--json",
    )
    assert json.loads(again.stdout)[0]["action"] == "renewed"

    # the first run links and copies the CRM into the list; our own writes notify too,
    # which is at most one more run (that finds only echoes)
    first = _deployment_run(api, "twoway-sync/sharepoint-contacts")
    assert first.returncode == 0, first.stdout[-3000:]
    assert api.graph.count("Contacts") == 8
    settled = _wait_runs_settled(api, "twoway-sync/sharepoint-contacts")
    known = {r.id for r in settled}

    item = next(
        i
        for i in api.graph.get_list("Contacts").items.values()
        if i.fields.get("Email") == "p2@example.com"
    )
    t0, edited_at = time.monotonic(), datetime.now(UTC)
    api.graph.user_update("Contacts", item.id, {"FirstName": "Changed in SharePoint"}, user="Sam")
    deadline = t0 + 90
    while (_sharepoint_value(api, "p2@example.com") or {}).get("first_name") != (
        "Changed in SharePoint"
    ):
        assert time.monotonic() < deadline, api.log("receiver")[-3000:] + api.log("worker")[-3000:]
        time.sleep(0.1)
    latency = time.monotonic() - t0
    assert _sharepoint_value(api, "p2@example.com")["by"] == "svc-sharepoint"
    runs = _wait_runs_settled(api, "twoway-sync/sharepoint-contacts")
    new = [r for r in runs if r.id not in known]
    assert new and all(r.state.is_completed() for r in new)
    assert all(r.created > edited_at for r in new)  # started by the change, after it
    assert all(r.created_by is not None and r.created_by.type == "AUTOMATION" for r in new)
    assert len(new) <= 2  # one for the change; at most one more for our own write's echo
    (api.tmp / "latency.json").write_text(
        json.dumps(
            {
                "notification_to_converged_seconds": round(latency, 2),
                "worker_query_seconds": WORKER_QUERY_SECONDS,
                "worker_prefetch_seconds": WORKER_PREFETCH_SECONDS,
            }
        )
    )
    print(
        f"\nchange-notification-to-converged: {latency:.2f} s "
        f"(PREFECT_WORKER_QUERY_SECONDS={WORKER_QUERY_SECONDS}, "
        f"--prefetch-seconds {WORKER_PREFETCH_SECONDS})"
    )


def test_forged_notifications_are_refused_and_start_nothing(api):
    receiver = f"http://127.0.0.1:{api.receiver_port}"
    before = {r.id for r in _wait_runs_settled(api, "twoway-sync/sharepoint-contacts")}
    counted = httpx.get(f"{receiver}/healthz", trust_env=False).json()
    forged_graph = httpx.post(
        f"{receiver}/graph/sharepoint-contacts/sharepoint",
        json={"value": [{"subscriptionId": "x", "clientState": "guess", "changeType": "updated"}]},
        trust_env=False,
    )
    body = json.dumps({"changed": ["p1@example.com"]}).encode()
    forged_hmac = httpx.post(
        f"{receiver}/notify/sharepoint-contacts/sharepoint",
        content=body,
        headers={
            SIGNATURE_HEADER: sign(body, "not-the-secret"),
            "Content-Type": "application/json",
        },
        trust_env=False,
    )
    unsigned = httpx.post(
        f"{receiver}/notify/sharepoint-contacts/sharepoint", content=body, trust_env=False
    )
    assert (forged_graph.status_code, forged_hmac.status_code, unsigned.status_code) == (
        401,
        401,
        401,
    )
    # a genuine notification sent after them: once its run has come and gone, the forged
    # ones (queued first) have been handled, and any of them let through counted
    genuine = httpx.post(
        f"{receiver}/notify/sharepoint-contacts/sharepoint",
        content=body,
        headers=signed_headers(body, WEBHOOK_SECRET),
        trust_env=False,
    )
    assert genuine.status_code == 202
    deadline = time.monotonic() + 90
    while not {r.id for r in _runs(api, "twoway-sync/sharepoint-contacts")} - before:
        assert time.monotonic() < deadline, api.log("receiver")[-3000:]
        time.sleep(0.2)
    new = {r.id for r in _wait_runs_settled(api, "twoway-sync/sharepoint-contacts")} - before
    health = httpx.get(f"{receiver}/healthz", trust_env=False).json()
    assert len(new) == 1  # the genuine notification's run, which finds nothing to write
    delta = {k: health[k] - counted[k] for k in ("refused", "emitted", "coalesced", "errors")}
    assert delta == {"refused": 3, "emitted": 1, "coalesced": 0, "errors": 0}, delta


def test_the_ui_shows_the_run_and_its_report(api):
    executable = chromium_path()
    if executable is None:
        pytest.fail("chromium is not installed: run scripts/ui-deps as root (scripts/test does)")
    # the first run, which created records: it has all three artifacts
    (run,) = [r for r in _runs(api, "twoway-sync/contacts") if r.name == "contacts: run"]
    ui = api.api.removesuffix("/api")
    browser = Browser(executable)
    try:
        browser.goto(f"{ui}/runs/flow-run/{run.id}")
        browser.wait_for_text(run.name, "Completed", "Artifacts")
        assert browser.click_text("Artifacts")
        text = browser.wait_for_text("twoway-contacts-report", "contacts run of")
        shot = browser.screenshot(api.tmp / "flow-run.png")
        assert shot.stat().st_size > 10_000
        assert run.name in text and "twoway-contacts-changes" in text
        assert browser.click_text("twoway-contacts-report")
        report = browser.wait_for_text("contacts run of", "echoes skipped")
        browser.screenshot(api.tmp / "report.png")
        assert "Completed" in report and "crm" in report and "portal" in report
    finally:
        browser.close()
