"""Bad records against MariaDB and PostgreSQL: what a 3-byte ``utf8`` column, a short
column and a NUL character do. A refused record is parked with the database's reason."""

from __future__ import annotations

import pytest

from tests.badinput.rig import Pair
from tests.sqlrig import server_url
from twoway.state import StateStore


def _letters(p: Pair) -> list[dict]:
    store = StateStore(p.definition.state)
    try:
        return store.open_dead_letters(p.definition.name)
    finally:
        store.close()


@pytest.fixture
def mariadb_pair(tmp_path):
    url = server_url("mariadb", tmp_path)
    p = Pair(
        tmp_path,
        {"email": "VARCHAR(100)", "note": "VARCHAR(200)"},
        {
            "email": "VARCHAR(100)",
            "note": "VARCHAR(200) CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci",
        },
        urls={"b": url},
    )
    yield p
    p.close()


def test_an_emoji_for_a_3_byte_utf8_mariadb_column_parks_that_record(mariadb_pair):
    p = mariadb_pair
    p.insert("a", email="emoji@x", note="party 🎉")
    p.insert("a", email="rtl@x", note="שלום مرحبا é")  # 2- and 3-byte characters fit
    report = p.run()
    assert report.status == "completed"
    assert p.values("b", "note") == ["שלום مرحبا é"]
    (letter,) = _letters(p)
    assert letter["system"] == "b" and "1366" in letter["error"]
    assert "Incorrect string value" in letter["error"]


def test_a_string_longer_than_the_mariadb_column_parks_that_record(mariadb_pair):
    p = mariadb_pair
    p.insert("a", email="long@x", note="x" * 201)
    p.insert("a", email="short@x", note="x" * 200)
    report = p.run()
    assert report.status == "completed"
    assert p.values("b", "email") == ["short@x"]
    (letter,) = _letters(p)
    assert "1406" in letter["error"] and "Data too long" in letter["error"]


def test_a_nul_character_for_postgresql_parks_that_record(tmp_path):
    """Gap in blocks/sql.py: psycopg2 raises a bare ValueError for NUL, which fails the run."""
    p = Pair(
        tmp_path, {"email": "TEXT", "note": "TEXT"}, urls={"b": server_url("postgres", tmp_path)}
    )
    try:
        p.insert("a", email="nul@x", note="a\x00b")
        p.insert("a", email="ok@x", note="fine")
        report = p.run()
        assert report.status == "completed", report.error
        assert p.values("b", "email") == ["ok@x"]
        (letter,) = _letters(p)
        assert "NUL" in letter["error"]
    finally:
        p.close()
