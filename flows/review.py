"""The review flow: decide a sync's held conflicts and dead letters in the Prefect UI.

A run lists what waits for a person and pauses with a form (a typed ``RunInput``): per
conflict, keep one system's value or enter one's own, the form showing both values, when
each changed and the record's match value; per dead letter, retry or drop. Resuming the
run (its **Resume** button, or ``resume_flow_run(id, run_input=...)``) records the
decisions exactly as ``twoway conflicts resolve`` and ``twoway deadletters retry`` do; the
next sync run writes them. A pause that times out decides nothing and ends the run
Completed, "Timed out, nothing decided", with a warning that says how to open the review
again: at its deadline the run resumes itself with no answer, before Prefect's own pause
timeout (which would end it Failed whatever it returned).
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Completed, Failed
from pydantic import Field, create_model

from flows.twoway_flows import SyncRef, refresh_overview
from twoway import catalog
from twoway.definition import load_definition
from twoway.engine import open_store
from twoway.overview import review_deployment
from twoway.review import Decisions, HeldConflict, Pending, apply_decisions, pending

LEAVE_OPEN = "leave open"
OWN_VALUE = "enter my own value below"
LETTER_CHOICES = ("leave", "retry", "drop")
DEFAULT_DECIDER = "ui"
#: conflicts and dead letters one form holds (the oldest first); the next review has the rest
REVIEW_CAP = 50
#: how often a paused review looks whether it was resumed
POLL_SECONDS = 10
#: how long after the review's own deadline Prefect's pause timeout comes: time for the
#: run to see that it resumed itself (a few polls) before Prefect would fail it
GRACE_SECONDS = 3 * POLL_SECONDS
TIMED_OUT = "Timed out, nothing decided"


def _shown(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def _cell(text: str) -> str:
    """Text for a markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _changed(conflict: HeldConflict, system: str) -> str:
    when = conflict.changed_at.get(system)
    if not when:
        return "change time unknown"
    stamp = datetime.fromisoformat(when)  # a time with no zone is UTC
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC)
    return f"changed {stamp:%Y-%m-%d %H:%M:%S} UTC"


def keep_choices(conflict: HeldConflict) -> dict[str, str]:
    """The form's labels for keeping one system's value, each naming the value: label -> system."""
    return {
        f"keep {system}: {_shown(value)}": system
        for system, value in sorted(conflict.candidates.items())
    }


def review_form(waiting: Pending) -> type[RunInput]:
    """A RunInput model with one choice per conflict (and a box for one's own value) and one
    per dead letter; every default leaves things as they are."""
    fields: dict[str, Any] = {}
    for c in waiting.conflicts:
        values = "; ".join(
            f"{s}: {_shown(v)} ({_changed(c, s)})" for s, v in sorted(c.candidates.items())
        )
        choices = (LEAVE_OPEN, *keep_choices(c), OWN_VALUE)
        fields[f"conflict_{c.id}"] = (
            Literal[choices],
            Field(
                LEAVE_OPEN, title=f"Conflict #{c.id}: {c.field} of {c.match}", description=values
            ),
        )
        fields[f"conflict_{c.id}_value"] = (
            str,
            Field(
                "",
                title=f"Conflict #{c.id}: your value for {c.field}",
                description=f"used when '{OWN_VALUE}' is chosen",
            ),
        )
    for d in waiting.letters:
        fields[f"dead_letter_{d.id}"] = (
            Literal[LETTER_CHOICES],
            Field(
                "leave",
                title=f"Dead letter #{d.id}: {d.operation} of {d.record} in {d.system}",
                description=f"{d.attempts} attempts since {d.first_seen:%Y-%m-%d %H:%M} UTC: "
                f"{d.error[:200]}",
            ),
        )
    fields["decided_by"] = (
        str,
        Field(DEFAULT_DECIDER, title="Decided by", description="recorded with the decisions"),
    )
    return create_model("ReviewDecisions", __base__=RunInput, **fields)


def review_markdown(waiting: Pending) -> str:
    """What the form's page shows above it: every held value with its change time."""
    lines = [f"## Review of sync `{waiting.sync}`", ""]
    more = [
        f"{total - len(shown)} more {what} wait for the next review."
        for what, shown, total in (
            ("conflicts", waiting.conflicts, waiting.conflicts_open),
            ("dead letters", waiting.letters, waiting.letters_open),
        )
        if total > len(shown)
    ]
    if more:
        lines += [f"This form holds the oldest {REVIEW_CAP} of each: " + " ".join(more), ""]
    if waiting.conflicts:
        lines += [
            f"**{len(waiting.conflicts)} held conflicts**: keep one system's value, or enter "
            "your own; the next run writes it everywhere.",
            "",
            "| # | record | field | values |",
            "|---|---|---|---|",
        ]
        for c in waiting.conflicts:
            values = "<br>".join(
                f"{s}: `{_cell(_shown(v))}` ({_changed(c, s)})"
                for s, v in sorted(c.candidates.items())
            )
            lines.append(f"| {c.id} | {_cell(c.match)} | {c.field} | {values} |")
    if waiting.letters:
        lines += [
            "",
            f"**{len(waiting.letters)} dead letters**: retry (the next run tries again) or drop.",
            "",
            "| # | system | record | operation | attempts | first seen (UTC) | error |",
            "|---|---|---|---|---:|---|---|",
        ]
        for d in waiting.letters:
            lines.append(
                f"| {d.id} | {d.system} | {_cell(d.record)} | {d.operation} | {d.attempts} "
                f"| {d.first_seen:%Y-%m-%d %H:%M:%S} | {_cell(d.error[:160])} |"
            )
    return "\n".join(lines)


def read_answer(waiting: Pending, answer: RunInput) -> tuple[Decisions, list[str]]:
    """The decisions in a submitted form, and a line for each answer that decides nothing
    (one's own value chosen but left empty)."""
    decisions, problems = Decisions(), []
    for c in waiting.conflicts:
        choice = getattr(answer, f"conflict_{c.id}")
        if choice == OWN_VALUE:
            value = getattr(answer, f"conflict_{c.id}_value")
            if value.strip():
                decisions.values[c.id] = value
            else:
                problems.append(f"conflict #{c.id}: left open (no value of your own entered)")
        elif choice != LEAVE_OPEN:
            decisions.keep[c.id] = keep_choices(c)[choice]
    for d in waiting.letters:
        choice = getattr(answer, f"dead_letter_{d.id}")
        if choice != "leave":
            decisions.letters[d.id] = choice
    return decisions, problems


def wait_for_decisions(form: type[RunInput], seconds: float) -> RunInput | None:
    """Pause the run with ``form`` until a person resumes it, and return their answer; None
    when nobody did within ``seconds``.

    Prefect fails a run whose pause timed out, whatever state the flow then returns. So the
    pause's own timeout is set :data:`GRACE_SECONDS` later, and at the deadline the run
    resumes itself with no input (the form's defaults decide nothing; none is stored). A
    person who resumes first wins: the run is no longer paused, its own resume is refused.
    When even that resume fails (the API unreachable), Prefect's timeout still ends the
    run: :class:`~prefect.exceptions.FlowPauseTimeout` is raised.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "only inside a flow run"
    closer = _DeadlineCloser(context.flow_run.id, seconds)
    closer.start()
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=int(seconds + GRACE_SECONDS), poll_interval=POLL_SECONDS
        )
    finally:
        closer.stop()
    return None if closer.closed else answer


class _DeadlineCloser:
    """A thread that resumes a paused run with no input once ``seconds`` have passed,
    unless the run was resumed (or stopped waiting) before."""

    def __init__(self, flow_run_id: Any, seconds: float):
        self.flow_run_id = flow_run_id
        self.deadline = time.monotonic() + seconds
        self.closed = False  # True once its own resume was accepted
        self._stopping = threading.Event()
        context = contextvars.copy_context()  # the flow's Prefect settings and client
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="review-deadline", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop waiting, and wait for a resume already under way (so ``closed`` is final)."""
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.responses import SetStateStatus

        if self._stopping.wait(max(0.0, self.deadline - time.monotonic())):
            return
        try:
            with get_client(sync_client=True) as client:
                # not paused yet (a slow start), or resumed by a person: wait for the pause
                # or for the run to stop waiting
                while not self._stopping.is_set():
                    state = client.read_flow_run(self.flow_run_id).state
                    if state is not None and state.is_paused():
                        result = client.resume_flow_run(self.flow_run_id, run_input=None)
                        self.closed = result.status == SetStateStatus.ACCEPT
                        return
                    self._stopping.wait(0.5)
        except Exception as exc:  # Prefect's own pause timeout ends the run then
            get_run_logger().warning("could not end the review at its deadline: %s", exc)


def _run_name() -> str:
    from prefect.runtime import flow_run

    ref = str((flow_run.parameters or {}).get("definition", "sync"))
    name = catalog.name_of(Path(ref)) if catalog.looks_like_path(ref) else ref
    return f"{name}: review"


@flow(
    name="twoway-review",
    flow_run_name=_run_name,
    description="Decide a sync's held conflicts and dead letters in a form.",
)
def review(definition: SyncRef, timeout_minutes: Annotated[int, Field(ge=1)] = 60) -> Any:
    """List what waits for a person in a sync, pause for their decisions, record them.

    Args:
        definition: The sync: its name in the catalog, or the path of its definition file.
        timeout_minutes: How long the form waits; when it times out nothing is decided.
    """
    log = get_run_logger()
    parsed = load_definition(catalog.resolve(definition))
    store = open_store(parsed)
    try:
        waiting = pending(parsed, store, REVIEW_CAP)
    finally:
        store.close()  # not held open while the run waits for a person
    if not waiting:
        log.info("%s: nothing waits for a person", parsed.name)
        return Completed(name="Completed, nothing to review", message="nothing to review")
    log.info(
        "%s: %d conflicts and %d dead letters wait; resume this run with your decisions",
        parsed.name,
        waiting.conflicts_open,
        waiting.letters_open,
    )
    form = review_form(waiting).with_initial_data(description=review_markdown(waiting))
    message = f"not resumed within {timeout_minutes} minutes: nothing was decided"
    again = (
        f"open the review again: Deployments → {review_deployment(parsed.name)} → Run, or "
        f"`prefect deployment run '{review_deployment(parsed.name)}'`"
    )
    try:
        answer = wait_for_decisions(form, timeout_minutes * 60)
    except FlowPauseTimeout:
        # the run could not resume itself at its deadline: Prefect fails it, whatever state
        # it proposes ("The flow was not reviewed and never resumed.")
        log.warning("%s: %s; %s", parsed.name, message, again)
        return Failed(name="Not reviewed", message=message)
    if answer is None:
        log.warning("%s: %s; %s", parsed.name, message, again)
        return Completed(name=TIMED_OUT, message=f"{message}; {again}")
    decisions, lines = read_answer(waiting, answer)
    by = answer.decided_by.strip() or DEFAULT_DECIDER
    store = open_store(parsed)
    try:
        made, applied = apply_decisions(parsed, store, decisions, by=by)
    finally:
        store.close()
    lines = applied + lines
    for line in lines:
        log.info("%s: %s", parsed.name, line)
    refresh_overview(parsed)
    return Completed(
        name=f"Completed, {made} decided",
        message="; ".join(lines) or "nothing was decided",
        data={"decisions": lines, "by": by},
    )
