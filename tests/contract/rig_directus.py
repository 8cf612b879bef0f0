"""Contract rig: a collection of a real Directus 10 server (one per test session)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

from blocks.directus import DirectusCollection
from tests.contract.rig import Rig
from tests.directus_server import DirectusServer, DirectusUser, shared_server


class DirectusPerson:
    """Someone editing the collection through Directus's API with their own token."""

    def __init__(self, server: DirectusServer, collection: str, user: DirectusUser):
        self.server, self.collection, self.user = server, collection, user
        self.name = user.id  # what Directus records in user_updated / user_created

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.server.api(method, f"/items/{self.collection}{path}", self.user.token, **kwargs)

    def create(self, values: dict[str, Any]) -> str:
        return str(self._api("POST", "", json=values)["id"])

    def update(self, key: str, values: dict[str, Any]) -> None:
        self._api("PATCH", f"/{key}", json=values)

    def delete(self, key: str) -> None:
        self._api("DELETE", f"/{key}")


def directus_endpoint(server: DirectusServer, collection: str, **settings: Any):
    """The endpoint of ``collection``, writing with the integration user's static token."""
    return DirectusCollection(
        url=server.url,
        collection=collection,
        token=SecretStr(server.sync_user.token),
        integration_account="token-user",
        **settings,
    )


@contextmanager
def make_rig(tmp_path):
    server = shared_server()
    collection = server.create_collection(["email", "first_name", "last_name", "phone"])
    try:
        endpoint = directus_endpoint(
            server, collection, columns_to_sync=["email", "first_name", "last_name"], page_size=5
        )
        person = DirectusPerson(server, collection, server.person)
        yield Rig(
            endpoint, person, {"email": "email", "first": "first_name", "last": "last_name"}, 5
        )
    finally:
        server.drop_collection(collection)
