"""Run the two-way flow from a shell or a script: the one entry the CLI and the demos share."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twoway.errors import AlreadyRunning


def run_flow(path: str, *, dry_run: bool, full: bool, allow_mass_change: bool) -> dict[str, Any]:
    """Run the two-way flow and return its report (also when it failed)."""
    quiet_temporary_server()
    from flows.twoway_flows import two_way_sync

    with _progress_bar():
        state = two_way_sync(
            definition=str(_resolve(path)),
            dry_run=dry_run,
            full=full,
            allow_mass_change=allow_mass_change,
            return_state=True,
        )
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, AlreadyRunning):
        raise outcome
    if isinstance(outcome, BaseException):
        report = getattr(outcome, "report", None)
        if report is None:
            report = {"status": "failed", "error": f"{type(outcome).__name__}: {outcome}"}
        return report
    return outcome


@contextlib.contextmanager
def _progress_bar() -> Iterator[None]:
    """A progress bar on the terminal while a run works (only when stdout is one)."""
    import flows.twoway_flows as twoway_flows

    if not sys.stdout.isatty():
        yield
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), transient=True
    ) as bar:
        task = bar.add_task("starting", total=100)
        twoway_flows.watcher = lambda percent, what: bar.update(
            task, completed=percent, description=what
        )
        try:
            yield
        finally:
            twoway_flows.watcher = None


def _resolve(ref: str) -> Path:
    from twoway import catalog

    return catalog.resolve(ref)


def quiet_temporary_server() -> None:
    """With no Prefect server configured, Prefect starts a temporary one for the run; its
    shutdown noise and telemetry are not the user's business."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return
    for name in ("prefect.server", "docket", "sqlalchemy.pool", "uvicorn", "prefect._internal"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
