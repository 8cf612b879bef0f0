"""The Prefect flows: the two-way (N-way) sync and the one-direction sync.

Each takes a sync NAME from the catalog (``./syncs`` or ``$TWOWAY_SYNCS_DIR``) or the path
of a definition file; the steps run as Prefect tasks on batches. Every run publishes three
artifacts for the UI: a markdown report (counts per system, conflicts and failures by
record id), a table of the field-level changes (capped, the cap stated) and a progress
bar that moves while the run works. Its final state says how it went: ``Completed``,
``Completed, 1 held, 3 parked``, or ``Failed`` with the one line naming what is wrong
(returned, never raised through the engine); its message is a one-line summary, which
``twoway history`` prints. Every run emits ``twoway.sync.*`` events for automations.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.states import Completed, Failed, State
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from flows.steps import run_sync
from twoway import catalog
from twoway.definition import Definition, load_definition
from twoway.engine import Observer, Runtime, counts_line
from twoway.errors import AlreadyRunning, DefinitionError, RedactingFilter, TwowayError, redact
from twoway.overview import artifact_key, publish_overview
from twoway.report import COUNT_COLUMNS, TABLE_CAP, RunReport
from twoway.review import decisions_markdown

# the engine logs a task's unexpected error with its own text: mask credentials in it
for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(RedactingFilter())

#: sync names known when this module was imported; the deployment's parameter schema lists
#: them, so the server refuses a run of an unknown sync when the run is created
SYNC_NAMES = catalog.sync_names()
DIRECTION_PATTERN = r"^\s*(both|[A-Za-z][A-Za-z0-9_.-]*\s*->\s*[A-Za-z][A-Za-z0-9_.-]*)\s*$"
REPORT_COUNTS = (*COUNT_COLUMNS, "conflicts")


COLUMN_TITLES = {
    "extracted": "read",
    "reread": "overlap re-reads",
    "echo_skipped": "echoes skipped",
}


def _known_sync(ref: str) -> str:
    """Refuse at call time a reference that is neither a catalog name nor a file."""
    try:
        catalog.resolve(ref)
    except DefinitionError as exc:
        raise ValueError(str(exc)) from None
    return ref


SyncRef = Annotated[
    str,
    Field(
        description="Which sync: one of the names listed, the catalog (./syncs or "
        "$TWOWAY_SYNCS_DIR) as of the last deploy. A run of a deployment accepts only these "
        "names; a definition file's path works only from Python or `twoway run`",
        json_schema_extra={"enum": SYNC_NAMES} if SYNC_NAMES else None,
    ),
    AfterValidator(_known_sync),
]


def _catalog_directions() -> list[str]:
    """'both' and every 'SOURCE -> TARGET' of the catalog's syncs: the choices the run
    form offers (a sync given by path may name its own systems when called from Python)."""
    pairs: set[str] = set()
    for path in catalog.catalog().values():
        try:
            systems = list((yaml.safe_load(path.read_text(encoding="utf-8")) or {})["systems"])
        except Exception:  # a broken file: `twoway check` says why; the form offers the rest
            continue
        pairs |= {f"{a} -> {b}" for a, b in itertools.permutations(systems, 2)}
    return ["both", *sorted(pairs)]


def _any_direction(value: Any, choices: ValidatorFunctionWrapHandler) -> str:
    """One of the choices; from Python also any other 'SOURCE -> TARGET' (a sync given by
    path names its own systems; the run checks they belong to the sync)."""
    try:
        return choices(value)
    except ValidationError:
        if isinstance(value, str) and re.match(DIRECTION_PATTERN, value):
            return value
        raise


DIRECTIONS = _catalog_directions()
#: a choice in the run form (the parameter schema's enum), so the server refuses others
Direction = Annotated[
    Literal[tuple(DIRECTIONS)],
    WrapValidator(_any_direction),
    Field(
        description="'both' (every system, every way) or 'SOURCE -> TARGET' to carry "
        "changes one way only (the two systems must belong to the sync)",
    ),
]


_artifact_key = artifact_key


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- progress ---------------------------------------------------------------------------


#: called with (percent, what) at every step of a run in this process: the ``twoway run``
#: command's progress bar
watcher: Callable[[float, str], Any] | None = None


class _Progress(Observer):
    """One progress artifact per run: reading is the first 40 %; then each chunk its share
    of the rest, most of it (by records written) its writes, the end its commit."""

    def __init__(self, sync: str, sources: int):
        self.sync = sync
        self.reads_total = max(1, sources)  # one extract per source
        self.reads_done = 0
        self.chunk_at, self.chunks = 0, 1
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
        if watcher is not None:  # in this process: no API call, every step shows
            watcher(self.percent, f"{self.sync}: {what}")
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        update_progress_artifact(
            self.artifact_id, progress=round(self.percent, 1), description=f"{self.sync}: {what}"
        )

    def _chunk_share(self, part: float) -> float:
        return 40.0 + 60.0 * (self.chunk_at + part) / self.chunks

    def step(self, name: str, ended: bool) -> None:
        if not ended:
            return
        if name.startswith("extract "):
            self.reads_done += 1
            self._update(40.0 * self.reads_done / self.reads_total, f"{name} done")
        elif name == "map IDs":
            self._update(self._chunk_share(0.05), "IDs mapped")
        elif name == "commit state":
            last = self.chunk_at + 1 == self.chunks
            what = (
                "state committed"
                if last
                else f"chunk {self.chunk_at + 1} of {self.chunks} committed"
            )
            self._update(self._chunk_share(1.0), what, force=last)

    def chunk(self, index: int, total: int, writes: int) -> None:
        self.chunk_at, self.chunks = index, max(1, total)
        self.writes_total, self.written = writes, {}
        part = f"chunk {index + 1} of {total}: " if total > 1 else ""
        self._update(self._chunk_share(0.1), f"{part}planned {writes} writes")

    def wrote(self, system: str, done: int, total: int) -> None:
        """Load progress of one system (called after every write batch)."""
        self.written[system] = done
        if self.writes_total:
            share = sum(self.written.values()) / self.writes_total
            self._update(
                self._chunk_share(0.1 + 0.8 * share), f"writing {system} ({done} of {total})"
            )

    def finish(self, status: str) -> None:
        self._update(100.0, status, force=True)


# -- the report artifacts ---------------------------------------------------------------


def _store_details(definition: Definition, report: RunReport) -> dict[str, Any]:
    """What the report needs from the state store: the ids of this run's conflicts, the
    conflicts still held for a person, the open dead letters, and the record ids and
    match values behind every link shown."""
    from twoway.engine import open_store

    details = _no_details(definition)
    try:
        store = open_store(definition)
    except Exception:  # the report still says what the run did; ids are extras
        return details
    try:
        if not report.dry_run:
            for row in store.conflicts_of_run(report.run_id):
                details["ids"][(row["link_id"], row["field"])] = row["id"]
        details["held"] = store.open_conflicts(definition.name)
        details["letters"] = store.open_dead_letters(definition.name)
        links = {c["link_id"] for c in report.conflict_list} | {
            c["link_id"] for c in details["held"]
        }
        links |= {f["link_id"] for f in details["letters"] if f.get("link_id")}
        for link_id, members in store.members_of(definition.name, links).items():
            details["records"][link_id] = {m.system: m.external_id for m in members}
        for link_id, link in store.links(definition.name, links).items():
            details["match"][link_id] = _match_of(definition, link.base)
    except Exception:
        pass
    finally:
        store.close()
    return details


def _no_details(definition: Definition | None) -> dict[str, Any]:
    """Details of a run whose state store says nothing (or that had no definition)."""
    return {
        "definition": definition,
        "ids": {},
        "held": [],
        "letters": [],
        "records": {},
        "match": {},
    }


def _match_of(definition: Definition | None, values: dict[str, Any] | None) -> str | None:
    if definition is None or not values:
        return None
    parts = [str(values[f]) for f in definition.match_on if values.get(f)]
    return ", ".join(parts) or None


def _records(details: dict[str, Any], link_id: str) -> str:
    """A link as people know it: its match value, then its record ids per system."""
    members = details["records"].get(link_id) or {}
    ids = ", ".join(f"{system} {key}" for system, key in sorted(members.items()))
    match = details["match"].get(link_id)
    if match:
        return f"{_short(match)} ({ids})" if ids else _short(match)
    return ids or f"link {link_id}"


def _letter_record(details: dict[str, Any], letter: dict[str, Any]) -> str:
    if letter.get("link_id"):
        return _records(details, letter["link_id"])
    match = letter.get("match")  # a failure of this run's report carries it
    payload = letter.get("payload")  # a dead letter of the store, its values as JSON
    if match is None and isinstance(payload, str):
        try:
            values = json.loads(payload)
        except ValueError:
            values = None
        match = _match_of(details["definition"], values) if isinstance(values, dict) else None
    key = f"{letter['system']} {letter['external_id']}" if letter.get("external_id") else ""
    return f"{_short(match)} ({key})" if match and key else match or key


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


def held_now(report: RunReport) -> list[dict[str, Any]]:
    """Conflicts this run held for a person (a dry run holds none: it records nothing)."""
    if report.dry_run:
        return []
    return [c for c in report.conflict_list if not c.get("winner")]


def parked_now(report: RunReport) -> list[dict[str, Any]]:
    """Records this run parked as dead letters (writes held back for a newer version are
    deferred, not parked: the next run tries them again)."""
    return [f for f in report.failures if f.get("kind") != "deferred"]


def state_name(report: RunReport) -> str:
    """The run's state name: ``Completed``, or ``Completed, 1 held, 3 parked``."""
    if report.status != "completed":
        return "Failed"
    held, parked = len(held_now(report)), len(parked_now(report))
    return ", ".join(
        ["Completed"]
        + ([f"{held} held"] if held else [])
        + ([f"{parked} parked"] if parked else [])
    )


def _title(report: RunReport, started: datetime | None = None) -> str:
    kind = "dry run" if report.dry_run else "run"
    when = started or datetime.now(UTC)
    return f"{report.sync} {kind} of {when:%Y-%m-%d %H:%M:%S} UTC: {state_name(report)}"


def report_markdown(
    report: RunReport,
    details: dict[str, Any],
    change_rows: int,
    changes_key: str,
    started: datetime | None = None,
) -> str:
    """The run report: the outcome in a line, counts per system, then only the sections
    that hold something (conflicts, held conflicts, dead letters, changes)."""
    headers = [COLUMN_TITLES.get(c, c) for c in REPORT_COUNTS]
    lines = [f"# {_title(report, started)}", "", summary_line(report)]
    if report.error:
        lines += ["", f"**Error:** {report.error}"]
    if report.systems:
        lines += [
            "",
            "| system | " + " | ".join(headers) + " |",
            "|---|" + "---:|" * len(REPORT_COUNTS),
        ]
        for row in _count_rows(report):
            lines.append(
                f"| {row['system']} | " + " | ".join(str(row[c]) for c in REPORT_COUNTS) + " |"
            )

    lines += decisions_markdown(report.decisions)
    if report.conflict_list:
        lines += [
            "",
            f"## Conflicts ({len(report.conflict_list)})",
            "",
            "| # | record | field | values | outcome |",
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
        lines += _capped(len(report.conflict_list))

    held = details["held"]
    if held:
        lines += [
            "",
            f"## Held for a person ({len(held)} open)",
            "",
            "Decide with `twoway conflicts resolve "
            f"{report.sync} ID --keep SYSTEM` (or `--value VALUE`); the next run applies it.",
            "",
            "| # | record | field | values | since |",
            "|---|---|---|---|---|",
        ]
        for c in held[:TABLE_CAP]:
            values = ", ".join(f"{s}: {_short(v)}" for s, v in sorted(c["candidates"].items()))
            since = f"{c['detected_at']:%Y-%m-%d %H:%M:%S} UTC" if c.get("detected_at") else ""
            lines.append(
                f"| {c['id']} | {_records(details, c['link_id'])} | {c['field']} | {values} | {since} |"
            )
        lines += _capped(len(held))

    letters = details["letters"] or _unstored_letters(report)
    if letters:
        lines += [
            "",
            f"## Dead letters ({len(letters)} open)",
            "",
            f"Replay with `twoway deadletters retry {report.sync} [IDS]`; each is also tried "
            "again on its own, less often after every attempt.",
            "",
            "| # | system | record | operation | kind | attempts | first seen | error |",
            "|---|---|---|---|---|---:|---|---|",
        ]
        for d in letters[:TABLE_CAP]:
            seen = f"{d['first_seen']:%Y-%m-%d %H:%M:%S} UTC" if d.get("first_seen") else ""
            lines.append(
                f"| {d.get('id') or ''} | {d['system']} | {_letter_record(details, d)} | "
                f"{d['operation']} | {d['kind']} | {d.get('attempts') or ''} | {seen} | "
                f"{_short(d['error'], 200)} |"
            )
        lines += _capped(len(letters))

    if change_rows:
        lines += ["", "## Changes", ""]
        if change_rows > TABLE_CAP:
            lines.append(
                f"{change_rows} field changes; the table artifact `{changes_key}` lists the "
                f"first {TABLE_CAP} (the cap)."
            )
        else:
            lines.append(f"{change_rows} field changes, all in the table artifact `{changes_key}`.")
    return "\n".join(lines)


def _capped(total: int) -> list[str]:
    return [f"\n(first {TABLE_CAP} of {total} shown)"] if total > TABLE_CAP else []


def _unstored_letters(report: RunReport) -> list[dict[str, Any]]:
    """A run whose state store could not be read still lists what it parked."""
    return [{**f, "id": None, "attempts": None, "first_seen": None} for f in report.failures]


def summary_line(report: RunReport) -> str:
    """One line for the run's final state message and ``twoway history``."""
    kind = "dry run" if report.dry_run else "run"
    if report.status != "completed":
        return f"{report.sync} failed: {report.error}"
    return f"{report.sync} {kind} completed: {counts_line(report.systems)}; {report.conflicts} conflicts"


def _publish(definition: Definition | None, report: RunReport, started: datetime) -> dict[str, Any]:
    """The report artifact (always), the change table (when something changed), and the
    run's outcome in the log; returns what the store said, for the events."""
    # the run kept only the rows the capped table shows: a large run plans millions of them
    capped, total = report.changes, report.change_rows
    changes_key = _artifact_key(report.sync, "changes")
    details = _store_details(definition, report) if definition is not None else _no_details(None)
    create_markdown_artifact(
        key=_artifact_key(report.sync, "report"),
        markdown=report_markdown(report, details, total, changes_key, started),
        description=_short(_title(report, started) + ". " + summary_line(report), 250),
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
    if definition is not None:
        refresh_overview(definition)
    return details


def refresh_overview(definition: Definition) -> None:
    """Refresh the sync's overview artifact; a failure to is logged, never fails the run."""
    try:
        publish_overview(definition)
    except Exception as exc:
        get_run_logger().warning("%s: the overview was not refreshed: %s", definition.name, exc)


def _log_outcome(report: RunReport, details: dict[str, Any]) -> None:
    """INFO says what the run did; WARNING what waits for a person (conflicts held, records
    parked); DEBUG says why, record by record."""
    log = get_run_logger()
    settled = [c for c in report.conflict_list if c.get("winner")]
    if settled:
        log.info("%s: %d conflicts settled by policy", report.sync, len(settled))
    held = held_now(report)
    if held:
        log.warning(
            "%s: %d conflicts held for a person (%s); %d open in all: twoway conflicts list %s",
            report.sync,
            len(held),
            _some(f"{c['field']} of {_records(details, c['link_id'])}" for c in held),
            len(details["held"]) or len(held),
            report.sync,
        )
    elif details["held"]:
        log.info(
            "%s: %d conflicts wait for a person: twoway conflicts list %s",
            report.sync,
            len(details["held"]),
            report.sync,
        )
    parked = parked_now(report)
    if parked:
        log.warning(
            "%s: %d records parked as dead letters (%s): twoway deadletters list %s",
            report.sync,
            len(parked),
            _some(f"{f['system']} {_letter_record(details, f)}: {f['error']}" for f in parked),
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
    for system, planned in sorted(report.planned.items()):
        if planned:
            log.debug("%s: %d writes planned for %s", report.sync, planned, system)


def _some(items: Iterable[str], shown: int = 3) -> str:
    """The first few of a list for a log line, and how many more there are."""
    listed = list(items)
    text = "; ".join(_short(i, 120) for i in listed[:shown])
    return text + (f"; and {len(listed) - shown} more" if len(listed) > shown else "")


# -- the run's events -------------------------------------------------------------------


def _emit_events(report: RunReport, details: dict[str, Any]) -> None:
    """Prefect events an automation can notify on: the run's outcome, and what it left
    for a person. The sync is the resource (``twoway.sync.NAME``); counts are the payload."""
    resource = {
        "prefect.resource.id": f"twoway.sync.{report.sync}",
        "prefect.resource.name": report.sync,
    }
    payload = {
        "status": report.status,
        "dry_run": report.dry_run,
        "state": state_name(report),
        "summary": summary_line(report),
        "conflicts": report.conflicts,
        "held": len(held_now(report)),
        "parked": len(parked_now(report)),
        "systems": report.systems,
    }
    if report.error:
        payload["error"] = report.error
    emit_event(f"twoway.sync.{report.status}", resource=resource, payload=payload)
    if payload["held"]:
        ids = [details["ids"].get((c["link_id"], c["field"])) for c in held_now(report)]
        emit_event(
            "twoway.conflict.held",
            resource=resource,
            payload={
                "summary": f"{report.sync}: {payload['held']} conflicts held for a person "
                f"(twoway conflicts list {report.sync})",
                "held": payload["held"],
                "open": len(details["held"]),
                "conflicts": [i for i in ids if i is not None][:100],
            },
        )
    if payload["parked"]:
        per_system: dict[str, int] = {}
        for f in parked_now(report):
            per_system[f["system"]] = per_system.get(f["system"], 0) + 1
        emit_event(
            "twoway.deadletter.parked",
            resource=resource,
            payload={
                "summary": f"{report.sync}: {payload['parked']} records parked as dead "
                f"letters (twoway deadletters list {report.sync})",
                "parked": payload["parked"],
                "open": len(details["letters"]),
                "systems": per_system,
            },
        )


class SyncFailed(RuntimeError):
    """A run that failed; the message names the problem (never a secret)."""

    @property
    def report(self) -> dict[str, Any] | None:
        return self.args[1] if len(self.args) > 1 else None


def _finish(
    definition: Definition | None,
    report: RunReport,
    started: datetime,
    progress: _Progress | None = None,
) -> State:
    """Publish the run's report and events and return its final state. A failed run
    returns a Failed state (its message the one line saying what is wrong) rather than
    raising, so the engine prints no traceback of a failure that is already explained."""
    details = _publish(definition, report, started)
    if progress is not None:
        progress.finish(state_name(report))
    _emit_events(report, details)
    if report.status != "completed":
        line = summary_line(report)
        return Failed(message=line, data=SyncFailed(line, report.as_json()))
    # Prefect takes a returned state as the run's final state: the name and message show
    # in the UI and in `twoway history`; calling the flow still returns the report dict.
    return Completed(name=state_name(report), message=summary_line(report), data=report.as_json())


def _direction(definition: Definition, direction: str) -> tuple[set[str] | None, set[str] | None]:
    text = direction.strip()
    if text == "both":
        return None, None
    source, target = (part.strip() for part in text.split("->"))
    for role, name in (("source", source), ("target", target)):
        if name not in definition.systems:
            known = ", ".join(sorted(definition.systems))
            raise DefinitionError(
                f"direction {direction!r}: {role} {name!r} is not a system of "
                f"{definition.name} (its systems: {known})"
            )
    if source == target:
        raise DefinitionError(f"direction {direction!r} sends a system to itself")
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


Opened = tuple[Definition, set[str] | None, set[str] | None]


def open_run(definition: str, direction: str, dry_run: bool, started: datetime) -> Opened | State:
    """The run's definition and direction, or the Failed state (one line, a report) of a
    run that cannot start: an unknown sync, a broken definition, a wrong direction."""
    try:
        parsed = load_definition(catalog.resolve(definition))
        return (parsed, *_direction(parsed, direction))
    except TwowayError as exc:
        name = (
            catalog.name_of(Path(definition)) if catalog.looks_like_path(definition) else definition
        )
        report = RunReport(sync=name, run_id="", status="failed", dry_run=dry_run)
        report.error = redact(str(exc))
        get_run_logger().error("%s", summary_line(report))
        return _finish(None, report, started)


def run_or_refuse(definition: Definition, runtime: Runtime, **options: Any) -> RunReport | State:
    """:func:`run_sync`, or the Failed state of a run refused because another run of the
    sync holds the lease (that run reports for itself)."""
    try:
        return run_sync(definition, runtime, **options)
    except AlreadyRunning as exc:
        get_run_logger().error("%s: %s", definition.name, exc)
        return Failed(message=f"{definition.name}: {exc}", data=exc)


def _sync(
    definition: str,
    *,
    dry_run: bool,
    full: bool,
    direction: str,
    allow_mass_change: bool,
) -> State:
    log = get_run_logger()
    started = datetime.now(UTC)
    opened = open_run(definition, direction, dry_run, started)
    if isinstance(opened, State):
        return opened
    parsed, sources, targets = opened
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
    runtime = Runtime(tracked=True, observer=progress, logger=log, read_apart=True)
    report = run_or_refuse(
        parsed,
        runtime,
        dry_run=dry_run,
        full=full,
        sources=sources,
        targets=targets,
        allow_mass_change=allow_mass_change,
    )
    if isinstance(report, State):
        return report
    return _finish(parsed, report, started, progress)


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
        definition: Which sync: one of the names listed (the catalog as of the last
            deploy); a run of a deployment accepts only these, a definition file's path
            works only from Python or `twoway run`.
        dry_run: Plan only: write nothing to any system nor to the sync's state.
        full: Read every record, not only the changes since the last run (a resync).
        direction: 'both', or one of the 'SOURCE -> TARGET' listed to carry changes one
            way only (the two systems must belong to the sync).
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
        definition: Which sync: one of the names listed (the catalog as of the last
            deploy); a run of a deployment accepts only these, a definition file's path
            works only from Python or `twoway run`.
        source: The system whose changes are read.
        target: The system they are written to.
        dry_run: Plan only: write nothing to any system nor to the sync's state.
        full: Read every record of the source, not only its changes.
    """
    return _sync(
        definition,
        dry_run=dry_run,
        full=full,
        direction=f"{source} -> {target}",
        allow_mass_change=False,
    )
