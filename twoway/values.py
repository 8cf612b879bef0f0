"""Canonical values: one form per value so that the same data compares and hashes equal,
whatever system it was read from (NFC text, UTC timestamps, exact numbers).
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import Any

from twoway.jsontext import sorted_json

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
#: integers longer than this stay exact as digit strings (Python refuses int <-> str past 4300)
_MAX_DIGITS = 4000
_MAX_INT_BITS = 13_000  # about 3,900 decimal digits


def _valid_text(text: str) -> str:
    """Text that UTF-8 can hold: a lone surrogate (an undecodable byte, a broken ``\\ud800``
    escape in JSON) becomes U+FFFD, as a UTF-8 decoder makes of a bad byte."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # UTF-16 joins split surrogate pairs and turns each lone surrogate into one U+FFFD
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def canonical(value: Any) -> Any:
    """The canonical form of one value: JSON-safe, stable, and equal for equal data."""
    kind = type(value)
    if kind is str:
        # ASCII text is valid UTF-8 and already NFC: the common case costs one check
        return value if value.isascii() else unicodedata.normalize("NFC", _valid_text(value))
    if value is None or kind is bool:
        return value
    if kind is int and -(2**63) <= value < 2**63:
        return value
    if kind is float and not value.is_integer() and value - value == 0.0:  # finite, fractional
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return unicodedata.normalize("NFC", _valid_text(value))
    if isinstance(value, int):
        # beyond Python's int <-> text limit a number cannot be written as JSON: its digits
        return value if value.bit_length() <= _MAX_INT_BITS else format(Decimal(value), "f")
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        if value == value.to_integral_value():
            return int(value) if value.adjusted() < _MAX_DIGITS else format(value, "f")
        return str(value.normalize())
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return str(value)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken as UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """ISO 8601 UTC with microseconds, SQLite's own text form (``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    return as_utc(value).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from a datetime or any ISO 8601 text; None when unreadable."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return _parse_text(str(value))


@lru_cache(maxsize=4096)
def _parse_text(value: str) -> datetime | None:
    """Timestamps as text, parsed once each: a batch of writes shares one stamp."""
    text = value.strip()
    if not text:
        return None
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Salesforce writes offsets without a colon (+0000)
    if len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit() and ":" not in text[-5:]:
        text = text[:-2] + ":" + text[-2:]
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def canonical_record(values: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical form of every value of a record."""
    return {name: canonical(v) for name, v in values.items()}


def values_hash(values: dict[str, Any]) -> str:
    """A stable hash of canonical values (field order does not matter)."""
    return hashlib.sha256(sorted_json(values)).hexdigest()[:32]
