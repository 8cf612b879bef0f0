"""Contract rig: a SQL table in postgres."""

from __future__ import annotations

from contextlib import contextmanager

from pydantic import SecretStr

from blocks.sql import SqlTable
from tests.contract.rig import Rig
from tests.sqlrig import SqlPerson, fresh_table, server_url


@contextmanager
def make_rig(tmp_path):
    url = server_url("postgres", tmp_path)
    with fresh_table(url) as (engine, table):
        endpoint = SqlTable(
            url=SecretStr(url),
            table=table.name,
            key="id",
            modified_at="updated_at",
            modified_by="updated_by",
            integration_account="svc-sync",
            columns_to_sync=["email", "first_name", "last_name"],
            page_size=5,
        )
        person = SqlPerson(engine, table, "id", "updated_at", "updated_by")
        yield Rig(
            endpoint, person, {"email": "email", "first": "first_name", "last": "last_name"}, 5
        )
