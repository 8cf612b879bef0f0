"""The review and the overview as an operator meets them: a started Prefect server,
`prefect deploy --all` from this repository (the demo sync set to hold conflicts for a
person), a process worker and a headless Chromium on the UI.

A sync run holds a conflict and parks a record; the overview page shows the counts; the
review deployment's run pauses and its Resume form shows both values, when each changed
and the record's e-mail; the test resumes it through the API, and the next deployment run
writes the chosen value everywhere, retries the letter and names the decision.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.e2e.cdp import Browser, chromium_path
from tests.e2e.test_deployed import (
    BIN,
    POOL,
    REPO,
    Stack,
    _demo_databases,
    _deployment_run,
    _runs,
    _stop,
    start_server,
    start_worker,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("review-e2e")
    s = Stack(tmp)
    syncs = tmp / "syncs"
    syncs.mkdir()
    contacts = yaml.safe_load((REPO / "syncs" / "contacts.sync.yaml").read_text())
    contacts["conflicts"] = "manual"
    (syncs / "contacts.sync.yaml").write_text(yaml.safe_dump(contacts))
    shutil.copy(REPO / "syncs" / "sharepoint-contacts.sync.yaml", syncs)
    s.env["TWOWAY_SYNCS_DIR"] = str(syncs)
    _demo_databases(s.demo)
    try:
        start_server(s)
        with temporary_settings(updates={PREFECT_API_URL: s.api}):
            pool = s.run(str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process")
            assert pool.returncode == 0, pool.stdout + pool.stderr
            deploy = s.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--all")
            assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
            start_worker(s)
            yield s
    finally:
        for proc in reversed(s.procs):
            _stop(proc)


def _sql(db: Path, statement: str, *args) -> list:
    with sqlite3.connect(db) as conn:
        return conn.execute(statement, args).fetchall()


def _wait_state(stack: Stack, flow_run_id, check, timeout: float = 120):
    deadline = time.monotonic() + timeout
    with stack.client() as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and check(run.state):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{run.name} is {run.state}; worker log:\n{stack.log('worker')[-3000:]}"
                )
            time.sleep(0.5)


def _artifacts(stack: Stack, flow_run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with stack.client() as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.type: a for a in found}


def _overview(stack: Stack):
    """The latest version of the contacts sync's overview artifact."""
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    with stack.client() as client:
        (latest,) = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=["twoway-contacts-overview"])
            )
        )
    return latest


def _stamp(minutes_ago: float) -> str:
    return f"{datetime.now(UTC) - timedelta(minutes=minutes_ago):%Y-%m-%d %H:%M:%S.%f}"


def test_review_in_the_ui_from_held_conflict_to_written_decision(stack):
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    executable = chromium_path()
    if executable is None:
        pytest.fail("chromium is not installed: run scripts/ui-deps as root (scripts/test does)")
    crm, portal = stack.demo / "crm.db", stack.demo / "portal.db"
    first = _deployment_run(stack, "twoway-sync/contacts")
    assert first.returncode == 0, first.stdout[-3000:] + stack.log("worker")[-3000:]

    # a person on each side edits p1's first name; the portal refuses any write to p2
    crm_time, portal_time = _stamp(2), _stamp(1)
    _sql(
        crm,
        "UPDATE contacts SET first_name = 'From CRM', updated_at = ?, updated_by = 'maria@crm' "
        "WHERE email = 'p1@example.com'",
        crm_time,
    )
    _sql(
        portal,
        "UPDATE people SET fname = 'From Portal', modified = ?, editor = 'paul@portal' "
        "WHERE mail = 'p1@example.com'",
        portal_time,
    )
    _sql(
        portal,
        "CREATE TRIGGER refuse BEFORE UPDATE ON people WHEN OLD.mail = 'p2@example.com' "
        "BEGIN SELECT RAISE(ABORT, 'the portal refuses p2'); END",
    )
    _sql(
        crm,
        "UPDATE contacts SET last_name = 'Parked', updated_at = ?, updated_by = 'maria@crm' "
        "WHERE email = 'p2@example.com'",
        crm_time,
    )
    held = _deployment_run(stack, "twoway-sync/contacts")
    assert held.returncode == 0, held.stdout[-3000:]
    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        overview = _overview(stack)
        assert (
            overview.description
            == "contacts: 16 linked records, 1 open conflicts, 1 dead letters (1 new)"
        )
        review = run_deployment("twoway-review/contacts-review", timeout=0)
        paused = _wait_state(stack, review.id, lambda s: s.is_paused())

    ui = stack.api.removesuffix("/api")
    browser = Browser(executable)
    try:
        # the sync's overview: its key's page shows the summary, its latest version the table
        browser.goto(f"{ui}/artifacts/key/twoway-contacts-overview")
        browser.wait_for_text("twoway-contacts-overview", overview.description)
        browser.goto(f"{ui}/artifacts/artifact/{overview.latest_id}")
        page = browser.wait_for_text("linked records", "open conflicts", "Last runs", "Review")
        browser.screenshot(stack.tmp / "overview.png")
        rows = [" ".join(line.split()) for line in page.splitlines()]
        assert any(r.startswith("crm 8 1 0 0 ") for r in rows), page[:3000]
        assert any(r.startswith("portal 8 1 1 1 ") for r in rows), page[:3000]
        assert any(r.startswith("1 new portal p2@example.com update 1 ") for r in rows), page[:3000]
        assert "twoway-review/contacts-review" in page

        # the runs list names what the sync run held and parked in its state
        browser.goto(f"{ui}/runs")
        browser.wait_for_text("Completed, 1 held, 1 parked")
        browser.screenshot(stack.tmp / "runs.png")

        browser.goto(f"{ui}/runs/flow-run/{paused.id}")
        browser.wait_for_text("contacts: review", "Paused")
        assert browser.click_text("Resume")
        form = browser.wait_for_text("Conflict #1: first_name of p1@example.com")
        browser.screenshot(stack.tmp / "review-form.png")
        assert f'crm: "From CRM" (changed {crm_time[:19]} UTC)' in form, form[:4000]
        assert f'portal: "From Portal" (changed {portal_time[:19]} UTC)' in form, form[:4000]
        assert "Dead letter #1: update of p2@example.com in portal" in form, form[:4000]
    finally:
        browser.close()

    _sql(portal, "DROP TRIGGER refuse")
    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        resume_flow_run(
            paused.id,
            run_input={
                "conflict_1": 'keep portal: "From Portal"',
                "dead_letter_1": "retry",
                "decided_by": "operator",
            },
        )
        done = _wait_state(stack, review.id, lambda s: s.is_final())
    assert done.state.is_completed() and done.state.name == "Completed, 2 decided", done.state

    applied = _deployment_run(stack, "twoway-sync/contacts")
    assert applied.returncode == 0, applied.stdout[-3000:]
    assert _sql(crm, "SELECT first_name FROM contacts WHERE email = 'p1@example.com'") == [
        ("From Portal",)
    ]
    assert _sql(portal, "SELECT fname FROM people WHERE mail = 'p1@example.com'") == [
        ("From Portal",)
    ]
    assert _sql(portal, "SELECT lname FROM people WHERE mail = 'p2@example.com'") == [("Parked",)]
    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        last = max(
            (r for r in _runs(stack, "twoway-sync/contacts") if r.state.is_completed()),
            key=lambda r: r.start_time,
        )
        report = _artifacts(stack, last.id)["markdown"].data
    assert "conflict #1 decided: kept portal for first_name (by operator, " in report
    assert "dead letter #1 retried (by operator, " in report

    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        refreshed_by_the_run = _overview(stack)
    status = stack.run(str(BIN / "twoway"), "status", "contacts")
    assert status.returncode == 0, status.stderr
    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        latest = _overview(stack)
    assert latest.latest_id != refreshed_by_the_run.latest_id  # `twoway status` refreshed it
    assert latest.description == (
        "contacts: 16 linked records, 0 open conflicts, 0 dead letters (0 new)"
    )
