"""What the endpoint blocks share: their base class, and building one from a definition."""

from __future__ import annotations

import abc
import threading
from typing import Any, ClassVar, Self, TypeVar

from prefect.blocks.core import Block
from pydantic import Field

from blocks.credentials import IntegrationAccountCredentials
from twoway.contract import Endpoint
from twoway.definition import OAuthClientMixin, SystemBase
from twoway.errors import DefinitionError

B = TypeVar("B", bound=Block)

#: settings every system model has, copied into the block when the block has that field
#: (a SQL table has no retry attempts, a SharePoint list no overlap window)
COMMON_SETTINGS = (
    "key",
    "modified_at",
    "modified_by",
    "integration_account",
    "overlap_seconds",
    "retry_attempts",
    "batch_size",
    "writes_in_flight",
    "retry_deadline_seconds",
)

#: guards the set-up a block's threads share (its HTTP client, its access token) when a load
#: keeps several writes in flight; held only while that is made, which is rare
SETUP_LOCK = threading.RLock()


class EndpointBlock(Block, Endpoint, abc.ABC):
    """An endpoint that is also a Prefect block: what the SQL, SharePoint, Salesforce and REST
    blocks share.

    Not a block type of its own: Prefect registers no block class that names ``ABC`` among
    its direct bases, so ``prefect block register -m blocks.sql`` and ``save()`` register
    only the concrete blocks. The fields stay on each block (their defaults, descriptions
    and order are part of its registered schema); the one declared here,
    ``integration_account``, is also the first field of every endpoint block, since the
    ``Endpoint`` contract declares it.
    """

    integration_account: str | None = Field(None, description="Account twoway writes as")

    #: private attributes a pickled copy starts from afresh (clients, engines, tokens): a
    #: copy sent to another process opens its own connection instead of a dead one
    _fresh_when_pickled: ClassVar[dict[str, Any]] = {}

    def reads_ahead(self) -> bool:
        """A block's client (httpx, a pooled SQLAlchemy engine) serves any thread."""
        return True

    @classmethod
    def from_definition(cls, name: str, system: SystemBase, columns: list[str]) -> Self:
        """The endpoint for one system of a definition.

        The settings every system model has are copied here, the block's own ones come from
        :meth:`_own_settings`; credentials written in the definition (``client_id`` and
        ``client_secret``: offline trials, the demo) become a credentials block. The model
        refuses them beside a saved block, so exactly one source supplies them.
        """
        settings: dict[str, Any] = {
            setting: getattr(system, setting)
            for setting in COMMON_SETTINGS
            if setting in cls.model_fields
        }
        settings["columns_to_sync"] = columns
        settings.update(cls._own_settings(system))
        if isinstance(system, OAuthClientMixin) and system.client_id is not None:
            settings["credentials"] = IntegrationAccountCredentials(
                client_id=system.client_id, client_secret=system.client_secret
            )
        return endpoint_from_definition(cls, settings, system.block, f"systems.{name}")

    @classmethod
    @abc.abstractmethod
    def _own_settings(cls, system: Any) -> dict[str, Any]:
        """The settings of this kind of block, by field name, from its system model."""

    def __getstate__(self) -> dict[str, Any]:
        """What pickling keeps: the fields, with the private attributes named in
        ``_fresh_when_pickled`` reset (Prefect and Dask send blocks to other processes)."""
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private.update(self._fresh_when_pickled)
        state["__pydantic_private__"] = private
        return state


def load_block(name: str, where: str) -> Block:
    """Load a saved block by name, as a clear definition error when it does not exist."""
    from prefect.blocks.core import Block as _Block

    try:
        return _Block.load(_qualified(name))
    except ValueError as exc:
        raise DefinitionError(f"{where}.block: no saved block {name!r} ({exc})") from None
    except Exception as exc:  # unreachable API, unknown block type
        raise DefinitionError(f"{where}.block: cannot load block {name!r}: {exc}") from None


def _qualified(name: str) -> str:
    """Block names in definitions may be bare; Prefect wants 'type-slug/name'."""
    if "/" in name:
        return name
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        docs = client.read_block_documents()
    matches = [d for d in docs if d.name == name and d.block_type is not None]
    if not matches:
        raise ValueError("no block document with that name")
    if len(matches) > 1:
        slugs = ", ".join(sorted(d.block_type.slug for d in matches))
        raise ValueError(f"the name is used by several block types ({slugs}); write 'type/{name}'")
    return f"{matches[0].block_type.slug}/{name}"


def endpoint_from_definition(
    cls: type[B], settings: dict[str, Any], block_name: str | None, where: str
) -> B:
    """An endpoint block of type ``cls`` from a definition's settings.

    With ``block_name``, the saved block supplies the connection: either a block of the same
    type (the definition's settings override its non-empty fields) or an integration-account
    credentials block (nested as ``credentials``).
    """
    settings = {k: v for k, v in settings.items() if v is not None}
    if block_name is None:
        return cls(**settings)
    saved = load_block(block_name, where)
    if isinstance(saved, IntegrationAccountCredentials):
        return cls(**settings, credentials=saved)
    if isinstance(saved, cls):
        merged = saved.model_dump(exclude_unset=False)
        merged.update(settings)
        merged["credentials"] = getattr(saved, "credentials", None)
        for secret in cls.model_fields:
            value = getattr(saved, secret)
            if hasattr(value, "get_secret_value") and secret not in settings:
                merged[secret] = value
        return cls(**merged)
    raise DefinitionError(
        f"{where}.block: block {block_name!r} is a {type(saved).__name__}, "
        f"expected {cls.__name__} or IntegrationAccountCredentials"
    )
