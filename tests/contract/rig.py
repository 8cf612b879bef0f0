"""What a contract rig gives the endpoint contract suite: an endpoint, and a person editing
the same collection through the system's own API (never as the integration account)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twoway.contract import Endpoint


class Person(Protocol):
    """Someone other than the integration account, editing records in the system."""

    name: str

    def create(self, values: dict[str, Any]) -> str:
        """Create a record; return its key."""

    def update(self, key: str, values: dict[str, Any]) -> None:
        """Change some fields of a record."""

    def delete(self, key: str) -> None:
        """Delete a record."""


@dataclass
class Rig:
    """An endpoint under test. ``columns`` maps the suite's generic names (email, first,
    last) to the system's own column names; ``page_size`` is the endpoint's read page size,
    which the suite exceeds to test paging."""

    endpoint: Endpoint
    person: Person
    columns: dict[str, str]
    page_size: int

    def values(self, email: str, first: str, last: str) -> dict[str, Any]:
        return {
            self.columns["email"]: email,
            self.columns["first"]: first,
            self.columns["last"]: last,
        }
