"""Database URLs as users write them, against the real PostgreSQL and MariaDB: each form
syncs tables and keeps the state store, and a driver that is not installed is one line
naming the extra, exit 2, in ``check`` and in ``run``."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa
import yaml
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from tests.badinput.rig import no_traceback, twoway
from tests.sqlrig import MARIADB_URL, POSTGRES_URL
from tests.syncrig import sync_rig
from twoway.state import StateStore

# URL form -> (server, the driver it must reach the server through)
FORMS = {
    "postgresql": ("postgres", "psycopg"),
    "postgres": ("postgres", "psycopg"),
    "postgresql+psycopg": ("postgres", "psycopg"),
    "postgresql+psycopg2": ("postgres", "psycopg2"),
    "mysql": ("mariadb", "pymysql"),
    "mariadb": ("mariadb", "pymysql"),
    "mysql+pymysql": ("mariadb", "pymysql"),
}


def as_form(form: str) -> str:
    """The test server's URL of the form's database kind, written with ``form``."""
    backend = FORMS[form][0]
    url = make_url(POSTGRES_URL if backend == "postgres" else MARIADB_URL)
    return url.set(drivername=form).render_as_string(hide_password=False)


@pytest.mark.parametrize("form", list(FORMS))
def test_each_url_form_syncs_its_tables_and_keeps_the_state_there(tmp_path, form):
    url = as_form(form)
    with sync_rig(tmp_path, FORMS[form][0]) as rig:
        for system in rig.doc["systems"].values():
            system["url"] = url
        rig.doc["state"] = url
        rig.path.write_text(yaml.safe_dump(rig.doc))
        rig.add("s0", "ann@example.com", phone="1")
        rig.add("s1", "bob@example.com", phone="2")

        first = rig.run()
        assert first.status == "completed", first.error
        assert (
            rig.data("s0")
            == rig.data("s1")
            == [
                ("ann@example.com", "Ann", "Lee", "1"),
                ("bob@example.com", "Ann", "Lee", "2"),
            ]
        )
        rig.edit("s1", "ann@example.com", phone="3")
        second = rig.run()
        assert second.status == "completed", second.error
        assert rig.row("s0", "ann@example.com")["phone"] == "3"

        store = StateStore(url)
        try:
            assert store.engine.dialect.driver == FORMS[form][1]
            assert store.live_count(rig.doc["name"], "s0") == 2
            assert store.live_count(rig.doc["name"], "s1") == 2
        finally:
            store.close()


BASE = """\
name: contacts
state: {state}
systems:
  crm: {{kind: sql, url: "{url}", table: people, key: id, modified_at: m, modified_by: b, integration_account: svc}}
  portal: {{kind: sql, url: "sqlite:///portal.db", table: people, key: id, modified_at: m, modified_by: b, integration_account: svc}}
fields:
  email: {{crm: email, portal: email}}
match_on: [email]
"""

# the module made unimportable, the URL, and the line that must name the extra
MISSING = {
    "psycopg": (
        "postgresql://u@127.0.0.1/db",
        "the psycopg driver for postgresql URLs is not installed (pip install 'twoway[postgres]')",
    ),
    "psycopg2": (
        "postgresql+psycopg2://u@127.0.0.1/db",
        "the psycopg2 driver for postgresql URLs is not installed (pip install 'twoway[postgres]')",
    ),
    "pymysql": (
        "mariadb://u@127.0.0.1/db",
        "the pymysql driver for mariadb URLs is not installed (pip install 'twoway[mysql]')",
    ),
}


@pytest.fixture
def without(tmp_path):
    """The environment of a twoway command in which the named driver cannot be imported."""

    def env(module: str) -> dict[str, str]:
        blocker = tmp_path / "blocker"
        blocker.mkdir(exist_ok=True)
        (blocker / "sitecustomize.py").write_text(
            f"import sys\nsys.modules[{module!r}] = None  # import of it fails\n"
        )
        path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH")) if p)
        return {"PYTHONPATH": path}

    return env


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("where", ["system", "state"])
@pytest.mark.parametrize("module", list(MISSING))
def test_a_url_whose_driver_is_missing_is_one_line_naming_the_extra(
    tmp_path, without, command, where, module
):
    url, line = MISSING[module]
    state, system_url = (url, "sqlite:///crm.db") if where == "state" else ("sqlite:///s.db", url)
    path = tmp_path / "contacts.sync.yaml"
    path.write_text(BASE.format(state=state, url=system_url))
    key = "state" if where == "state" else "systems.crm.url"

    result = twoway(command, str(path), cwd=tmp_path, env=without(module))

    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {path}: {key}: {line}\n"
    assert no_traceback(result)


SAVED = """\
name: contacts
state: "sqlite:///s.db"
systems:
  crm: {{kind: sql, block: {block}, key: id, modified_at: m, modified_by: b, integration_account: svc}}
  portal: {{kind: sql, url: "sqlite:///portal.db", table: people, key: id, modified_at: m, modified_by: b, integration_account: svc}}
fields:
  email: {{crm: email, portal: email}}
match_on: [email]
"""


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("module", list(MISSING))
def test_a_saved_blocks_url_whose_driver_is_missing_is_one_line_naming_the_extra(
    tmp_path, without, command, module
):
    """The URL is in a saved SQL table block, not in the definition: the definition loads,
    and the line comes when the system is opened, before the run starts."""
    from prefect.settings import PREFECT_API_URL

    from blocks.sql import SqlTable

    url, line = MISSING[module]
    block = f"crm-{uuid.uuid4().hex[:8]}"
    SqlTable(url=SecretStr(url), table="people").save(block)
    portal = sa.create_engine(f"sqlite:///{tmp_path / 'portal.db'}")
    with portal.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, m TEXT, b TEXT)")
        )
    portal.dispose()
    path = tmp_path / "contacts.sync.yaml"
    path.write_text(SAVED.format(block=block))

    result = twoway(
        command,
        str(path),
        cwd=tmp_path,
        env={**without(module), "PREFECT_API_URL": PREFECT_API_URL.value()},
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {path}: systems.crm: {line}\n"
    assert no_traceback(result)
