"""The overview of a sync: one Prefect artifact per sync, under a key that never changes
(``twoway-<sync>-overview``), so its page in the UI always shows the latest.

Every run of the flow and every ``twoway status`` refresh it: per system the linked records,
open conflicts, dead letters (those new since the last run marked), the age of the oldest
change that waits to be written (the lag), then the last runs and how to open the review.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from twoway.definition import Definition
from twoway.review import pending
from twoway.state import StateStore

LAST_RUNS = 10
LISTED = 20  # dead letters listed by record


def artifact_key(sync: str, suffix: str) -> str:
    """A Prefect artifact key of a sync (lower-case letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"twoway-{sync}-{suffix}".lower()).strip("-")


def review_deployment(sync: str) -> str:
    """The deployment of prefect.yaml that reviews a sync in the UI."""
    return f"twoway-review/{sync}-review"


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else "-"


def _naive_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def overview_markdown(
    definition: Definition, store: StateStore, now: datetime | None = None
) -> tuple[str, str]:
    """The overview as markdown, and its one-line summary (the artifact's description)."""
    sync = definition.name
    now = now or _naive_now()
    counts = store.counts(sync)
    waiting = pending(definition, store, LISTED)
    held_all = store.open_conflicts(sync)
    decided = store.decided_conflicts(sync)
    runs = store.last_runs(sync, LAST_RUNS)
    finished = [r for r in runs if r["finished_at"] and not r["dry_run"]]
    since = finished[0]["started_at"] if finished else None
    letters = store.open_dead_letters(sync)
    new_ids = {d["id"] for d in letters if since is not None and d["first_seen"] >= since}

    lines = [
        f"# Sync `{sync}`",
        "",
        f"Refreshed {_when(now)} UTC.",
        "",
        "| system | linked records | open conflicts | dead letters | new since the last run "
        "| lag (oldest unapplied change) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for system in definition.systems:
        held = [c for c in held_all if system in c["candidates"]]
        undone = [c for c in decided if system in _systems_of(c)]
        parked = [d for d in letters if d["system"] == system]
        oldest = [c["detected_at"] for c in held if c["detected_at"]]
        oldest += [c["detected_at"] for c in undone if c["detected_at"]]
        oldest += [d["first_seen"] for d in parked]
        lag = _age(now - min(oldest)) if oldest else "none"
        lines.append(
            f"| {system} | {counts['linked'].get(system, 0)} | {len(held)} | {len(parked)} "
            f"| {sum(d['id'] in new_ids for d in parked)} | {lag} |"
        )
    if decided:
        lines += ["", f"{len(decided)} decided conflicts wait for the next run to write them."]

    if waiting.letters:
        lines += [
            "",
            f"## Dead letters ({waiting.letters_open})",
            "",
            "| # | system | record | operation | attempts | first seen (UTC) | error |",
            "|---|---|---|---|---:|---|---|",
        ]
        for d in waiting.letters:
            mark = " **new**" if d.id in new_ids else ""
            lines.append(
                f"| {d.id}{mark} | {d.system} | {_cell(d.record)} | {d.operation} | {d.attempts} "
                f"| {_when(d.first_seen)} | {_cell(d.error, 120)} |"
            )
        if waiting.letters_open > LISTED:
            lines.append(f"\n(the first {LISTED} of {waiting.letters_open} shown)")

    lines += ["", "## Last runs", ""]
    if runs:
        lines += [
            "| started (UTC) | took | outcome | written | failed | conflicts |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for r in runs:
            lines.append(_run_row(r))
    else:
        lines.append("No run yet.")

    lines += ["", "## Review", ""]
    if waiting:
        lines.append(
            f"{waiting.conflicts_open} conflicts and {waiting.letters_open} dead letters wait "
            "for a person."
        )
    else:
        lines.append("Nothing waits for a person.")
    lines += [
        "",
        f"Open the review: **Deployments → `{review_deployment(sync)}` → Run → Quick run**; "
        "the run pauses with a form (the run's **Resume** button): per conflict keep a "
        "system's value or enter one, per dead letter retry or drop. The next run writes "
        "the decisions.",
        "",
        f"From a shell: `prefect deployment run '{review_deployment(sync)}'`, or "
        f"`twoway conflicts resolve {sync} ID --keep SYSTEM` and "
        f"`twoway deadletters retry {sync} [IDS]`.",
    ]
    summary = (
        f"{sync}: {sum(counts['linked'].values())} linked records, "
        f"{waiting.conflicts_open} open conflicts, {waiting.letters_open} dead letters"
        f" ({len(new_ids)} new)"
    )
    return "\n".join(lines), summary


def _systems_of(conflict: dict[str, Any]) -> set[str]:
    candidates = conflict.get("candidates")
    if isinstance(candidates, str):
        candidates = json.loads(candidates)
    return set(candidates or ())


def _cell(text: Any, limit: int = 60) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_row(run: dict[str, Any]) -> str:
    summary = run.get("summary") or {}
    systems = summary.get("systems", {})
    written = sum(c.get(k, 0) for c in systems.values() for k in ("created", "updated", "deleted"))
    failed = sum(c.get("failed", 0) for c in systems.values())
    took = (
        f"{(run['finished_at'] - run['started_at']).total_seconds():.1f} s"
        if run["finished_at"]
        else "-"
    )
    outcome = run["status"] + (" (dry run)" if run["dry_run"] else "")
    if run.get("error"):
        outcome += f": {_cell(run['error'], 80)}"
    return (
        f"| {_when(run['started_at'])} | {took} | {outcome} | {written} | {failed} "
        f"| {summary.get('conflicts', 0)} |"
    )


def publish_overview(definition: Definition, now: datetime | None = None) -> UUID:
    """Create the sync's overview artifact anew (the key keeps its history); returns its id.

    It belongs to no flow run: it is the sync's page (Artifacts, under its key), not one
    more card in every run's Artifacts tab.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    store = StateStore(definition.state or "")
    try:
        store.migrate()
        markdown, summary = overview_markdown(definition, store, now)
    finally:
        store.close()
    artifact = ArtifactCreate(
        key=artifact_key(definition.name, "overview"),
        type="markdown",
        data=markdown,
        description=summary,
    )
    with get_client(sync_client=True) as client:
        return client.create_artifact(artifact).id
