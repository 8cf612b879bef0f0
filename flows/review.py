"""The review flow: decide a sync's held conflicts and dead letters in the Prefect UI.

A run lists what waits for a person and pauses with a form (a typed ``RunInput``): per
conflict, keep one system's value or enter one's own, the form showing both values, when
each changed and the record's match value; per dead letter, retry or drop. Resuming the
run (its **Resume** button, or ``resume_flow_run(id, run_input=...)``) records the
decisions exactly as ``twoway conflicts resolve`` and ``twoway deadletters retry`` do; the
next sync run writes them. A pause that times out decides nothing (and Prefect ends the
run Failed: "The flow was not reviewed and never resumed.").
"""

from __future__ import annotations

import json
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
from twoway.review import Decisions, HeldConflict, Pending, apply_decisions, pending

LEAVE_OPEN = "leave open"
OWN_VALUE = "enter my own value below"
LETTER_CHOICES = ("leave", "retry", "drop")
DEFAULT_DECIDER = "ui"
#: conflicts and dead letters one form holds (the oldest first); the next review has the rest
REVIEW_CAP = 50


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
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_minutes * 60)
    except FlowPauseTimeout:
        # Prefect fails every run whose pause timed out, whatever state it proposes; the
        # server's message reads "The flow was not reviewed and never resumed."
        message = f"not resumed within {timeout_minutes} minutes: nothing was decided"
        log.warning("%s: %s", parsed.name, message)
        return Failed(name="Not reviewed", message=message)
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
