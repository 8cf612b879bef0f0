"""What the endpoint blocks share: building one from a definition's system entry."""

from __future__ import annotations

from typing import Any, TypeVar

from prefect.blocks.core import Block

from blocks.credentials import IntegrationAccountCredentials
from twoway.errors import DefinitionError

B = TypeVar("B", bound=Block)


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
