"""Contract rig: a SharePoint list in the Graph simulator, served on 127.0.0.1."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.sharepoint import SharePointList
from tests.contract.rig import Rig
from twoway.simulators.graph import GraphState, create_app
from twoway.simulators.server import BackgroundServer

LIST = "Contacts"


class GraphPerson:
    """Someone editing the list in SharePoint itself (the simulator's user API)."""

    def __init__(self, state: GraphState, name: str = "Alice Example"):
        self.state = state
        self.name = name

    def create(self, values: dict[str, Any]) -> str:
        return self.state.user_create(LIST, values, user=self.name)

    def update(self, key: str, values: dict[str, Any]) -> None:
        self.state.user_update(LIST, key, values, user=self.name)

    def delete(self, key: str) -> None:
        self.state.user_delete(LIST, key, user=self.name)


@contextmanager
def make_rig(tmp_path):
    state = GraphState(client_id="twoway-app", client_secret="s3cret", display_name="twoway-sync")
    state.add_list(LIST, {"LastName": "text"})
    with BackgroundServer(create_app(state)) as server:
        endpoint = SharePointList(
            graph_url=server.url,
            token_url=f"{server.url}/{state.tenant_id}/oauth2/v2.0/token",
            site="root",
            list=LIST,
            integration_account="twoway-sync",
            columns_to_sync=["Email", "FirstName", "LastName"],
            page_size=5,
            credentials=IntegrationAccountCredentials(
                client_id="twoway-app", client_secret=SecretStr("s3cret")
            ),
        )
        try:
            yield Rig(
                endpoint,
                GraphPerson(state),
                {"email": "Email", "first": "FirstName", "last": "LastName"},
                5,
            )
        finally:
            endpoint.close()
            state.close()
