"""The ``twoway`` command.

Exit codes: 0 completed; 1 the run failed; 2 bad command line or definition (including a
missing file); 3 another run of the sync is in progress.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.run import quiet_temporary_server, run_flow
from twoway.errors import AlreadyRunning, DefinitionError, TwowayError, redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RUNNING = 0, 1, 2, 3
#: where the demo's files go, and where syncs/*.sync.yaml read them
DEMO_DIR_ENV = "TWOWAY_DEMO_DIR"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 itself; keep its wording short
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="twoway", description="Bi-directional record sync as Prefect flows.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a sync once (the two-way flow)")
    run.add_argument("path", help="sync definition (YAML)")
    run.add_argument("--dry-run", action="store_true", help="plan only: write nothing anywhere")
    run.add_argument("--full", action="store_true", help="read every record, not only changes")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    run.add_argument(
        "--allow-mass-change", action="store_true", help="allow deleting more than the limit"
    )

    check = sub.add_parser("check", help="validate a definition against its systems")
    check.add_argument("path")

    init = sub.add_parser(
        "init", help="prepare a definition's systems: the link marker columns, the state store"
    )
    init.add_argument("path")

    plan = sub.add_parser("plan", help="show what a run would change, field by field")
    plan.add_argument("path")
    plan.add_argument("--full", action="store_true")

    status = sub.add_parser("status", help="linked records, conflicts, dead letters, last runs")
    status.add_argument("path")
    status.add_argument("--json", action="store_true")

    state = sub.add_parser("state", help="the state store of a sync")
    state_sub = state.add_subparsers(dest="state_command", required=True, parser_class=_Parser)
    upgrade = state_sub.add_parser(
        "upgrade", help="bring the state store's schema up to this twoway's, now"
    )
    upgrade.add_argument("path", help="sync definition (NAME or PATH)")

    letters = sub.add_parser("deadletters", help="records that could not be applied")
    letters.add_argument("action", choices=["list", "retry"])
    letters.add_argument("path")
    letters.add_argument("ids", nargs="*", type=int, help="retry only these ids")

    demo = sub.add_parser(
        "demo", help="a SharePoint list (simulated) and a SQLite table kept in step"
    )
    demo.add_argument(
        "--dir",
        help="folder for the demo's files (default: $TWOWAY_DEMO_DIR, the folder the "
        "definitions in ./syncs read, else ./twoway-demo)",
    )
    demo.add_argument("--records", type=int, default=300, help="contacts per side")
    demo.add_argument(
        "--sql",
        action="store_true",
        help="the two-database demo (crm.db and portal.db, the `contacts` deployment's files)",
    )

    sub.add_parser("schema", help="print the JSON Schema of sync definitions")
    _add_operations_parsers(sub)

    sim = sub.add_parser("simulate", help="serve a simulator of a SaaS system on 127.0.0.1")
    sim.add_argument("kind", choices=["sharepoint", "salesforce", "rest"])
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument("--client-id", help="OAuth2 client id the simulator accepts")
    sim.add_argument("--client-secret", help="OAuth2 client secret the simulator accepts")
    sim.add_argument("--faults", default="", help="e.g. lock=0.05,throttle=0.05,unavailable=0.02")
    sim.add_argument("--latency", type=float, default=0.0, help="extra milliseconds per request")
    sim.add_argument("--data", help="JSON or YAML file of lists/objects and records to start with")
    sim.add_argument(
        "--token", action="append", default=[], help="rest: TOKEN=ACCOUNT (repeatable)"
    )
    sim.add_argument(
        "--tenant", help="sharepoint: the directory (tenant) id the token endpoint accepts"
    )
    sim.add_argument("--org", help="salesforce: the org id (00D...) the org answers as")
    return parser


def _add_operations_parsers(sub: Any) -> None:
    """Operations: the webhook receiver, run history and conflicts held for a person."""
    hooks = sub.add_parser("webhooks", help="change notifications -> Prefect events -> runs")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", required=True, parser_class=_Parser)
    serve = hooks_sub.add_parser("serve", help="run the webhook receiver (an ASGI app)")
    serve.add_argument("--port", type=int, default=8787, help="port to listen on (8787)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument(
        "--deployment",
        default="twoway-sync/{sync}",
        help="deployment of a sync, to debounce against its runs ('twoway-sync/{sync}')",
    )
    serve.add_argument(
        "--subscribe",
        action="append",
        default=[],
        metavar="NAME",
        help="create or renew this sync's Graph subscriptions once listening (repeatable)",
    )
    serve.add_argument("--public-url", help="the URL systems reach the receiver at")
    serve.add_argument(
        "--renew-hours", type=float, default=24.0, help="renew subscriptions this often (24)"
    )
    subscribe = hooks_sub.add_parser(
        "subscribe", help="create or renew the Graph subscriptions of a sync's SharePoint lists"
    )
    subscribe.add_argument("name", help="sync NAME (or definition PATH)")
    subscribe.add_argument(
        "--public-url", required=True, help="where Graph reaches the receiver, e.g. https://..."
    )
    subscribe.add_argument("--system", action="append", help="only this system (repeatable)")
    subscribe.add_argument(
        "--minutes", type=int, default=41760, help="lifetime of the subscription (29 days)"
    )
    subscribe.add_argument("--json", action="store_true")

    alerts = sub.add_parser("alerts", help="notify on failed runs, held conflicts, dead letters")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True, parser_class=_Parser)
    create = alerts_sub.add_parser(
        "create", help="create the automations of prefect.yaml with a notification block"
    )
    create.add_argument("block", help="saved notification block, TYPE/NAME (slack-webhook/ops)")
    create.add_argument("--project", default="prefect.yaml", help="the project file")

    history = sub.add_parser("history", help="the last runs of a sync, from the Prefect API")
    history.add_argument("name", help="sync NAME (or definition PATH)")
    history.add_argument("--limit", type=int, default=10)
    history.add_argument("--json", action="store_true")

    conflicts = sub.add_parser("conflicts", help="conflicts held for a person")
    conflicts_sub = conflicts.add_subparsers(
        dest="conflicts_command", required=True, parser_class=_Parser
    )
    clist = conflicts_sub.add_parser("list", help="open conflicts and decisions not applied yet")
    clist.add_argument("name", help="sync NAME (or definition PATH)")
    clist.add_argument("--json", action="store_true")
    resolve = conflicts_sub.add_parser("resolve", help="decide a conflict; the next run applies it")
    resolve.add_argument("name", help="sync NAME (or definition PATH)")
    resolve.add_argument("id", type=int, help="conflict id (twoway conflicts list)")
    choice = resolve.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--keep", metavar="SYSTEM|VALUE", help="keep this system's value, or else this value"
    )
    choice.add_argument("--value", help="keep this value (even if it names a system)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "check": cmd_check,
        "init": cmd_init,
        "plan": cmd_plan,
        "status": cmd_status,
        "state": cmd_state,
        "deadletters": cmd_deadletters,
        "demo": cmd_demo,
        "schema": cmd_schema,
        "webhooks": cmd_webhooks,
        "history": cmd_history,
        "alerts": cmd_alerts,
        "conflicts": cmd_conflicts,
        "simulate": cmd_simulate,
    }[args.command]
    # Prefect sends the events of a command (a saved block loaded) at exit, and warns on
    # stderr that it is "still processing items" meanwhile; it sends them all the same
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)
    try:
        return handler(args)
    except DefinitionError as exc:
        for line in exc.problems:
            print(f"error: {redact(line)}", file=sys.stderr)
        return EXIT_USAGE
    except AlreadyRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNNING
    except TwowayError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an unforeseen input: one line, no traceback
        if os.environ.get("TWOWAY_DEBUG"):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {redact(str(exc))} "
            "(set TWOWAY_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _load(path: str):
    """The definition of a sync NAME (from the catalog, ./syncs) or PATH."""
    from twoway import catalog

    return catalog.load(path)


def cmd_run(args: argparse.Namespace) -> int:
    definition = _load(args.path)
    _refuse_a_newer_state(definition)
    _refuse_a_missing_driver(definition)
    sink = sys.stderr if args.json else sys.stdout
    try:
        with contextlib.redirect_stdout(sink):
            report = run_flow(
                args.path,
                dry_run=args.dry_run,
                full=args.full,
                allow_mass_change=args.allow_mass_change,
            )
    except AlreadyRunning as exc:
        if args.json:
            print(
                json.dumps(
                    {"sync": definition.name, "status": "already_running", "error": str(exc)}
                )
            )
        raise
    report.setdefault("sync", definition.name)
    report.setdefault("dry_run", args.dry_run)
    if report.get("error"):
        report["error"] = redact(str(report["error"]))
    completed = report.get("status") == "completed"
    if args.json:
        print(json.dumps(report))
    elif completed:
        _print_report(report)
    if not completed:  # the one line of the run's Failed state
        print(f"{report['sync']} failed: {report.get('error')}", file=sys.stderr)
    return EXIT_OK if completed else EXIT_FAILED


def _refuse_a_newer_state(definition) -> None:
    """A state store newer than this twoway is refused before the run starts (exit 2, one
    line); any other trouble with the store is the run's to report."""
    from twoway.migrations import StateTooNew
    from twoway.state import StateStore

    try:
        store = StateStore(definition.state)
        try:
            store.migrate()
        finally:
            store.close()
    except StateTooNew:
        raise
    except TwowayError:
        return


def _refuse_a_missing_driver(definition) -> None:
    """A saved block's database URL whose driver is not installed is refused before the run
    starts (exit 2, one line naming the extra), as ``check`` and a URL in the definition
    are; any other trouble opening a system is the run's to report."""
    from twoway.connectors import open_endpoint
    from twoway.dburl import DriverMissing

    saved = [name for name, system in definition.systems.items() if system.block is not None]
    if not saved:
        return  # the definition's own URLs were checked when it was loaded
    quiet_temporary_server()
    for name in saved:
        try:
            endpoint = open_endpoint(definition, name)
        except DriverMissing:
            raise
        except Exception:  # a block that does not exist, an unreachable API: the run says so
            continue
        endpoint.close()


def _print_report(report: dict[str, Any]) -> None:
    from twoway.report import COUNT_COLUMNS, text_table

    title = "dry run" if report.get("dry_run") else "run"
    print(f"{report['sync']}: {title} {report['status']}, {report.get('conflicts', 0)} conflicts")
    rows = [{"system": s, **c} for s, c in sorted(report.get("systems", {}).items())]
    if rows:
        print(text_table(rows, ["system", *COUNT_COLUMNS]))


def check_definition(definition) -> list[str]:
    """Problems of a definition against its systems: tables, columns, the state store."""
    from twoway.connectors import open_endpoint
    from twoway.state import StateStore

    problems = []
    prefix = f"{definition.path}: "
    for name, system in definition.systems.items():
        where = f"systems.{name}"
        try:
            with open_endpoint(definition, name) as endpoint:
                columns = endpoint.columns()
        except DefinitionError as exc:  # a missing driver of a saved block's URL among them
            problems += exc.problems
            continue
        except TwowayError as exc:
            problems.append(f"{prefix}{where}: {exc}")
            continue
        for key in ("key", "modified_at", "modified_by"):
            column = getattr(system, key)
            if column and column not in columns:
                problems.append(f"{prefix}{where}.{key}: column {column!r} does not exist")
        marker = getattr(system, "link_column", None)
        if marker and marker not in columns:
            problems.append(
                f"{prefix}{where}.link_column: column {marker!r} does not exist "
                f"(`twoway init {definition.path}` adds it)"
            )
        for fname, column in definition.fields_of(name).items():
            if column not in columns:
                problems.append(
                    f"{prefix}fields.{fname}.{name}: column {column!r} does not exist in {name}"
                )
    try:
        store = StateStore(definition.state)
    except Exception as exc:  # a folder that cannot be made, a driver that is missing
        problems.append(f"{prefix}state: cannot open the state store: {redact(str(exc))}")
        return problems
    try:
        store.migrate()
    except Exception as exc:
        problems.append(f"{prefix}state: cannot open the state store: {redact(str(exc))}")
    finally:
        store.close()
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    definition = _load(args.path)
    problems = check_definition(definition)
    if problems:
        raise DefinitionError(problems)
    print(f"{args.path}: ok ({len(definition.systems)} systems, {len(definition.fields)} fields)")
    for line in link_marker_notes(definition):
        print(f"note: {line}")
    return EXIT_OK


def link_marker_notes(definition) -> list[str]:
    """The systems where twoway cannot mark its creates, and what that leaves possible."""
    return [
        f"systems.{name} has no link marker ({_MARKER_KEY.get(system.kind, 'link_column')}): "
        "a create whose answer is lost and whose copy a person edits before the next run "
        "can give a duplicate (docs/operations.md, 'Link markers')"
        for name, system in definition.systems.items()
        if not getattr(system, _MARKER_KEY.get(system.kind, "link_column"), None)
    ]


#: the key that names a kind's link marker (where it has one)
_MARKER_KEY = {
    "sql": "link_column",
    "sharepoint": "link_column",
    "directus": "link_column",
    "salesforce": "external_id_field",
}


def cmd_init(args: argparse.Namespace) -> int:
    """Add each SQL or Directus system's link marker column where the definition asks for
    one, and create or upgrade the state store: what a sync needs before its first run."""
    from twoway.connectors import open_endpoint
    from twoway.state import StateStore

    definition = _load(args.path)
    for name, system in definition.systems.items():
        if not getattr(system, "link_column", None):
            continue
        with open_endpoint(definition, name) as endpoint:
            add = getattr(endpoint, "add_link_column", None)
            if add is not None:
                state = "added" if add() else "present"
            elif system.link_column in endpoint.columns():
                state = "present"
            else:  # a SharePoint list: its owner adds columns
                state = "missing: add it to the list as a single line of text"
        print(f"systems.{name}: link column {system.link_column!r} {state}")
    store = StateStore(definition.state)
    try:
        store.migrate()
    finally:
        store.close()
    print(f"state: ready ({redact(definition.state)})")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from flows.steps import run_sync
    from twoway.report import counts_table, text_table

    definition = _load(args.path)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = run_sync(definition, dry_run=True, full=args.full)
    if report.status != "completed":
        print(f"error: {report.error}", file=sys.stderr)
        return EXIT_FAILED
    rows = report.changes
    print(
        f"{definition.name}: plan ({report.change_rows} field changes, {report.conflicts} conflicts)"
    )
    print(counts_table(report))
    if rows:
        print()
        print(text_table(rows, ["system", "action", "record", "field", "before", "after"]))
        if report.change_rows > len(rows):
            print(f"(the first {len(rows)} of {report.change_rows} field changes)")
    for c in report.conflict_list:
        values = ", ".join(f"{s}={v!r}" for s, v in sorted(c["candidates"].items()))
        kept = c["winner"] or "held for a person"
        print(f"conflict: link {c['link_id']} field {c['field']}: {values} -> {kept}")
    return EXIT_OK


def _open_store(definition):
    from twoway.state import StateStore

    store = StateStore(definition.state)
    store.migrate()
    return store


def cmd_status(args: argparse.Namespace) -> int:
    definition = _load(args.path)
    store = _open_store(definition)
    try:
        counts = store.counts(definition.name)
        last = store.last_runs(definition.name, 5)
        conflicts = store.open_conflicts(definition.name)
        letters = store.open_dead_letters(definition.name)
    finally:
        store.close()
    _refresh_overview(definition)
    if args.json:
        print(
            json.dumps(
                {
                    "sync": definition.name,
                    **counts,
                    "last_runs": [
                        {
                            k: (str(v) if k.endswith("_at") and v else v)
                            for k, v in r.items()
                            if k != "summary"
                        }
                        for r in last
                    ],
                }
            )
        )
        return EXIT_OK
    print(f"sync {definition.name}")
    for system in definition.systems:
        linked = counts["linked"].get(system, 0)
        deleted = counts["deleted"].get(system, 0)
        print(f"  {system}: {linked} linked records, {deleted} deleted")
    print(f"  open conflicts: {len(conflicts)}")
    for c in conflicts[:20]:
        print(f"    #{c['id']} link {c['link_id']} field {c['field']}: {c['candidates']}")
    print(f"  dead letters: {len(letters)}")
    for d in letters[:20]:
        print(
            f"    #{d['id']} {d['system']} {d['external_id'] or d['link_id']} {d['operation']}: {d['error']}"
        )
    print("  last runs:")
    for r in last:
        finished = f"{r['finished_at']:%Y-%m-%d %H:%M:%S}" if r["finished_at"] else "-"
        note = f" ({r['error']})" if r["error"] else ""
        print(
            f"    {r['started_at']:%Y-%m-%d %H:%M:%S} -> {finished} {r['status']}{' dry run' if r['dry_run'] else ''}{note}"
        )
    return EXIT_OK


def _refresh_overview(definition) -> None:
    """With a Prefect server configured, refresh the sync's overview artifact there."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        return  # no server to show it on (a temporary one would vanish with this process)
    from twoway.overview import publish_overview

    try:
        publish_overview(definition)
    except Exception as exc:  # the status itself is still right
        print(f"note: the overview was not refreshed: {redact(str(exc))}", file=sys.stderr)


def cmd_state(args: argparse.Namespace) -> int:
    """``twoway state upgrade``: migrate the sync's state store now rather than on first use
    (say with a database user allowed DDL); a store newer than this twoway is refused."""
    from twoway.state import SCHEMA_VERSION, StateStore

    definition = _load(args.path)
    store = StateStore(definition.state)
    try:
        found = store.migrate()
    finally:
        store.close()
    where = f"{definition.name}: state store {redact(definition.state)}"
    if found == SCHEMA_VERSION:
        print(f"{where} is at schema version {SCHEMA_VERSION}: nothing to upgrade")
    elif found == 0:
        print(f"{where} created at schema version {SCHEMA_VERSION}")
    else:
        print(f"{where} upgraded from schema version {found} to {SCHEMA_VERSION}")
    return EXIT_OK


def cmd_deadletters(args: argparse.Namespace) -> int:
    definition = _load(args.path)
    store = _open_store(definition)
    try:
        if args.action == "retry":
            from twoway.review import command_line_user

            count = store.retry_dead_letters(definition.name, args.ids, by=command_line_user())
            print(f"{count} dead letters will be retried on the next run")
            return EXIT_OK
        letters = store.open_dead_letters(definition.name)
    finally:
        store.close()
    from twoway.report import text_table

    rows = [
        {
            "id": d["id"],
            "system": d["system"],
            "record": d["external_id"] or "",
            "link": d["link_id"] or "",
            "operation": d["operation"],
            "kind": d["kind"],
            "attempts": d["attempts"],
            "error": d["error"],
        }
        for d in letters
    ]
    print(text_table(rows, list(rows[0])) if rows else "no dead letters")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from twoway.demo import run_demo, run_sql_demo

    folder = Path(args.dir or os.environ.get(DEMO_DIR_ENV) or "twoway-demo")
    if args.sql:
        return run_sql_demo(folder, records=args.records)
    return run_demo(folder, records=args.records)


def cmd_schema(args: argparse.Namespace) -> int:
    from twoway.definition import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


# -- operations: webhooks, history, conflicts --------------------------------------------


def cmd_webhooks(args: argparse.Namespace) -> int:
    from twoway import webhooks

    if args.webhooks_command == "serve":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call is noise
        webhooks.serve(
            args.port,
            args.host,
            deployment=args.deployment,
            subscribe_syncs=[_load(n).name for n in args.subscribe],
            public_url=args.public_url,
            renew_hours=args.renew_hours,
        )
        return EXIT_OK
    results = webhooks.subscribe(
        args.name, args.public_url, systems=args.system, minutes=args.minutes
    )
    if args.json:
        print(json.dumps(results))
    for sub in [] if args.json else results:
        print(
            f"{sub['sync']}/{sub['system']}: subscription {sub['id']} {sub['action']} "
            f"-> {sub['notificationUrl']}, expires {sub['expirationDateTime']}"
        )
    return EXIT_OK


def _require_api() -> None:
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise TwowayError(
            "PREFECT_API_URL is not set: run history and automations live on your Prefect server "
            "(prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api)"
        )


def sync_history(name: str, limit: int = 10) -> list[dict[str, Any]]:
    """The last runs of a sync from the Prefect API, newest first, as plain dicts."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from twoway import catalog

    now = datetime.now(UTC)
    names: dict[str, str] = {}

    def sync_of(ref: Any) -> str:
        ref = str(ref)
        if ref not in names:
            names[ref] = catalog.name_of(Path(ref)) if catalog.looks_like_path(ref) else ref
        return names[ref]

    out: list[dict[str, Any]] = []
    offset = 0
    with get_client(sync_client=True) as client:
        deployments: dict[Any, str] = {}
        while len(out) < limit:
            page = client.read_flow_runs(
                flow_filter=FlowFilter(
                    name=FlowFilterName(any_=["twoway-sync", "twoway-sync-one-way"])
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=200,
                offset=offset,
            )
            if not page:
                break
            offset += len(page)
            for run in page:
                if sync_of(run.parameters.get("definition", "")) != name:
                    continue
                state = run.state
                if (
                    state is not None
                    and state.is_scheduled()
                    and (run.expected_start_time and run.expected_start_time > now)
                ):
                    continue  # a future scheduled run is not history
                if run.deployment_id and run.deployment_id not in deployments:
                    try:
                        deployments[run.deployment_id] = client.read_deployment(
                            run.deployment_id
                        ).name
                    except Exception:
                        deployments[run.deployment_id] = str(run.deployment_id)
                created_by = getattr(run.created_by, "type", None)
                how = (
                    "schedule"
                    if "auto-scheduled" in (run.tags or [])
                    else "event"
                    if created_by == "AUTOMATION"
                    else "deployment"
                    if run.deployment_id
                    else "direct"
                )
                took = run.total_run_time.total_seconds() if run.total_run_time else None
                out.append(
                    {
                        "id": str(run.id),
                        "name": run.name,
                        "state": state.name if state else "?",
                        "started": run.start_time or run.expected_start_time,
                        "seconds": took,
                        "how": how,
                        "deployment": deployments.get(run.deployment_id),
                        "dry_run": bool(run.parameters.get("dry_run")),
                        "message": (state.message or "") if state else "",
                    }
                )
                if len(out) >= limit:
                    break
    return out


def cmd_alerts(args: argparse.Namespace) -> int:
    from twoway.alerts import create_alerts

    _require_api()
    for name, automation_id in create_alerts(args.block, Path(args.project)):
        print(f"automation {name!r} created ({automation_id}), notifying through {args.block}")
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    definition = _load(args.name)
    _require_api()
    runs = sync_history(definition.name, args.limit)
    if args.json:
        print(
            json.dumps(
                [{**r, "started": r["started"].isoformat() if r["started"] else None} for r in runs]
            )
        )
        return EXIT_OK
    if not runs:
        print(f"no runs of {definition.name} on this Prefect server yet")
        return EXIT_OK
    from twoway.report import text_table

    rows = [
        {
            "started (UTC)": f"{r['started']:%Y-%m-%d %H:%M:%S}" if r["started"] else "-",
            "took": f"{r['seconds']:.1f}s" if r["seconds"] is not None else "-",
            "state": r["state"],
            "how": r["how"],
            "run": r["name"],
            "summary": _shorten(r["message"], 110),
        }
        for r in runs
    ]
    print(text_table(rows, list(rows[0])))
    return EXIT_OK


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cmd_conflicts(args: argparse.Namespace) -> int:
    definition = _load(args.name)
    store = _open_store(definition)
    try:
        if args.conflicts_command == "resolve":
            return _resolve_conflict(definition, store, args)
        held = store.open_conflicts(definition.name)
        decided = store.decided_conflicts(definition.name)
        links = {c["link_id"] for c in held + decided}
        records = {
            link: {m.system: m.external_id for m in members}
            for link, members in store.members_of(definition.name, links).items()
        }
    finally:
        store.close()
    rows = []
    for c in held + decided:
        candidates = c.get("candidates")
        if isinstance(candidates, str):
            candidates = json.loads(candidates)
        rows.append(
            {
                "id": c["id"],
                "status": "open" if c["status"] == "open" else "decided (next run applies it)",
                "records": ", ".join(
                    f"{s} {k}" for s, k in sorted(records.get(c["link_id"], {}).items())
                )
                or c["link_id"],
                "field": c["field"],
                "values": candidates,
                "chosen": c.get("chosen"),
                "detected": c["detected_at"],
            }
        )
    if args.json:
        print(json.dumps([{**r, "detected": str(r["detected"])} for r in rows]))
        return EXIT_OK
    if not rows:
        print(f"{definition.name}: no conflicts wait for a person")
        return EXIT_OK
    from twoway.report import text_table

    table = [
        {
            **r,
            "values": ", ".join(f"{s}={v!r}" for s, v in sorted((r["values"] or {}).items())),
            "chosen": "" if r["status"] == "open" else repr(r["chosen"]),
            "detected": f"{r['detected']:%Y-%m-%d %H:%M:%S}",
        }
        for r in rows
    ]
    print(text_table(table, ["id", "status", "records", "field", "values", "chosen", "detected"]))
    print(
        f"\ndecide one: twoway conflicts resolve {definition.name} ID --keep SYSTEM (or --value VALUE)"
    )
    return EXIT_OK


def _resolve_conflict(definition, store, args: argparse.Namespace) -> int:
    from twoway.review import command_line_user, resolve_conflict

    decided = resolve_conflict(
        definition, store, args.id, keep=args.keep, value=args.value, by=command_line_user()
    )
    source = f" (the value of {decided['system']})" if decided["system"] else ""
    print(
        f"conflict #{decided['id']} decided: {decided['field']} = {decided['chosen']!r}{source}; "
        "the next run applies it"
    )
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    """Serve a simulator until interrupted; it prints its base URL and token URL."""
    from twoway.simulators.faults import FaultPlan

    try:
        FaultPlan.parse(args.faults)
    except ValueError as exc:
        raise DefinitionError(f"--faults: {exc}") from None
    if args.data and not Path(args.data).is_file():
        raise DefinitionError(f"--data: {args.data}: no such file")
    for option, value, kind in (
        ("--tenant", args.tenant, "sharepoint"),
        ("--org", args.org, "salesforce"),
    ):
        if value is not None and args.kind != kind:
            raise DefinitionError(f"{option}: only the {kind} simulator takes it")
    if args.kind == "rest":
        from twoway.simulators import rest

        argv = ["--port", str(args.port), "--faults", args.faults]
        for token in args.token:
            argv += ["--token", token]
        if args.data:
            argv += ["--load", args.data]
        rest.main(argv)
        return EXIT_OK
    if args.kind == "sharepoint":
        from twoway.simulators.graph import serve

        account = {"tenant": args.tenant}
    else:
        from twoway.simulators.salesforce import serve

        account = {"org_id": args.org}
    options = {
        k: v for k, v in (("client_id", args.client_id), ("client_secret", args.client_secret)) if v
    }
    try:
        serve(
            args.port,
            faults=args.faults or None,
            latency_ms=args.latency,
            data=args.data,
            **options,
            **account,
        )
    except ValueError as exc:  # an account id of the wrong form
        raise DefinitionError(str(exc)) from None
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
