"""Blocks against a real Prefect API: saved, loaded by name from a definition, secrets kept."""

from __future__ import annotations

import uuid

import pytest
import yaml
from prefect.blocks.core import InvalidBlockRegistration
from prefect.client.orchestration import get_client
from pydantic import SecretStr

from blocks.base import EndpointBlock
from blocks.credentials import IntegrationAccountCredentials
from blocks.directus import DirectusCollection
from blocks.rest import RestCollection
from blocks.salesforce import SalesforceObject
from blocks.sharepoint import SharePointList
from blocks.sql import SqlTable
from tests.syncrig import sync_rig
from twoway.definition import load_definition
from twoway.errors import DefinitionError

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_a_definition_can_name_a_saved_sql_table_block(tmp_path):
    with sync_rig(tmp_path) as rig:
        name = f"crm-{uuid.uuid4().hex[:8]}"
        system = rig.doc["systems"]["s0"]
        SqlTable(url=SecretStr(system["url"]), table=system["table"]).save(name)
        doc = dict(rig.doc)
        doc["systems"] = {
            **doc["systems"],
            "s0": {k: v for k, v in system.items() if k not in ("url", "table")} | {"block": name},
        }
        rig.path.write_text(yaml.safe_dump(doc))
        rig.add("s0", "blk@example.com")
        report = rig.run()
        assert report.systems["s1"]["created"] == 1


def test_credentials_block_fills_the_database_user(tmp_path):
    name = f"acct-{uuid.uuid4().hex[:8]}"
    IntegrationAccountCredentials(username="svc", password=SecretStr("s3cr3t-pw")).save(name)
    loaded = IntegrationAccountCredentials.load(name)
    assert loaded.password.get_secret_value() == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(loaded)
    table = SqlTable(
        url=SecretStr("postgresql+psycopg2://127.0.0.1/test"), table="t", credentials=loaded
    )
    url = table._url()
    assert url.username == "svc" and url.password == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(table)


def test_a_missing_block_is_a_definition_error(tmp_path):
    with sync_rig(tmp_path) as rig:
        doc = dict(rig.doc)
        doc["systems"]["s0"] = {k: v for k, v in doc["systems"]["s0"].items() if k != "url"} | {
            "block": "no-such-block"
        }
        rig.path.write_text(yaml.safe_dump(doc))
        from twoway.connectors import open_endpoint

        with pytest.raises(
            DefinitionError, match="systems.s0.block: no saved block 'no-such-block'"
        ):
            open_endpoint(load_definition(rig.path), "s0")


def test_the_endpoint_base_class_registers_no_block_type_of_its_own():
    with pytest.raises(InvalidBlockRegistration):
        EndpointBlock.register_type_and_schema()
    endpoints = (SqlTable, SharePointList, SalesforceObject, RestCollection, DirectusCollection)
    for block in endpoints:
        block.register_type_and_schema()
    with get_client(sync_client=True) as client:
        slugs = {t.slug for t in client.read_block_types()}
        schemas = {
            s.block_type.slug: s.checksum for s in client.read_block_schemas() if s.block_type
        }
    assert EndpointBlock.get_block_type_slug() not in slugs
    for block in endpoints:
        assert schemas[block.get_block_type_slug()] == block._calculate_schema_checksum()


@pytest.mark.parametrize("source", ["token_secret", "block"])
def test_a_directus_token_comes_from_a_prefect_secret_or_a_credentials_block(tmp_path, source):
    from prefect.blocks.system import Secret

    from tests.directus_server import shared_server
    from twoway.connectors import open_endpoint

    server = shared_server()
    collection = server.create_collection(["email"])
    name = f"cms-{uuid.uuid4().hex[:8]}"
    token = server.sync_user.token
    if source == "token_secret":
        Secret(value=SecretStr(token)).save(name)
    else:
        IntegrationAccountCredentials(token=SecretStr(token)).save(name)
    path = tmp_path / "sync.yaml"
    cms = {"kind": "directus", "url": server.url, "collection": collection, source: name}
    db = {"kind": "sql", "url": f"sqlite:///{tmp_path / 'db.db'}", "table": "people"}
    path.write_text(
        yaml.safe_dump(
            {
                "name": "cms",
                "systems": {"cms": cms, "db": db},
                "fields": {"email": {"cms": "email", "db": "email"}},
            }
        )
    )
    try:
        with open_endpoint(load_definition(path), "cms") as endpoint:
            assert {"email", "date_updated", "user_updated"} <= endpoint.columns()
            assert token not in repr(endpoint)
    finally:
        server.drop_collection(collection)
