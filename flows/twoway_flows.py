"""The Prefect flows: the two-way (N-way) sync and the one-direction sync.

Each takes a sync NAME from the catalog (``./syncs`` or ``$TWOWAY_SYNCS_DIR``) or the path
of a definition file; the steps run as Prefect tasks on batches. Every run publishes three
artifacts for the UI: a markdown report (counts per system, conflicts and failures by
record id), a table of the field-level changes (capped, the cap stated) and a progress
bar that moves while the run works. Its final state message is a one-line summary, which
``twoway history`` prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.states import Completed
from pydantic import AfterValidator, Field

from twoway import catalog
from twoway.definition import Definition, load_definition
from twoway.engine import RunReport, Runtime, Steps, run_sync
from twoway.overview import artifact_key, publish_overview
from twoway.report import COUNT_COLUMNS, TABLE_CAP, count_plan_rows, plan_rows
from twoway.review import decisions_markdown

#: sync names known when this module was imported; the deployment's parameter schema lists
#: them, so the server refuses a run of an unknown sync when the run is created
SYNC_NAMES = catalog.sync_names()
DIRECTION_PATTERN = r"^\s*(both|[A-Za-z][A-Za-z0-9_.-]*\s*->\s*[A-Za-z][A-Za-z0-9_.-]*)\s*$"
REPORT_COUNTS = (
    "extracted",
    "echo_skipped",
    "created",
    "updated",
    "deleted",
    "conflicts",
    "failed",
    "deferred",
)


def _known_sync(ref: str) -> str:
    """Refuse at call time a reference that is neither a catalog name nor a file."""
    from twoway.errors import DefinitionError

    try:
        catalog.resolve(ref)
    except DefinitionError as exc:
        raise ValueError(str(exc)) from None
    return ref


SyncRef = Annotated[
    str,
    Field(
        description="The sync: its name in the catalog (./syncs or $TWOWAY_SYNCS_DIR), or the "
        "path of a definition file when called from Python or the twoway command",
        json_schema_extra={"enum": SYNC_NAMES} if SYNC_NAMES else None,
    ),
    AfterValidator(_known_sync),
]
Direction = Annotated[
    str,
    Field(
        pattern=DIRECTION_PATTERN,
        description="'both' (every system, every way) or 'SOURCE -> TARGET' for one direction",
    ),
]


_artifact_key = artifact_key


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- progress ---------------------------------------------------------------------------


class _Progress:
    """One progress artifact per run: reading is the first 40 %, planning up to 50 %,
    writing (by records written) up to 95 %, committing the state the rest."""

    def __init__(self, sync: str, sources: int):
        self.sync = sync
        self.reads_total = max(1, sources)  # one extract per source
        self.reads_done = 0
        self.writes_total = 0
        self.written: dict[str, int] = {}
        self.percent = 0.0
        self._last = time.monotonic()
        self.artifact_id = create_progress_artifact(
            progress=0.0,
            key=_artifact_key(sync, "progress"),
            description=f"{sync}: starting",
        )

    #: seconds between two updates: each is an API call, and a run of 100,000 records writes
    #: 100s of batches
    interval = 1.0

    def _update(self, percent: float, what: str, force: bool = False) -> None:
        self.percent = max(self.percent, min(100.0, percent))
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        update_progress_artifact(
            self.artifact_id, progress=round(self.percent, 1), description=f"{self.sync}: {what}"
        )

    def step(self, name: str, result: Any) -> None:
        """A run step finished (``name`` as the engine names its task runs)."""
        if name.startswith("extract "):
            self.reads_done += 1
            self._update(40.0 * self.reads_done / self.reads_total, f"{name} done")
        elif name == "map IDs":
            self._update(45.0, "IDs mapped")
        elif name == "compute field deltas":
            ops = getattr(result, "ops", {}) or {}
            self.writes_total = sum(len(v) for v in ops.values())
            self._update(50.0, f"planned {self.writes_total} writes")
        elif name == "commit state":
            self._update(100.0, "state committed", force=True)

    def wrote(self, system: str, done: int, total: int) -> None:
        """Load progress of one system (called after every write batch)."""
        self.written[system] = done
        if self.writes_total:
            share = sum(self.written.values()) / self.writes_total
            self._update(
                50.0 + 45.0 * share,
                f"writing {system} ({done} of {total})",
            )

    def finish(self, status: str) -> None:
        self._update(100.0, status, force=True)


class _ProgressSteps(Steps):
    """Prefect task steps that report to the run's progress artifact as each one ends."""

    def __init__(self, progress: _Progress):
        super().__init__(prefect=True)
        self.progress = progress

    def __call__(self, plain: Callable, wrapped: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        result = super().__call__(plain, wrapped, name, *args, **kwargs)
        self.progress.step(name, result)
        return result


# -- the report artifacts ---------------------------------------------------------------


def _store_details(definition: Definition, report: RunReport) -> dict[str, Any]:
    """What the report needs from the state store: the ids of this run's conflicts, the
    conflicts still held for a person, and the record ids behind every link shown."""
    from twoway.engine import open_store

    details: dict[str, Any] = {"ids": {}, "held": [], "records": {}}
    try:
        store = open_store(definition)
    except Exception:  # the report still says what the run did; ids are extras
        return details
    try:
        if not report.dry_run:
            for row in store.conflicts_of_run(report.run_id):
                details["ids"][(row["link_id"], row["field"])] = row["id"]
        details["held"] = store.open_conflicts(definition.name)
        links = {c["link_id"] for c in report.conflict_list} | {
            c["link_id"] for c in details["held"]
        }
        links |= {f["link_id"] for f in report.failures if f.get("link_id")}
        for link_id, members in store.members_of(definition.name, links).items():
            details["records"][link_id] = {m.system: m.external_id for m in members}
    except Exception:
        pass
    finally:
        store.close()
    return details


def _records(details: dict[str, Any], link_id: str) -> str:
    members = details["records"].get(link_id) or {}
    if not members:
        return f"link {link_id}"
    return ", ".join(f"{system} {key}" for system, key in sorted(members.items()))


def _count_rows(report: RunReport) -> list[dict[str, Any]]:
    per_system = {s: 0 for s in report.systems}
    for c in report.conflict_list:
        for system in c.get("candidates", {}):
            if system in per_system:
                per_system[system] += 1
    return [
        {"system": s, **{k: counts.get(k, 0) for k in COUNT_COLUMNS}, "conflicts": per_system[s]}
        for s, counts in sorted(report.systems.items())
    ]


def report_markdown(
    report: RunReport, details: dict[str, Any], change_rows: int, changes_key: str
) -> str:
    """The run report: counts per system, conflicts and failures listed with record ids."""
    title = "Dry run" if report.dry_run else "Run"
    headers = [c.replace("echo_skipped", "echoes skipped") for c in REPORT_COUNTS]
    lines = [
        f"# {title} of sync `{report.sync}`: {report.status}",
        "",
        "| system | " + " | ".join(headers) + " |",
        "|---|" + "---:|" * len(REPORT_COUNTS),
    ]
    for row in _count_rows(report):
        lines.append(
            f"| {row['system']} | " + " | ".join(str(row[c]) for c in REPORT_COUNTS) + " |"
        )
    if report.error:
        lines += ["", f"**Error:** {report.error}"]

    lines += decisions_markdown(report.decisions)
    lines += ["", f"## Conflicts ({len(report.conflict_list)})"]
    if report.conflict_list:
        lines += [
            "",
            "| # | records | field | values | outcome |",
            "|---|---|---|---|---|",
        ]
        for c in report.conflict_list[:TABLE_CAP]:
            cid = details["ids"].get((c["link_id"], c["field"]))
            values = ", ".join(f"{s}: {_short(v)}" for s, v in sorted(c["candidates"].items()))
            if c.get("winner"):
                outcome = f"{c['winner']} kept ({c['policy']})"
            else:
                outcome = "held for a person"
            lines.append(
                f"| {cid or ''} | {_records(details, c['link_id'])} | {c['field']} | "
                f"{values} | {outcome} |"
            )
        if len(report.conflict_list) > TABLE_CAP:
            lines.append(f"\n(first {TABLE_CAP} of {len(report.conflict_list)} shown)")

    held = details["held"]
    lines += ["", f"## Held for a person ({len(held)} open)"]
    if held:
        lines += [
            "",
            "Decide with `twoway conflicts resolve "
            f"{report.sync} ID --keep SYSTEM` (or `--value VALUE`); the next run applies it.",
            "",
            "| # | records | field | values | since |",
            "|---|---|---|---|---|",
        ]
        for c in held[:TABLE_CAP]:
            values = ", ".join(f"{s}: {_short(v)}" for s, v in sorted(c["candidates"].items()))
            since = f"{c['detected_at']:%Y-%m-%d %H:%M:%S} UTC" if c.get("detected_at") else ""
            lines.append(
                f"| {c['id']} | {_records(details, c['link_id'])} | {c['field']} | {values} | {since} |"
            )
        if len(held) > TABLE_CAP:
            lines.append(f"\n(first {TABLE_CAP} of {len(held)} shown)")

    lines += ["", f"## Failures ({len(report.failures)})"]
    if report.failures:
        lines += ["", "| system | record | operation | error |", "|---|---|---|---|"]
        for f in report.failures[:TABLE_CAP]:
            record = f.get("external_id") or (
                _records(details, f["link_id"]) if f.get("link_id") else ""
            )
            lines.append(
                f"| {f['system']} | {record} | {f['operation']} | {_short(f['error'], 200)} |"
            )
        if len(report.failures) > TABLE_CAP:
            lines.append(f"\n(first {TABLE_CAP} of {len(report.failures)} shown)")

    lines += ["", "## Changes", ""]
    if change_rows == 0:
        lines.append("No field changes.")
    elif change_rows > TABLE_CAP:
        lines.append(
            f"{change_rows} field changes; the table artifact `{changes_key}` lists the first "
            f"{TABLE_CAP} (the cap)."
        )
    else:
        lines.append(f"{change_rows} field changes, all in the table artifact `{changes_key}`.")
    return "\n".join(lines)


def summary_line(report: RunReport) -> str:
    """One line for the run's final state message and ``twoway history``."""
    parts = [
        f"{s}: {c['extracted']} read, {c['echo_skipped']} echoes, +{c['created']} "
        f"~{c['updated']} -{c['deleted']}, {c['failed']} failed"
        for s, c in sorted(report.systems.items())
    ]
    kind = "dry run" if report.dry_run else "run"
    return (
        f"{report.sync} {kind} {report.status}: "
        + "; ".join(parts)
        + (f"; {report.conflicts} conflicts")
    )


def _publish(definition: Definition, report: RunReport) -> None:
    # only the rows the capped table shows are built: a large run plans millions of them
    capped = plan_rows(report.plan, limit=TABLE_CAP) if report.plan is not None else []
    total = count_plan_rows(report.plan) if report.plan is not None else 0
    changes_key = _artifact_key(report.sync, "changes")
    details = _store_details(definition, report)
    create_markdown_artifact(
        key=_artifact_key(report.sync, "report"),
        markdown=report_markdown(report, details, total, changes_key),
        description=f"twoway run report of {report.sync}",
    )
    if capped:
        note = (
            f" (first {TABLE_CAP} of {total} rows: the table is capped at {TABLE_CAP})"
            if total > TABLE_CAP
            else f" ({total} rows)"
        )
        create_table_artifact(
            key=changes_key,
            table=capped,
            description=f"field-level changes of {report.sync}{note}",
        )
    _log_outcome(report, details)
    refresh_overview(definition)


def refresh_overview(definition: Definition) -> None:
    """Refresh the sync's overview artifact; a failure to is logged, never fails the run."""
    try:
        publish_overview(definition)
    except Exception as exc:
        get_run_logger().warning("%s: the overview was not refreshed: %s", definition.name, exc)


def _log_outcome(report: RunReport, details: dict[str, Any]) -> None:
    """INFO says what the run did in a few lines; DEBUG says why, record by record."""
    log = get_run_logger()
    held = [c for c in report.conflict_list if not c.get("winner")]
    if report.conflict_list or report.failures:
        log.info(
            "%s: %d conflicts (%d settled by policy, %d held for a person), %d failures",
            report.sync,
            len(report.conflict_list),
            len(report.conflict_list) - len(held),
            len(held),
            len(report.failures),
        )
    if details["held"]:
        log.info(
            "%s: %d conflicts wait for a person: twoway conflicts list %s",
            report.sync,
            len(details["held"]),
            report.sync,
        )
    for c in report.conflict_list:
        values = ", ".join(f"{s}={v!r}" for s, v in sorted(c["candidates"].items()))
        outcome = f"kept {c['winner']}" if c.get("winner") else "held for a person"
        log.debug(
            "conflict on %s field %s: %s -> %s (policy %s)",
            _records(details, c["link_id"]),
            c["field"],
            values,
            outcome,
            c["policy"],
        )
    for f in report.failures:
        log.debug(
            "failed %s of %s record %s: %s",
            f["operation"],
            f["system"],
            f.get("external_id") or f.get("link_id"),
            f["error"],
        )
    if report.plan is not None:
        for system, planned in sorted(report.plan.ops.items()):
            if planned:
                log.debug("%s: %d writes planned for %s", report.sync, len(planned), system)


class SyncFailed(RuntimeError):
    """A run that failed; the message names the problem (never a secret)."""

    @property
    def report(self) -> dict[str, Any] | None:
        return self.args[1] if len(self.args) > 1 else None


def _finish(definition: Definition, report: RunReport, progress: _Progress) -> Any:
    _publish(definition, report)
    progress.finish(report.status)
    if report.status != "completed":
        raise SyncFailed(report.error or "the run failed", report.as_json())
    # Prefect takes a returned state as the run's final state: the message shows in the
    # UI and in `twoway history`; calling the flow still returns the report dict.
    return Completed(message=summary_line(report), data=report.as_json())


def _direction(definition: Definition, direction: str) -> tuple[set[str] | None, set[str] | None]:
    text = direction.strip()
    if text == "both":
        return None, None
    source, target = (part.strip() for part in text.split("->"))
    for role, name in (("source", source), ("target", target)):
        if name not in definition.systems:
            known = ", ".join(sorted(definition.systems))
            raise ValueError(
                f"direction {direction!r}: {role} {name!r} is not a system of "
                f"{definition.name} (its systems: {known})"
            )
    if source == target:
        raise ValueError(f"direction {direction!r} sends a system to itself")
    return {source}, {target}


def _run_name() -> str:
    """Flow-run names people can scan in the UI: ``contacts: run``, ``contacts: dry run``."""
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    ref = str(params.get("definition", "sync"))
    name = catalog.name_of(Path(ref)) if catalog.looks_like_path(ref) else ref
    kind = "dry run" if params.get("dry_run") else "full run" if params.get("full") else "run"
    direction = str(params.get("direction") or "both").strip()
    if direction != "both":
        kind += f" {direction}"
    return f"{name}: {kind}"


def _sync(
    definition: str,
    *,
    dry_run: bool,
    full: bool,
    direction: str,
    allow_mass_change: bool,
) -> Any:
    log = get_run_logger()
    parsed = load_definition(catalog.resolve(definition))
    sources, targets = _direction(parsed, direction)
    systems = sorted(sources or parsed.systems)
    log.info(
        "%s: %s%s of %s (%s)",
        parsed.name,
        "dry run" if dry_run else "run",
        "" if direction.strip() == "both" else f" {direction.strip()}",
        ", ".join(sorted(parsed.systems)),
        "full read" if full else "changes since the last run",
    )
    progress = _Progress(parsed.name, len(systems))
    runtime = Runtime(
        steps=_ProgressSteps(progress),
        logger=log,
        on_progress=progress.wrote,
    )
    report = run_sync(
        parsed,
        runtime,
        dry_run=dry_run,
        full=full,
        sources=sources,
        targets=targets,
        allow_mass_change=allow_mass_change,
    )
    return _finish(parsed, report, progress)


@flow(
    name="twoway-sync",
    flow_run_name=_run_name,
    description="Keep the systems of a sync definition in step, both ways.",
)
def two_way_sync(
    definition: SyncRef,
    dry_run: bool = False,
    full: bool = False,
    direction: Direction = "both",
    allow_mass_change: bool = False,
) -> dict[str, Any]:
    """One run of a sync (all systems, all directions, unless a direction is given).

    Args:
        definition: The sync: its name in the catalog, or the path of its definition file.
        dry_run: Plan only: write nothing to any system nor to the sync's state.
        full: Read every record, not only the changes since the last run (a resync).
        direction: 'both', or 'SOURCE -> TARGET' to carry changes one way only.
        allow_mass_change: Allow a run to delete more than the definition's mass-change limit.
    """
    return _sync(
        definition,
        dry_run=dry_run,
        full=full,
        direction=direction,
        allow_mass_change=allow_mass_change,
    )


@flow(
    name="twoway-sync-one-way",
    flow_run_name=_run_name,
    description="Carry changes of one system into another.",
)
def one_way_sync(
    definition: SyncRef,
    source: str,
    target: str,
    dry_run: bool = False,
    full: bool = False,
) -> dict[str, Any]:
    """One direction of a sync definition: changes in ``source`` written to ``target``.

    Args:
        definition: The sync: its name in the catalog, or the path of its definition file.
        source: The system whose changes are read.
        target: The system they are written to.
        dry_run: Plan only: write nothing to any system nor to the sync's state.
        full: Read every record of the source, not only its changes.
    """
    parsed = load_definition(catalog.resolve(definition))
    for role, name in (("source", source), ("target", target)):
        if name not in parsed.systems:
            raise ValueError(f"{role} {name!r} is not a system of {parsed.name}")
    return _sync(
        definition,
        dry_run=dry_run,
        full=full,
        direction=f"{source} -> {target}",
        allow_mass_change=False,
    )
