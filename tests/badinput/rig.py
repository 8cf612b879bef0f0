"""Helpers of the bad-input tests: the CLI as a subprocess, and two SQL tables whose
column types each test chooses, kept in step by a definition written for it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from flows.steps import run_sync
from twoway.definition import Definition, load_definition
from twoway.engine import Runtime
from twoway.report import RunReport

REPO = Path(__file__).resolve().parents[2]


def twoway(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    """Run ``twoway ARGS`` as a user would; returns the completed process (text)."""
    environment = {**os.environ, **(env or {})}
    environment.pop("TWOWAY_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "twoway.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=environment,
        timeout=120,
    )


def no_traceback(result: subprocess.CompletedProcess) -> bool:
    """True when neither output stream holds a Python traceback."""
    return "Traceback" not in result.stderr and "Traceback" not in result.stdout


class Pair:
    """Systems ``a`` and ``b``: one table each (``id`` key, ``m``/``b`` stamps) with the
    data columns given as ``{column: SQL type}``, mapped field = column on both sides.
    ``key_sql`` is the SQLite key column's definition."""

    def __init__(
        self,
        tmp_path: Path,
        columns: dict[str, str],
        columns_b: dict[str, str] | None = None,
        urls: dict[str, str] | None = None,
        key_sql: str = "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT",
        **options: Any,
    ):
        self.tmp_path = tmp_path
        self.columns = {"a": columns, "b": columns_b or columns}
        self.engines: dict[str, sa.Engine] = {}
        self.tables: dict[str, str] = {}
        self.urls = {
            s: (urls or {}).get(s) or f"sqlite:///{tmp_path / (s + '.db')}" for s in ("a", "b")
        }
        for system in ("a", "b"):
            engine = sa.create_engine(self.urls[system])
            name = f"t_{uuid.uuid4().hex[:10]}"
            mysql = engine.dialect.name in ("mysql", "mariadb")
            key = (
                "id INTEGER PRIMARY KEY AUTO_INCREMENT"
                if mysql
                else "id SERIAL PRIMARY KEY"
                if engine.dialect.name == "postgresql"
                else key_sql
            )
            stamp = "DATETIME(6)" if mysql else "VARCHAR(40)"
            cols = ", ".join(f"{c} {t}" for c, t in self.columns[system].items())
            with engine.begin() as conn:
                conn.execute(sa.text(f"CREATE TABLE {name} ({key}, {cols}, m {stamp}, b TEXT)"))
            self.engines[system], self.tables[system] = engine, name
        doc: dict[str, Any] = {
            "name": f"bad{uuid.uuid4().hex[:8]}",
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "systems": {
                s: {
                    "kind": "sql",
                    "url": self.urls[s],
                    "table": self.tables[s],
                    "key": "id",
                    "modified_at": "m",
                    "modified_by": "b",
                    "integration_account": "svc-sync",
                    "overlap_seconds": 5,
                }
                for s in ("a", "b")
            },
            "fields": {c: {"a": c, "b": c} for c in columns},
            "match_on": [next(iter(columns))],
        }
        doc.update(options)
        self.doc = doc
        self.path = tmp_path / "bad.sync.yaml"
        self.path.write_text(yaml.safe_dump(doc, allow_unicode=True))

    @property
    def definition(self) -> Definition:
        return load_definition(self.path)

    def run(self, **kwargs: Any) -> RunReport:
        return run_sync(self.definition, Runtime(), **kwargs)

    def insert(self, system: str, stamp: str | None = None, **values: Any) -> str:
        """A person's new row (stamped now unless ``stamp`` is given); returns its key."""
        engine = self.engines[system]
        now = stamp or sa.func.now()
        row = {**values, "b": "person"}
        names = ", ".join(row) + ", m"
        marks = ", ".join(f":{k}" for k in row) + (", :m" if stamp else ", CURRENT_TIMESTAMP")
        params = {**row, **({"m": now} if stamp else {})}
        with engine.begin() as conn:
            result = conn.execute(
                sa.text(f"INSERT INTO {self.tables[system]} ({names}) VALUES ({marks})"), params
            )
            return str(result.lastrowid)

    def execute(self, system: str, sql: str, **params: Any) -> None:
        with self.engines[system].begin() as conn:
            conn.execute(sa.text(sql.replace("{t}", self.tables[system])), params)

    def rows(self, system: str) -> list[dict[str, Any]]:
        """Every row's data columns (and key), sorted by key."""
        with self.engines[system].connect() as conn:
            result = conn.execute(sa.text(f"SELECT * FROM {self.tables[system]} ORDER BY id"))
            return [dict(r._mapping) for r in result]

    def values(self, system: str, column: str) -> list[Any]:
        return sorted((r[column] for r in self.rows(system)), key=repr)

    def close(self) -> None:
        for system, engine in self.engines.items():
            if engine.dialect.name != "sqlite":
                with engine.begin() as conn:
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.tables[system]}"))
            engine.dispose()
