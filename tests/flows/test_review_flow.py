"""The review flow against a real Prefect API: a sync run holds conflicts and parks a
record, the review pauses with its form, the test resumes it through the API with
decisions (one conflict meanwhile decided from the command line), and the next sync run
writes the chosen values everywhere, retries the letter and names the decisions in its
report; a review that times out decides nothing; the overview artifact keeps its key."""

from __future__ import annotations

import contextvars
import json
import threading
import time

import pytest

import flows.review as review_module
from flows.review import review
from flows.twoway_flows import two_way_sync
from tests.flows.runs import run_logs
from tests.flows.test_operations import _artifacts, _in_catalog
from tests.syncrig import sync_rig
from twoway import cli
from twoway.engine import open_store


def _start(**params) -> tuple[threading.Thread, list]:
    """Run the review flow on a thread (it blocks while paused); its final state lands in
    the returned list."""
    out: list = []
    context = contextvars.copy_context()  # the test's Prefect settings
    thread = threading.Thread(
        target=lambda: out.append(context.run(review, return_state=True, **params)), daemon=True
    )
    thread.start()
    return thread, out


def _paused_review(name: str, timeout: float = 60):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["twoway-review"]))
            )
            for run in runs:
                if run.name == f"{name}: review" and run.state and run.state.is_paused():
                    return run
            time.sleep(0.5)
    raise AssertionError(f"no paused review of {name} within {timeout} s")


def _hold_and_park(rig, name: str) -> None:
    for email in ("h1@example.com", "h2@example.com", "p@example.com"):
        rig.add("s0", email, "A", "B")
    assert two_way_sync(definition=name)["status"] == "completed"
    for email in ("h1@example.com", "h2@example.com"):
        rig.edit("s1", email, first_name="Left")
        rig.edit("s0", email, first_name="Right")
    assert two_way_sync(definition=name)["conflicts"] == 2
    with rig.engines["s1"].begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TRIGGER refuse BEFORE UPDATE ON {rig.tables['s1'].name} "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )
    rig.edit("s0", "p@example.com", last_name="Parked")
    assert two_way_sync(definition=name)["systems"]["s1"]["failed"] == 1


def _waiting(rig):
    from twoway.review import pending

    store = open_store(rig.definition)
    try:
        return pending(rig.definition, store)
    finally:
        store.close()


@pytest.mark.usefixtures("prefect_api")
def test_a_review_resumed_through_the_api_is_written_by_the_next_run(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    with sync_rig(tmp_path, conflicts="manual") as rig:
        name = _in_catalog(rig, tmp_path, monkeypatch)
        _hold_and_park(rig, name)
        waiting = _waiting(rig)
        first, second = waiting.conflicts
        (letter,) = waiting.letters
        thread, outcome = _start(definition=name)
        paused = _paused_review(name)

        keyset = paused.state.state_details.run_input_keyset
        with get_client(sync_client=True) as client:
            schema = client.read_flow_run_input(paused.id, keyset["schema"])
            description = client.read_flow_run_input(paused.id, keyset["description"])
        props = json.loads(schema)["properties"]
        form = props[f"conflict_{first.id}"]
        assert form["title"] == f"Conflict #{first.id}: first_name of h1@example.com"
        assert 'keep s0: "Right"' in form["enum"] and 'keep s1: "Left"' in form["enum"]
        assert 's0: "Right" (changed ' in form["description"]
        assert 's1: "Left" (changed ' in form["description"]
        assert props[f"dead_letter_{letter.id}"]["enum"] == ["leave", "retry", "drop"]
        assert "h1@example.com" in description and "refused by a trigger" in description

        # meanwhile someone decides the second conflict from a shell
        assert cli.main(["conflicts", "resolve", name, str(second.id), "--keep", "s0"]) == 0
        with rig.engines["s1"].begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse")
        resume_flow_run(
            paused.id,
            run_input={
                f"conflict_{first.id}": 'keep s1: "Left"',
                f"conflict_{second.id}": 'keep s1: "Left"',
                f"dead_letter_{letter.id}": "retry",
                "decided_by": "Olga",
            },
        )
        thread.join(90)
        (state,) = outcome
        assert state.is_completed() and state.name == "Completed, 2 decided", state
        assert f"conflict #{first.id} decided: keep s1 for first_name" in state.message
        assert f"conflict #{second.id}: left as it is" in state.message
        assert f"dead letter #{letter.id} retried on the next run" in state.message

        after = two_way_sync(definition=name, return_state=True)
        report = _artifacts(after.state_details.flow_run_id)["markdown"].data
        assert rig.row("s0", "h1@example.com")["first_name"] == "Left"  # the review's choice
        assert rig.row("s1", "h2@example.com")["first_name"] == "Right"  # the shell's choice
        assert rig.row("s1", "p@example.com")["last_name"] == "Parked"  # the letter retried
    assert "## Decided by a person (3)" in report
    assert f"conflict #{first.id} decided: kept s1 for first_name (by Olga, " in report
    assert f"conflict #{second.id} decided: kept s0 for first_name (by " in report
    assert f"dead letter #{letter.id} retried (by Olga, " in report and ": written" in report

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (overview,) = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"twoway-{name}-overview"]))
        )
    assert (
        overview.description
        == f"{name}: 6 linked records, 0 open conflicts, 0 dead letters (0 new)"
    )
    assert "Nothing waits for a person." in overview.data


def _short_reviews(monkeypatch, seconds: float = 2) -> None:
    """The real pause, ``seconds`` long, polling every second."""
    real_wait = review_module.wait_for_decisions
    monkeypatch.setattr(review_module, "POLL_SECONDS", 1)
    monkeypatch.setattr(review_module, "GRACE_SECONDS", 8)
    monkeypatch.setattr(
        review_module, "wait_for_decisions", lambda form, _: real_wait(form, seconds)
    )


@pytest.mark.usefixtures("prefect_api")
def test_a_review_that_times_out_decides_nothing_and_ends_completed(tmp_path, monkeypatch):
    import logging

    from prefect.client.orchestration import get_client

    _short_reviews(monkeypatch)
    with sync_rig(tmp_path, conflicts="manual") as rig:
        name = _in_catalog(rig, tmp_path, monkeypatch)
        _hold_and_park(rig, name)
        before = _waiting(rig)
        started = time.monotonic()
        state = review(definition=name, return_state=True)
        took = time.monotonic() - started
        after = _waiting(rig)
    assert state.is_completed() and state.name == "Timed out, nothing decided", state
    assert state.message.startswith("not resumed within 60 minutes: nothing was decided")
    assert took < 8  # it ended at its own deadline, not at Prefect's pause timeout
    assert [c.id for c in after.conflicts] == [c.id for c in before.conflicts]
    assert [d.id for d in after.letters] == [d.id for d in before.letters]

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(run_id).state
        inputs = client.filter_flow_run_input(run_id, "paused-1", limit=10, exclude_keys=set())
    assert stored.is_completed() and stored.name == "Timed out, nothing decided"
    # it paused with its form, and resumed itself with no answer: none is on record
    assert sorted(i.key for i in inputs) == ["paused-1-description", "paused-1-schema"]
    warnings = [r for r in run_logs(run_id) if r.level == logging.WARNING]
    assert [r.message for r in warnings] == [
        f"{name}: not resumed within 60 minutes: nothing was decided; open the review "
        f"again: Deployments → twoway-review/{name}-review → Run, or "
        f"`prefect deployment run 'twoway-review/{name}-review'`"
    ]


@pytest.mark.usefixtures("prefect_api")
def test_a_review_answered_just_before_its_deadline_keeps_the_answer(tmp_path, monkeypatch):
    from prefect.flow_runs import resume_flow_run

    _short_reviews(monkeypatch, seconds=4)
    with sync_rig(tmp_path, conflicts="manual") as rig:
        name = _in_catalog(rig, tmp_path, monkeypatch)
        _hold_and_park(rig, name)
        first = _waiting(rig).conflicts[0]
        thread, outcome = _start(definition=name)
        paused = _paused_review(name)
        resume_flow_run(paused.id, run_input={f"conflict_{first.id}": 'keep s1: "Left"'})
        thread.join(30)
        (state,) = outcome
        after = _waiting(rig)
    assert state.is_completed() and state.name == "Completed, 1 decided", state
    assert first.id not in [c.id for c in after.conflicts]


@pytest.mark.usefixtures("prefect_api")
def test_a_review_that_cannot_end_its_own_pause_is_failed_by_prefect(tmp_path, monkeypatch):
    # the API refuses the run's own resume at the deadline: Prefect's pause timeout ends it
    _short_reviews(monkeypatch)
    monkeypatch.setattr(review_module, "GRACE_SECONDS", 3)
    monkeypatch.setattr(review_module._DeadlineCloser, "_run", lambda self: None)
    with sync_rig(tmp_path, conflicts="manual") as rig:
        name = _in_catalog(rig, tmp_path, monkeypatch)
        _hold_and_park(rig, name)
        before = _waiting(rig)
        state = review(definition=name, return_state=True)
        after = _waiting(rig)
    assert state.is_failed() and state.message == "The flow was not reviewed and never resumed."
    assert [c.id for c in after.conflicts] == [c.id for c in before.conflicts]


@pytest.mark.usefixtures("prefect_api")
def test_a_review_of_a_broken_definition_still_ends_failed(tmp_path, monkeypatch):
    _short_reviews(monkeypatch)
    with sync_rig(tmp_path, conflicts="manual") as rig:
        name = _in_catalog(rig, tmp_path, monkeypatch)
        copy = tmp_path / "syncs" / f"{name}.sync.yaml"
        copy.write_text(copy.read_text() + "no_such_key: 1\n")
        state = review(definition=name, return_state=True)
    assert state.is_failed() and "no_such_key: unknown key" in state.message, state


@pytest.mark.usefixtures("prefect_api")
def test_a_review_with_nothing_waiting_does_not_pause(tmp_path, monkeypatch):
    with sync_rig(tmp_path) as rig:
        name = _in_catalog(rig, tmp_path, monkeypatch)
        rig.add("s0", "a@example.com")
        two_way_sync(definition=name)
        state = review(definition=name, return_state=True)
    assert state.is_completed() and state.name == "Completed, nothing to review"
