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

from twoway.errors import AlreadyRunning, DefinitionError, TwowayError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RUNNING = 0, 1, 2, 3


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

    plan = sub.add_parser("plan", help="show what a run would change, field by field")
    plan.add_argument("path")
    plan.add_argument("--full", action="store_true")

    status = sub.add_parser("status", help="linked records, conflicts, dead letters, last runs")
    status.add_argument("path")
    status.add_argument("--json", action="store_true")

    letters = sub.add_parser("deadletters", help="records that could not be applied")
    letters.add_argument("action", choices=["list", "retry"])
    letters.add_argument("path")
    letters.add_argument("ids", nargs="*", type=int, help="retry only these ids")

    demo = sub.add_parser("demo", help="the demo sync on embedded defaults")
    demo.add_argument("--dir", default="twoway-demo", help="folder for the demo's files")
    demo.add_argument("--records", type=int, default=300, help="contacts per side")

    sub.add_parser("schema", help="print the JSON Schema of sync definitions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "check": cmd_check,
        "plan": cmd_plan,
        "status": cmd_status,
        "deadletters": cmd_deadletters,
        "demo": cmd_demo,
        "schema": cmd_schema,
    }[args.command]
    try:
        return handler(args)
    except DefinitionError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except AlreadyRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNNING
    except TwowayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _load(path: str):
    from twoway.definition import load_definition

    return load_definition(path)


def run_flow(path: str, *, dry_run: bool, full: bool, allow_mass_change: bool) -> dict[str, Any]:
    """Run the two-way flow and return its report (also when it failed)."""
    _quiet_temporary_server()
    from flows.twoway_flows import two_way_sync

    state = two_way_sync(
        definition=str(Path(path).resolve()),
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


def _quiet_temporary_server() -> None:
    """With no Prefect server configured, Prefect starts a temporary one for the run; its
    shutdown noise and telemetry are not the user's business."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return
    for name in ("prefect.server", "docket", "sqlalchemy.pool", "uvicorn", "prefect._internal"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def cmd_run(args: argparse.Namespace) -> int:
    definition = _load(args.path)
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
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return EXIT_OK if report.get("status") == "completed" else EXIT_FAILED


def _print_report(report: dict[str, Any]) -> None:
    from twoway.report import COUNT_COLUMNS, text_table

    title = "dry run" if report.get("dry_run") else "run"
    print(f"{report['sync']}: {title} {report['status']}, {report.get('conflicts', 0)} conflicts")
    rows = [{"system": s, **c} for s, c in sorted(report.get("systems", {}).items())]
    if rows:
        print(text_table(rows, ["system", *COUNT_COLUMNS]))
    if report.get("error"):
        print(f"error: {report['error']}")


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
        except DefinitionError as exc:
            problems += exc.problems
            continue
        except TwowayError as exc:
            problems.append(f"{prefix}{where}: {exc}")
            continue
        for key in ("key", "modified_at", "modified_by"):
            column = getattr(system, key)
            if column and column not in columns:
                problems.append(f"{prefix}{where}.{key}: column {column!r} does not exist")
        for fname, column in definition.fields_of(name).items():
            if column not in columns:
                problems.append(
                    f"{prefix}fields.{fname}.{name}: column {column!r} does not exist in {name}"
                )
    store = StateStore(definition.state)
    try:
        store.migrate()
    except TwowayError as exc:
        problems.append(f"{prefix}state: {exc}")
    finally:
        store.close()
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    definition = _load(args.path)
    problems = check_definition(definition)
    if problems:
        raise DefinitionError(problems)
    print(f"{args.path}: ok ({len(definition.systems)} systems, {len(definition.fields)} fields)")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from twoway.engine import run_sync
    from twoway.report import counts_table, plan_rows, text_table

    definition = _load(args.path)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = run_sync(definition, dry_run=True, full=args.full)
    if report.status != "completed":
        print(f"error: {report.error}", file=sys.stderr)
        return EXIT_FAILED
    rows = plan_rows(report.plan) if report.plan else []
    print(f"{definition.name}: plan ({len(rows)} field changes, {report.conflicts} conflicts)")
    print(counts_table(report))
    if rows:
        print()
        print(text_table(rows, ["system", "action", "record", "field", "before", "after"]))
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


def cmd_deadletters(args: argparse.Namespace) -> int:
    definition = _load(args.path)
    store = _open_store(definition)
    try:
        if args.action == "retry":
            count = store.retry_dead_letters(definition.name, args.ids)
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
    from twoway.demo import run_demo

    return run_demo(Path(args.dir), records=args.records)


def cmd_schema(args: argparse.Namespace) -> int:
    from twoway.definition import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
