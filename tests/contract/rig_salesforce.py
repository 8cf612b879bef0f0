"""Contract rig: a Salesforce Contact object served by the in-process org simulator."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.salesforce import SalesforceObject
from tests.contract.rig import Rig
from twoway.simulators.salesforce import SalesforceState, create_app
from twoway.simulators.server import BackgroundServer

PAGE_SIZE = 5


class SalesforcePerson:
    """Someone editing Contacts as another User, through the org's in-process user API;
    ``name`` is that User's 18-character id, as LastModifiedById shows it."""

    def __init__(self, state: SalesforceState, user: str = "Alice Example"):
        self.state, self.user = state, user
        self.name = state.user_id(user)

    def create(self, values: dict[str, Any]) -> str:
        return self.state.user_create("Contact", values, user=self.user)

    def update(self, key: str, values: dict[str, Any]) -> None:
        self.state.user_update("Contact", key, values, user=self.user)

    def delete(self, key: str) -> None:
        self.state.user_delete("Contact", key, user=self.user)


@contextmanager
def make_rig(tmp_path):
    state = SalesforceState()
    state.define(
        "Contact",
        {"Twoway_Link__c": {"type": "string", "length": 64, "externalId": True, "unique": True}},
    )
    state.add_client("twoway-sync", "sync-secret", "Integration User")
    with BackgroundServer(create_app(state)) as server:
        endpoint = SalesforceObject(
            instance_url=server.url,
            object="Contact",
            external_id_field="Twoway_Link__c",
            columns_to_sync=["Email", "FirstName", "LastName"],
            page_size=PAGE_SIZE,
            credentials=IntegrationAccountCredentials(
                client_id="twoway-sync", client_secret=SecretStr("sync-secret")
            ),
        )
        person = SalesforcePerson(state)
        columns = {"email": "Email", "first": "FirstName", "last": "LastName"}
        yield Rig(endpoint, person, columns, PAGE_SIZE)
