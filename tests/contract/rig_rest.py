"""Contract rig: a REST collection served by the in-process simulator."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.rest import RestCollection
from tests.contract.rig import Rig
from twoway.simulators.rest import RestState, create_app
from twoway.simulators.server import BackgroundServer

TOKENS = {"token-sync": "sync-bot", "token-alice": "alice"}


class RestPerson:
    """Someone editing the collection through the server's own (in-process) user API."""

    def __init__(self, state: RestState, name: str = "alice"):
        self.state, self.name = state, name

    def create(self, values: dict[str, Any]) -> str:
        return self.state.user_create(values, user=self.name)["id"]

    def update(self, key: str, values: dict[str, Any]) -> None:
        self.state.user_update(key, values, user=self.name)

    def delete(self, key: str) -> None:
        self.state.user_delete(key, user=self.name)


@contextmanager
def make_rig(tmp_path):
    state = RestState()
    # A REST API shows its fields only through records (no schema endpoint), so the
    # collection starts with one record, as any collection under sync would.
    state.user_create({"email": "seed@example.com", "first_name": "Seed", "last_name": "Row"})
    with BackgroundServer(create_app(state, tokens=TOKENS, max_batch=20)) as server:
        endpoint = RestCollection(
            base_url=server.url,
            collection="/items",
            item="/items/{id}",
            batch="/$batch",
            records="value",
            next_link="@odata.nextLink",
            cursor_param="modified_since",
            page_size_param="$top",
            page_size=5,
            key="id",
            modified_at="modified_at",
            modified_by="modified_by",
            integration_account="sync-bot",
            columns_to_sync=["email", "first_name", "last_name"],
            credentials=IntegrationAccountCredentials(token=SecretStr("token-sync")),
        )
        person = RestPerson(state)
        yield Rig(
            endpoint, person, {"email": "email", "first": "first_name", "last": "last_name"}, 5
        )
