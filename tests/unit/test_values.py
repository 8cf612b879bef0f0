"""Canonical values: equal data hashes equal, whatever system it came from."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from twoway.values import canonical, format_timestamp, parse_timestamp, values_hash


def test_text_is_normalised_to_nfc():
    nfd = unicodedata.normalize("NFD", "Zoë Müller")
    assert canonical(nfd) == "Zoë Müller"
    assert values_hash({"n": canonical(nfd)}) == values_hash({"n": "Zoë Müller"})


def test_numbers_keep_precision():
    assert canonical(2**60 + 1) == 2**60 + 1
    assert canonical(Decimal("12.50")) == "12.5"
    assert canonical(Decimal("3")) == 3
    assert canonical(3.0) == 3


def test_timestamps_become_utc_text():
    cet = timezone(timedelta(hours=1))
    assert canonical(datetime(2024, 1, 1, 13, 0, tzinfo=cet)) == "2024-01-01 12:00:00.000000"
    assert canonical(datetime(2024, 1, 1, 12, 0)) == "2024-01-01 12:00:00.000000"
    assert parse_timestamp("2024-01-01T12:00:00Z") == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert parse_timestamp("2024-01-01T12:00:00.000+0000") == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert parse_timestamp("garbage") is None
    assert (
        format_timestamp(datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=UTC))
        == "2024-05-06 07:08:09.000010"
    )


def test_hash_ignores_field_order():
    assert values_hash({"a": 1, "b": "x"}) == values_hash({"b": "x", "a": 1})
    assert values_hash({"a": 1}) != values_hash({"a": "1"})
