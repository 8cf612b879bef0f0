"""Secrets never appear in logs, errors or ``--json`` output.

Syncs run with known secret values (OAuth client secrets written in the definition, a
database password in a URL) at DEBUG log level for every logger; everything logged,
every error and report, and what the command line prints are searched for the secrets
and for the access tokens the simulators issued. Failing runs (a refused client secret, an
unreachable database) are included: their messages are where secrets usually slip out.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from flows.steps import run_sync
from tests.sqlrig import POSTGRES_URL, fresh_table, server_url
from twoway.cli import main
from twoway.definition import load_definition
from twoway.errors import DefinitionError
from twoway.simulators.graph import GraphState
from twoway.simulators.graph import create_app as graph_app
from twoway.simulators.salesforce import SalesforceState
from twoway.simulators.salesforce import create_app as salesforce_app
from twoway.simulators.server import BackgroundServer

GRAPH_SECRET = "graph-secret-" + uuid.uuid4().hex
SF_SECRET = "sf-secret-" + uuid.uuid4().hex
DB_PASSWORD = "db-pw-" + uuid.uuid4().hex
WRONG_SECRET = "wrong-secret-" + uuid.uuid4().hex
SECRETS = (GRAPH_SECRET, SF_SECRET, DB_PASSWORD, WRONG_SECRET)
SERVER_SIDE = ("prefect.server", "docket", "uvicorn", "aiosqlite")
NOISY = ("prefect", "twoway", "httpx", "httpcore", "sqlalchemy", "blocks", "tasks")


class Capture(logging.Handler):
    """Every log record, formatted, with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string still shows its parts
            text = f"{record.msg} {record.args}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.lines.append(text)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs() -> Iterator[Capture]:
    """DEBUG for every logger; records captured wherever they are handled."""
    capture = Capture()
    targets = [logging.getLogger()]
    targets += [logging.getLogger(n) for n in NOISY]
    targets += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    # the in-process Prefect server of the test harness stays at its own level (it sees
    # no secret, and at DEBUG its SQLite store falls behind); its records are captured
    quiet = [logging.getLogger(n) for n in SERVER_SIDE]
    targets += quiet
    saved = [(t, t.level) for t in targets]
    for target in dict.fromkeys(targets):
        target.addHandler(capture)
        if target not in quiet:
            target.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        for target, level in saved:
            target.removeHandler(capture)
            target.setLevel(level)


def assert_clean(*texts: str, also: tuple[str, ...] = ()) -> None:
    for text in texts:
        for secret in (*SECRETS, *also):
            assert secret not in text, f"a secret ({secret[:10]}...) leaked: {text[:2000]}"


class World:
    """A SharePoint list, a Salesforce org and a PostgreSQL table, each with a secret."""

    def __init__(self, tmp_path: Path, stack: ExitStack):
        self.tmp_path = tmp_path
        self.graph = GraphState(
            client_id="twoway-app", client_secret=GRAPH_SECRET, display_name="twoway-sync"
        )
        stack.callback(self.graph.close)
        self.gserver = stack.enter_context(BackgroundServer(graph_app(self.graph)))
        self.org = SalesforceState()
        self.org.add_client("twoway-sync", SF_SECRET, "Integration User")
        self.sserver = stack.enter_context(BackgroundServer(salesforce_app(self.org)))
        base = server_url("postgres", tmp_path)
        self.db_url = (
            sa.make_url(base).set(password=DB_PASSWORD).render_as_string(hide_password=False)
        )
        assert DB_PASSWORD in self.db_url
        self.engine, self.table = stack.enter_context(fresh_table(POSTGRES_URL))
        self.graph.user_create("Contacts", {"Email": "ann@example.com", "Title": "Lee"})
        self.org.user_create("Contact", {"Email": "bob@example.com", "LastName": "Stone"})

    def definition_file(self, name: str = "secrets", **system_overrides: Any) -> Path:
        """A definition whose secrets come from environment variables, as documented."""
        doc = {
            "name": name,
            "state": f"sqlite:///{self.tmp_path / (name + '-state.db')}",
            "systems": {
                "sharepoint": {
                    "kind": "sharepoint",
                    "graph_url": self.gserver.url,
                    "token_url": f"{self.gserver.url}/{self.graph.tenant_id}/oauth2/v2.0/token",
                    "client_id": "twoway-app",
                    "client_secret": "${T_GRAPH_SECRET}",
                    "integration_account": "twoway-sync",
                },
                "salesforce": {
                    "kind": "salesforce",
                    "instance_url": self.sserver.url,
                    "client_id": "twoway-sync",
                    "client_secret": "${T_SF_SECRET}",
                },
                "db": {
                    "kind": "sql",
                    "url": "${T_DB_URL}",
                    "table": str(self.table.name),
                    "key": "id",
                    "modified_at": "updated_at",
                    "modified_by": "updated_by",
                    "integration_account": "svc-sync",
                },
            },
            "fields": {
                "email": {"sharepoint": "Email", "salesforce": "Email", "db": "email"},
                "last_name": {"sharepoint": "Title", "salesforce": "LastName", "db": "last_name"},
            },
            "match_on": ["email"],
        }
        for key, value in system_overrides.items():
            system, _, setting = key.partition("__")
            doc["systems"][system][setting] = value
        path = self.tmp_path / f"{name}.sync.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def tokens(self) -> tuple[str, ...]:
        """Access tokens the simulators issued (secrets too)."""
        with self.graph._lock:
            graph = tuple(self.graph._tokens)
        with self.org._lock:
            org = tuple(self.org._sessions)
        return graph + org


@pytest.fixture
def world(tmp_path, monkeypatch) -> Iterator[World]:
    with ExitStack() as stack:
        w = World(tmp_path, stack)
        monkeypatch.setenv("T_GRAPH_SECRET", GRAPH_SECRET)
        monkeypatch.setenv("T_SF_SECRET", SF_SECRET)
        monkeypatch.setenv("T_DB_URL", w.db_url)
        yield w


@pytest.mark.postgres
def test_runs_log_no_secret_at_debug_level(world, logs, monkeypatch, capsys):
    definition = load_definition(world.definition_file())
    for system in ("sharepoint", "salesforce"):  # client secrets are SecretStr
        spec = definition.systems[system]
        assert_clean(repr(spec), str(spec), spec.model_dump_json())

    report = run_sync(definition)
    assert report.status == "completed", report.error
    assert report.systems["db"]["created"] == 2
    again = run_sync(definition)
    assert again.status == "completed", again.error

    # a refused client secret
    monkeypatch.setenv("T_GRAPH_SECRET", WRONG_SECRET)
    refused = run_sync(load_definition(world.definition_file()))
    assert refused.status == "failed"
    assert "refused" in (refused.error or "")
    # an unreachable database, its password in the URL
    monkeypatch.setenv("T_GRAPH_SECRET", GRAPH_SECRET)
    monkeypatch.setenv("T_DB_URL", world.db_url.replace("/test", "/no_such_database_x"))
    broken = run_sync(load_definition(world.definition_file()))
    assert broken.status == "failed"

    out = capsys.readouterr()
    assert logs.lines, "nothing was logged: the capture is broken"
    tokens = world.tokens()
    assert tokens
    assert_clean(
        logs.text,
        out.out,
        out.err,
        *(json.dumps(r.as_json()) for r in (report, again, refused, broken)),
        *(json.dumps(r.failures) for r in (report, again, refused, broken)),
        also=tokens,
    )


@pytest.mark.postgres
@pytest.mark.usefixtures("prefect_api")
def test_command_line_json_and_check_print_no_secret(world, logs, monkeypatch, capsys):
    path = world.definition_file("secrets-cli")
    assert main(["check", str(path)]) == 0
    checked_ok = capsys.readouterr()
    assert main(["run", str(path), "--json"]) == 0
    ran = capsys.readouterr()
    assert json.loads(ran.out)["status"] == "completed"

    monkeypatch.setenv("T_SF_SECRET", WRONG_SECRET)
    assert main(["run", str(path), "--json"]) == 1
    failed = capsys.readouterr()
    report = json.loads(failed.out)
    assert report["status"] == "failed" and "refused" in report["error"]
    assert main(["check", str(path)]) != 0
    checked = capsys.readouterr()
    assert main(["status", str(path), "--json"]) == 0
    status = capsys.readouterr()

    assert_clean(
        checked_ok.out,
        checked_ok.err,
        ran.out,
        ran.err,
        failed.out,
        failed.err,
        checked.out,
        checked.err,
        status.out,
        status.err,
        logs.text,
        also=world.tokens(),
    )


def test_definition_errors_never_show_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("T_SECRET", GRAPH_SECRET)
    cases = [
        {"client_secret": "${T_SECRET}"},  # no client_id
        {"client_secret": "${T_SECRET}", "client_id": "x", "block": "saved"},
        {"client_secret": "${T_SECRET}", "client_id": "x", "tenant": ["not", "text"]},
        {"client_secret": "${T_SECRET}", "client_id": "x", "client_secrt": "${T_SECRET}"},
    ]
    for i, extra in enumerate(cases):
        doc = {
            "name": "bad",
            "systems": {
                "sp": {"kind": "sharepoint", **extra},
                "db": {"kind": "sql", "url": "sqlite:///x.db", "table": "t"},
            },
            "fields": {"email": {"sp": "Email", "db": "email"}},
        }
        path = tmp_path / f"bad{i}.sync.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(DefinitionError) as caught:
            load_definition(path)
        assert_clean(str(caught.value), repr(caught.value), "".join(traceback.format_exc()))
        assert caught.value.problems
