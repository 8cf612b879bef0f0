"""What a run tells an operator, against a real Prefect API: a state name that says what
was held or parked, warnings for them, events an automation can notify on, and a report
that names records by their match value and counts only what changed."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from flows.twoway_flows import two_way_sync
from tests.flows.runs import run_logs, sync_events
from tests.syncrig import sync_rig

pytestmark = pytest.mark.usefixtures("prefect_api")

EVENTS = [
    "twoway.sync.completed",
    "twoway.sync.failed",
    "twoway.conflict.held",
    "twoway.deadletter.parked",
]


def _artifacts(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.type: a for a in found}


def _refuse(rig, system: str, first_name: str) -> None:
    """The system's table refuses rows with this first name (as a database rule would)."""
    column = rig.col(system, "first_name")
    table = rig.tables[system].name
    with rig.engines[system].begin() as conn:
        for when in ("INSERT", "UPDATE"):
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER refuse_{when.lower()} BEFORE {when} ON {table} "
                    f"WHEN NEW.{column} = '{first_name}' "
                    f"BEGIN SELECT RAISE(ABORT, '{first_name} refused'); END"
                )
            )


def test_a_run_that_holds_and_parks_says_so_in_its_state_logs_events_and_report(tmp_path):
    with sync_rig(tmp_path, conflicts="manual") as rig:
        rig.add("s0", "held@example.com", "A", "B")
        rig.add("s0", "kept@example.com", "Kept", "K")
        assert two_way_sync(definition=str(rig.path))["status"] == "completed"
        rig.edit("s1", "held@example.com", first_name="Left")
        rig.edit("s0", "held@example.com", first_name="Right")
        _refuse(rig, "s1", "Bad")
        rig.edit("s0", "kept@example.com", first_name="Bad")
        rig.add("s0", "new@example.com", "New", "N")
        state = two_way_sync(definition=str(rig.path), return_state=True)

        assert state.is_completed() and state.name == "Completed, 1 held, 1 parked"
        run_id = state.state_details.flow_run_id
        warnings = [log.message for log in run_logs(run_id) if log.level == 30]
        assert any(
            "1 conflicts held for a person" in w and "held@example.com" in w for w in warnings
        )
        assert any(
            "1 records parked as dead letters" in w
            and "kept@example.com" in w
            and "Bad refused" in w
            for w in warnings
        )

        events = {e.event: e for e in sync_events(rig.doc["name"], run_id, EVENTS, expected=3)}
        assert set(events) == {
            "twoway.sync.completed",
            "twoway.conflict.held",
            "twoway.deadletter.parked",
        }
        done = events["twoway.sync.completed"]
        assert done.resource.id == f"twoway.sync.{rig.doc['name']}"
        assert done.payload["state"] == "Completed, 1 held, 1 parked"
        assert done.payload["held"] == 1 and done.payload["parked"] == 1
        assert done.payload["systems"]["s1"]["failed"] == 1
        assert events["twoway.conflict.held"].payload["held"] == 1
        assert events["twoway.deadletter.parked"].payload["systems"] == {"s1": 1}

        artifacts = _artifacts(run_id)
        md = artifacts["markdown"].data
        assert artifacts["markdown"].description.startswith(f"{rig.doc['name']} run of 20")
        assert "Completed, 1 held, 1 parked" in artifacts["markdown"].description
        s1_key = rig.key_of("s1", "held@example.com")
        assert f"held@example.com (s0 {rig.key_of('s0', 'held@example.com')}, s1 {s1_key})" in md
        (letter,) = [line for line in md.splitlines() if "Bad refused" in line]
        assert "kept@example.com" in letter and "| 1 |" in letter and " UTC |" in letter
        # the refused write changed nothing: it is not in the changes, the create is
        table = artifacts["table"].data
        assert "Bad" not in table and "new@example.com" in table
        assert "2 field changes" not in md


def test_ambiguous_matches_count_as_failures_of_their_system(tmp_path):
    with sync_rig(tmp_path) as rig:
        rig.add("s0", "twice@example.com", "One", "A")
        rig.add("s0", "twice@example.com", "Two", "B")
        rig.add("s1", "twice@example.com", "Three", "C")
        state = two_way_sync(definition=str(rig.path), return_state=True)
        report = state.result()
        assert report["systems"]["s0"]["failed"] == 2 and report["systems"]["s1"]["failed"] == 1
        assert state.name == "Completed, 3 parked"


def test_a_quiet_run_counts_overlap_rereads_apart_from_echoes_and_shows_no_empty_section(
    tmp_path,
):
    with sync_rig(tmp_path) as rig:
        for i in range(5):
            rig.add("s0", f"q{i}@example.com", "Q", f"L{i}")
        two_way_sync(definition=str(rig.path))  # creates 5 in s1
        echoes = two_way_sync(definition=str(rig.path))  # reads its own 5 writes back
        assert echoes["systems"]["s1"]["echo_skipped"] == 5
        state = two_way_sync(definition=str(rig.path), return_state=True)
        quiet = state.result()["systems"]
        # the overlap window reads the same rows again: re-reads, not echoes
        assert quiet["s1"]["extracted"] == 5 and quiet["s1"]["reread"] == 5
        assert quiet["s1"]["echo_skipped"] == 0 and quiet["s0"]["reread"] == 5
        assert state.name == "Completed"
        md = _artifacts(state.state_details.flow_run_id)["markdown"].data
        assert "s1: 5 read (5 again in the overlap window), 0 echoes" in md
        for section in ("## Conflicts", "## Held", "## Dead letters", "## Changes"):
            assert section not in md
