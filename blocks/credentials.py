"""The integration-account credentials block: who twoway is in a system, and its secrets."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class IntegrationAccountCredentials(Block):
    """The dedicated account twoway writes as in one system; secrets stay ``SecretStr``.

    Example:
        ```python
        from blocks.credentials import IntegrationAccountCredentials
        creds = IntegrationAccountCredentials.load("crm-sync-account")
        ```
    """

    _block_type_name = "twoway Integration Account"
    _block_type_slug = "twoway-integration-account"
    _description = "Credentials of the integration account twoway uses in one system."

    username: str | None = Field(
        None, description="Account name as the system records it as the modifier"
    )
    password: SecretStr | None = Field(None, description="Password (database accounts)")
    client_id: str | None = Field(None, description="OAuth2 client id (Graph, Salesforce)")
    client_secret: SecretStr | None = Field(None, description="OAuth2 client secret")
    token: SecretStr | None = Field(None, description="Static bearer token (REST APIs)")
    webhook_secret: SecretStr | None = Field(
        None, description="Shared secret that signs change notifications from this system"
    )
