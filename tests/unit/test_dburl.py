"""Database URLs as users write them: the driver each bare scheme stands for, and a
driver that is not installed reported as one line naming the extra."""

from __future__ import annotations

import sys

import pytest
from pydantic import SecretStr

from blocks.sql import SqlTable
from twoway import cli
from twoway.dburl import DriverMissing, database_url
from twoway.definition import load_definition


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql+psycopg://u:pw@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        (
            "mysql://root@h:3306/db?charset=utf8mb4",
            "mysql+pymysql://root@h:3306/db?charset=utf8mb4",
        ),
        ("mariadb://root@h/db", "mariadb+pymysql://root@h/db"),
        ("mysql+mysqldb://root@h/db", "mysql+mysqldb://root@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_a_bare_scheme_means_the_driver_twoway_installs(written, meant):
    assert database_url(written).render_as_string(hide_password=False) == meant


LINE = "the psycopg driver for postgresql URLs is not installed (pip install 'twoway[postgres]')"


def test_a_sql_table_whose_driver_is_missing_says_which_extra_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    table = SqlTable(url=SecretStr("postgresql://u:secret@127.0.0.1/db"), table="t")
    with pytest.raises(DriverMissing) as caught:
        table.columns()
    assert str(caught.value) == LINE


def test_check_names_the_system_whose_saved_url_has_no_driver(tmp_path, monkeypatch):
    # a saved block's URL is not in the definition: check finds the missing driver when it
    # opens the system, and names the system
    path = tmp_path / "s.sync.yaml"
    path.write_text(
        "name: s\n"
        "systems:\n"
        "  crm: {kind: sql, url: 'postgresql://u@127.0.0.1/db', table: t, key: id}\n"
        "  portal: {kind: sql, url: 'sqlite:///p.db', table: t, key: id}\n"
        "fields:\n"
        "  email: {crm: email, portal: email}\n"
    )
    definition = load_definition(path)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    assert f"{path}: systems.crm: {LINE}" in cli.check_definition(definition)
