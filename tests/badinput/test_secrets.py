"""Secrets never leak: syncs run with known secret values at DEBUG level, and every
output, log line, report, artifact text and the state store are searched for them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import sqlalchemy as sa

from flows.steps import run_sync
from flows.twoway_flows import _store_details, report_markdown, summary_line
from tests.badinput.rig import Pair
from tests.sqlrig import POSTGRES_URL, server_url
from twoway import cli
from twoway.engine import Runtime
from twoway.errors import redact

PASSWORD = "pw-Zq81-leak-canary"
DEAD_PASSWORD = "pw-Xk42-dead-canary"
SECRETS = (PASSWORD, DEAD_PASSWORD)


def _with_password(url: str, password: str, port: int | None = None) -> str:
    parsed = sa.make_url(url).set(password=password)
    if port is not None:
        parsed = parsed.set(port=port)
    return parsed.render_as_string(hide_password=False)


def test_no_secret_in_logs_outputs_reports_artifacts_or_state(tmp_path, capfd, monkeypatch):
    server_url("postgres", tmp_path)  # fails clearly when PostgreSQL is down
    monkeypatch.setenv("TWOWAY_PG_URL", _with_password(POSTGRES_URL, PASSWORD))
    p = Pair(
        tmp_path,
        {"email": "TEXT", "n": "TEXT"},
        {"email": "TEXT", "n": "INTEGER"},
        urls={"a": POSTGRES_URL},
    )
    logfile = tmp_path / "debug.log"
    handler = logging.FileHandler(logfile)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    outputs: list[str] = []
    try:
        p.doc["systems"]["a"]["url"] = "${TWOWAY_PG_URL}"
        import yaml

        p.path.write_text(yaml.safe_dump(p.doc))
        p.insert("a", email="good@x", n="1")
        p.insert("a", email="bad@x", n="not a number")  # a dead letter with a reason
        definition = p.definition
        report = run_sync(definition, Runtime())
        assert report.status == "completed" and report.systems["b"]["failed"] == 1
        outputs.append(json.dumps(report.as_json()))
        outputs.append(summary_line(report))
        rows = report.changes
        outputs.append(json.dumps(rows, default=str))
        outputs.append(report_markdown(report, _store_details(definition, report), len(rows), "k"))
        for command in (["check"], ["plan"], ["status", "--json"], ["status"]):
            cli.main([command[0], str(p.path), *command[1:]])
        cli.main(["deadletters", "list", str(p.path)])
        # a system that cannot be reached, with its password in the URL
        dead = _with_password(POSTGRES_URL, DEAD_PASSWORD, port=1)
        p.doc["systems"]["a"]["url"] = dead
        p.path.write_text(yaml.safe_dump(p.doc))
        failed = run_sync(p.definition, Runtime())
        assert failed.status == "failed" and failed.error
        outputs.append(json.dumps(failed.as_json()))
        outputs.append(report_markdown(failed, _store_details(p.definition, failed), 0, "k"))
        assert cli.main(["check", str(p.path)]) == 2
        assert cli.main(["plan", str(p.path)]) == 1
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        p.close()
    out, err = capfd.readouterr()
    outputs += [out, err, logfile.read_text()]
    assert "error:" in err and "127.0.0.1" in err  # the failure was reported ...
    state = Path(str(p.definition.state).removeprefix("sqlite:///")).read_bytes()
    for secret in SECRETS:
        for i, text in enumerate(outputs):
            assert secret not in text, (i, text[:2000])
        assert secret.encode() not in state  # ... and no secret went anywhere


def test_error_messages_strip_credentials_from_urls():
    text = "cannot reach postgresql://sync:hunter2@db:5432/x, https://tok3n@api/x?access_token=abc"
    clean = redact(text)
    assert "hunter2" not in clean and "tok3n" not in clean and "abc" not in clean
    assert "postgresql://sync:***@db:5432/x" in clean
