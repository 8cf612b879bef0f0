"""A run's outcome (its report) and how terminals show it: the plan as a field-level table
and aligned count tables."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twoway.contract import Create, Delete, Update

if TYPE_CHECKING:
    from twoway.records import Plan

COUNT_COLUMNS = (
    "extracted",
    "reread",
    "echo_skipped",
    "created",
    "updated",
    "deleted",
    "failed",
    "deferred",
)
TABLE_CAP = 500


@dataclass
class RunReport:
    """The outcome of a run: what ``--json`` prints and the run artifact shows."""

    sync: str
    run_id: str
    status: str = "completed"
    dry_run: bool = False
    conflicts: int = 0
    systems: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)  # field changes, capped
    change_rows: int = 0  # field changes in all (the table shows TABLE_CAP at most)
    planned: dict[str, int] = field(default_factory=dict)  # writes planned per system
    chunks: int = 0
    conflict_list: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # people's, this run wrote
    seconds: float = 0.0  # the run itself: state, reads, writes, commit (not start-up)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sync": self.sync,
            "status": self.status,
            "dry_run": self.dry_run,
            "conflicts": self.conflicts,
            "systems": self.systems,
            "seconds": round(self.seconds, 3),
        }
        if self.error is not None:
            out["error"] = self.error
        out["run_id"] = self.run_id
        return out


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


Refused = set[tuple[str, str]]
"""(system, link id) of the writes a system refused or held back: none of them a change."""


def refused_writes(failures: list[dict[str, Any]]) -> Refused:
    """The writes of a run that did not happen, from its report's failures."""
    return {(f["system"], f["link_id"]) for f in failures if f.get("link_id")}


def count_plan_rows(plan: Plan, refused: Refused = frozenset()) -> int:
    """How many rows :func:`plan_rows` gives, without building them."""
    return sum(
        1 if isinstance(p.op, Delete) else len(p.fields)
        for system, planned in plan.ops.items()
        for p in planned
        if (system, p.link_id) not in refused
    )


def plan_rows(
    plan: Plan, limit: int | None = None, refused: Refused = frozenset()
) -> list[dict[str, Any]]:
    """One row per field a plan would write: system, action, record, field, before, after;
    the writes in ``refused`` left out (they changed nothing).

    With ``limit``, only the first ``limit`` rows (a capped table need not build the rest).
    """
    rows: list[dict[str, Any]] = []
    for system, planned in sorted(plan.ops.items()):
        for p in planned:
            if (system, p.link_id) in refused:
                continue
            if limit is not None and len(rows) >= limit:
                return rows[:limit]
            if isinstance(p.op, Delete):
                rows.append(
                    {
                        "system": system,
                        "action": "delete",
                        "record": p.op.key,
                        "field": "",
                        "before": "",
                        "after": "",
                    }
                )
                continue
            action = "create" if isinstance(p.op, Create) else "update"
            record = "(new)" if isinstance(p.op, Create) else p.op.key
            for fname, value in sorted(p.fields.items()):
                before = p.before.get(fname) if isinstance(p.op, Update) else None
                rows.append(
                    {
                        "system": system,
                        "action": action,
                        "record": record,
                        "field": fname,
                        "before": "" if before is None else _value(before),
                        "after": "" if value is None else _value(value),
                    }
                )
    return rows if limit is None else rows[:limit]


def text_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned table for terminals."""
    if not rows:
        return ""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def counts_table(report: RunReport) -> str:
    rows = [{"system": s, **c} for s, c in sorted(report.systems.items())]
    return text_table(rows, ["system", *COUNT_COLUMNS])
