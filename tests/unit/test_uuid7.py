"""New link ids and SQL keys are UUIDv7: they grow with time, so indexes take them at
their end (twoway/uuid7.py)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from twoway.uuid7 import TimeOrderedIds


def test_ids_are_uuid_version_7_and_carry_the_millisecond_they_were_made():
    at = datetime(2026, 11, 26, 12, 0, 0, 123000, tzinfo=UTC)
    made = TimeOrderedIds(clock=lambda: at)()
    parsed = uuid.UUID(hex=made)
    assert len(made) == 32 and made == parsed.hex
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert parsed.int >> 80 == int(at.timestamp() * 1000)


def test_ids_of_one_source_strictly_increase_even_within_one_millisecond():
    frozen = datetime(2026, 1, 1, tzinfo=UTC)
    ids = TimeOrderedIds(clock=lambda: frozen, rng=random.Random(1))
    made = [ids() for _ in range(5000)] + ids.many(10_000)  # past the 4,096 of a millisecond
    assert made == sorted(made) and len(set(made)) == len(made)
    assert uuid.UUID(hex=made[-1]).int >> 80 > uuid.UUID(hex=made[0]).int >> 80


def test_a_later_millisecond_sorts_after_and_a_clock_going_back_does_not_reorder():
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    ids = TimeOrderedIds(clock=lambda: now[0])
    first = ids()
    now[0] += timedelta(milliseconds=5)
    second = ids()
    now[0] -= timedelta(seconds=10)
    third = ids()
    assert first < second < third


def test_a_seeded_source_repeats_its_ids_and_the_system_source_does_not():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    one = TimeOrderedIds(clock=lambda: at, rng=random.Random(7)).many(100)
    two = TimeOrderedIds(clock=lambda: at, rng=random.Random(7)).many(100)
    assert one == two
    assert TimeOrderedIds(clock=lambda: at).many(100) != TimeOrderedIds(clock=lambda: at).many(100)
