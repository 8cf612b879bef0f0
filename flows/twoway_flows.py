"""The Prefect flows: the two-way (N-way) sync and the one-direction sync.

Each takes the path of a sync definition; the steps run as Prefect tasks on batches.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from twoway.definition import load_definition
from twoway.engine import RunReport, Runtime, Steps, run_sync
from twoway.report import TABLE_CAP, markdown, plan_rows


def _artifact_key(name: str, suffix: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"twoway-{name}-{suffix}".lower()).strip("-")


def _publish(report: RunReport) -> None:
    create_markdown_artifact(
        key=_artifact_key(report.sync, "report"),
        markdown=markdown(report),
        description=f"twoway run report of {report.sync}",
    )
    if report.plan is not None:
        rows = plan_rows(report.plan)
        if rows:
            capped = rows[:TABLE_CAP]
            note = f" (first {TABLE_CAP} of {len(rows)} rows)" if len(rows) > TABLE_CAP else ""
            create_table_artifact(
                key=_artifact_key(report.sync, "changes"),
                table=capped,
                description=f"field-level changes of {report.sync}{note}",
            )


class SyncFailed(RuntimeError):
    """A run that failed; the message names the problem (never a secret)."""

    @property
    def report(self) -> dict[str, Any] | None:
        return self.args[1] if len(self.args) > 1 else None


def _finish(report: RunReport) -> dict[str, Any]:
    _publish(report)
    if report.status != "completed":
        raise SyncFailed(report.error or "the run failed", report.as_json())
    return report.as_json()


def _runtime() -> Runtime:
    progress: dict[str, Any] = {}

    def on_progress(system: str, done: int, total: int) -> None:
        if total < 2000:
            return
        if system not in progress:
            progress[system] = create_progress_artifact(
                progress=0.0, description=f"writing {total} records to {system}"
            )
        update_progress_artifact(progress[system], progress=100.0 * done / total)

    return Runtime(steps=Steps(prefect=True), logger=get_run_logger(), on_progress=on_progress)


@flow(name="twoway-sync", description="Keep the systems of a sync definition in step, both ways.")
def two_way_sync(
    definition: str,
    dry_run: bool = False,
    full: bool = False,
    allow_mass_change: bool = False,
) -> dict[str, Any]:
    """One run of a sync definition (all systems, all directions)."""
    parsed = load_definition(definition)
    report = run_sync(
        parsed, _runtime(), dry_run=dry_run, full=full, allow_mass_change=allow_mass_change
    )
    return _finish(report)


@flow(name="twoway-sync-one-way", description="Carry changes of one system into another.")
def one_way_sync(
    definition: str,
    source: str,
    target: str,
    dry_run: bool = False,
    full: bool = False,
) -> dict[str, Any]:
    """One direction of a sync definition: changes in ``source`` written to ``target``."""
    parsed = load_definition(definition)
    for role, name in (("source", source), ("target", target)):
        if name not in parsed.systems:
            raise ValueError(f"{role} {name!r} is not a system of {parsed.name}")
    report = run_sync(
        parsed, _runtime(), dry_run=dry_run, full=full, sources={source}, targets={target}
    )
    return _finish(report)
