"""What Prefect alone costs a run: the shape of a ``twoway run`` with no sync work in it.

``python bench/prefect_floor.py`` imports Prefect, runs one flow with the task runs, log
lines and artifacts a two-system ``twoway run`` makes (two extracts, map, plan, load and
commit; a progress artifact, a report and a table), each task returning at once, and exits.
The harness times it as a whole process against the same Prefect server as twoway, so the
difference between this and a ``twoway run`` that has nothing to do is twoway's own cost.
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

STEPS = ["extract api", "extract db", "map IDs", "compute field deltas", "load db", "commit state"]


@task
def step(name: str) -> str:
    """A step that does nothing: what a task run costs."""
    return name


@flow(name="prefect-floor")
def floor() -> dict[str, int]:
    """The run's skeleton: the same task runs, logs and artifacts as a two-system sync."""
    log = get_run_logger()
    log.info("floor: run of api, db (changes since the last run)")
    progress = create_progress_artifact(0.0, key="prefect-floor-progress")
    for i, name in enumerate(STEPS, 1):
        step.with_options(task_run_name=name)(name)
        update_progress_artifact(progress, 100.0 * i / len(STEPS))
    create_markdown_artifact(key="prefect-floor-report", markdown="# floor\n\nnothing to do")
    create_table_artifact(key="prefect-floor-changes", table=[{"system": "db", "created": 0}])
    log.info("floor: completed")
    return {"steps": len(STEPS)}


if __name__ == "__main__":
    print(json.dumps(floor()))
