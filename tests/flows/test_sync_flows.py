"""The flows against a real Prefect API: task runs on batches, artifacts, the CLI's run."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa

from flows.twoway_flows import one_way_sync, two_way_sync
from tests.flows.runs import task_runs
from tests.syncrig import sync_rig
from twoway import cli
from twoway.state import StateStore

pytestmark = pytest.mark.usefixtures("prefect_api")


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_two_way_flow_runs_steps_as_batched_tasks_and_publishes_a_report(tmp_path):
    with sync_rig(tmp_path) as rig:
        for i in range(40):
            rig.add("s0", f"a{i}@example.com", "A", f"L{i}")
        state = two_way_sync(definition=str(rig.path), return_state=True)
        assert state.is_completed()
        report = state.result()
        assert report["systems"]["s1"]["created"] == 40
        names = sorted(r.name for r in task_runs(state.state_details.flow_run_id, expected=6))
        assert names == sorted(
            [
                "extract s0",
                "extract s1",
                "map IDs",
                "compute field deltas",
                "load s1",
                "commit state",
            ]
        )  # a few tasks per run, never one per record
        artifacts = _artifacts(state.state_details.flow_run_id)
        kinds = {a.type for a in artifacts}
        assert {"markdown", "table"} <= kinds
        md = next(a for a in artifacts if a.type == "markdown").data
        assert "| s1 | 0 | 0 | 0 | 40 |" in md  # read, overlap re-reads, echoes, created


def test_a_full_run_reads_its_systems_at_once_in_processes_of_their_own(tmp_path):
    """A full reconciliation is CPU-bound in each read: the extract task runs of one flow
    run overlap, each reading its system in a process of its own."""
    with sync_rig(tmp_path) as rig:
        for i in range(30):
            rig.add("s0", f"f{i}@example.com", "F", f"L{i}")
        two_way_sync(definition=str(rig.path))
        rig.edit("s1", "f3@example.com", first_name="Changed")
        state = two_way_sync(definition=str(rig.path), full=True, return_state=True)
        report = state.result()
        assert (
            report["systems"]["s0"]["updated"] == 1 and report["systems"]["s0"]["extracted"] == 30
        )
        assert rig.row("s0", "f3@example.com")["first_name"] == "Changed"
        runs = task_runs(state.state_details.flow_run_id, expected=6)
        s0, s1 = sorted((r for r in runs if r.name.startswith("extract ")), key=lambda r: r.name)
        assert s0.start_time < s1.end_time and s1.start_time < s0.end_time


def test_one_way_flow_writes_only_the_target(tmp_path):
    with sync_rig(tmp_path) as rig:
        rig.add("s0", "from0@example.com")
        rig.add("s1", "from1@example.com")
        state = one_way_sync(definition=str(rig.path), source="s0", target="s1", return_state=True)
        assert state.is_completed()
        assert rig.data("s1") == [
            ("from0@example.com", "Ann", "Lee", None),
            ("from1@example.com", "Ann", "Lee", None),
        ]
        assert rig.row("s0", "from1@example.com") is None
        # the two-way run afterwards carries the rest, and nothing twice
        report = two_way_sync(definition=str(rig.path))
        assert report["systems"]["s0"]["created"] == 1 and report["systems"]["s1"]["created"] == 0


def test_cli_run_json_prints_exactly_one_object(tmp_path, capsys):
    with sync_rig(tmp_path) as rig:
        rig.add("s0", "j@example.com")
        started = time.monotonic()
        code = cli.main(["run", str(rig.path), "--json"])
        took = time.monotonic() - started
        out = capsys.readouterr().out
        assert code == 0
        report = json.loads(out)
        assert out.strip().count("\n") == 0
        assert report["status"] == "completed" and report["sync"] == rig.doc["name"]
        assert set(report["systems"]["s1"]) >= {
            "extracted",
            "echo_skipped",
            "created",
            "updated",
            "deleted",
            "failed",
        }
        assert report["systems"]["s1"]["created"] == 1
        # the run's own time, without start-up: positive, and less than the whole call took
        assert 0 < report["seconds"] < took


def test_cli_run_reports_a_failed_run_with_exit_1(tmp_path, capsys):
    with sync_rig(tmp_path) as rig:
        with rig.engines["s1"].begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {rig.tables['s1'].name}"))
        code = cli.main(["run", str(rig.path), "--json"])
        printed = capsys.readouterr()
        report = json.loads(printed.out)
        assert code == 1
        assert report["status"] == "failed"
        assert printed.err.splitlines()[-1] == f"{rig.doc['name']} failed: {report['error']}"
        assert rig.tables["s1"].name in report["error"] and "does not exist" in report["error"]


def test_cli_run_exits_3_while_another_run_holds_the_lease(tmp_path, capsys):
    with sync_rig(tmp_path) as rig:
        store = StateStore(rig.doc["state"])
        store.migrate()
        store.acquire_lease(rig.doc["name"], "someone-else", ttl=60)
        try:
            code = cli.main(["run", str(rig.path), "--json"])
        finally:
            store.release_lease(rig.doc["name"], "someone-else")
            store.close()
        assert code == 3
        assert json.loads(capsys.readouterr().out)["status"] == "already_running"


def test_cli_run_shows_a_progress_bar_on_a_terminal_and_none_in_a_pipe(tmp_path):
    import os
    import pty
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "120"}
    with sync_rig(tmp_path) as rig:
        for i in range(20):
            rig.add("s0", f"bar{i}@example.com")
        command = [sys.executable, "-m", "twoway.cli", "run", str(rig.path)]
        leader, follower = pty.openpty()
        proc = subprocess.Popen(command, stdout=follower, stderr=subprocess.PIPE, env=env)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(timeout=120) == 0
        os.close(leader)
        text = shown.decode(errors="replace")
        assert "100%" in text and "state committed" in text  # the bar, at its last step
        rig.add("s0", "piped@example.com")
        piped = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert piped.returncode == 0 and "%" not in piped.stdout
