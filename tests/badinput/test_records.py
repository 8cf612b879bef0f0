"""Bad records against real SQLite tables: a bad record is parked with its reason, the
others go on, and text and numbers come back exactly as they went."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from tests.badinput.rig import Pair
from twoway import cli, sfid
from twoway.state import StateStore
from twoway.values import canonical, parse_timestamp


@pytest.fixture
def pair(tmp_path):
    made: list[Pair] = []

    def make(*args, **kwargs) -> Pair:
        made.append(Pair(tmp_path, *args, **kwargs))
        return made[-1]

    yield make
    for p in made:
        p.close()


def _letters(p: Pair) -> list[dict]:
    store = StateStore(p.definition.state)
    try:
        return store.open_dead_letters(p.definition.name)
    finally:
        store.close()


def test_wrong_type_for_the_target_column_is_parked_and_the_rest_goes_on(pair):
    p = pair({"email": "TEXT", "n": "TEXT"}, {"email": "TEXT", "n": "INTEGER"})
    p.insert("a", email="good@x", n="5")
    p.insert("a", email="bad@x", n="five")
    report = p.run()
    assert report.status == "completed"
    assert report.systems["b"]["created"] == 1 and report.systems["b"]["failed"] == 1
    assert [r["email"] for r in p.rows("b")] == ["good@x"]
    (letter,) = _letters(p)
    assert letter["system"] == "b" and "column 'n'" in letter["error"] and "five" in letter["error"]


def test_deadletters_list_and_retry_by_name_replay_a_parked_record(
    pair, tmp_path, capsys, monkeypatch
):
    p = pair({"email": "TEXT", "n": "TEXT"}, {"email": "TEXT", "n": "INTEGER"})
    monkeypatch.setenv("TWOWAY_SYNCS_DIR", str(tmp_path))
    name = p.definition.name
    p.insert("a", email="bad@x", n="five")
    p.run()
    assert cli.main(["deadletters", "list", name]) == 0
    listed = capsys.readouterr().out
    assert "five" in listed  # the reason names the refused value
    assert "column 'n'" in listed
    p.execute("a", "UPDATE {t} SET n = '7', m = CURRENT_TIMESTAMP WHERE email = 'bad@x'")
    assert cli.main(["deadletters", "retry", name]) == 0
    assert "1 dead letters will be retried" in capsys.readouterr().out
    report = p.run()
    assert report.systems["b"]["created"] == 1
    assert [(r["email"], r["n"]) for r in p.rows("b")] == [("bad@x", 7)]
    assert cli.main(["deadletters", "list", name]) == 0
    assert "no dead letters" in capsys.readouterr().out


TEXTS = [
    "Zoë 😀 👩🏽‍💻",  # emoji, with a skin tone and a zero-width joiner sequence
    "שלום עולם مرحبا",  # right-to-left scripts
    "\u202eevil\u202c \u200f",  # bidi overrides and marks
    "tab\there\r\nnew line\x01\x1f\x7f",  # control characters
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",  # astral planes
]


def test_emoji_rtl_and_control_characters_round_trip_unchanged(pair):
    p = pair({"email": "TEXT", "note": "TEXT"})
    for i, text in enumerate(TEXTS):
        p.insert("a", email=f"t{i}@x", note=text)
    p.insert("b", email="back@x", note=TEXTS[0] + TEXTS[1])
    assert p.run().status == "completed"
    assert sorted(p.values("b", "note")) == sorted([*TEXTS, TEXTS[0] + TEXTS[1]])
    assert sorted(p.values("a", "note")) == sorted(p.values("b", "note"))
    again = p.run()  # nothing echoes
    assert all(c["created"] + c["updated"] == 0 for c in again.systems.values())


def test_nfc_and_nfd_text_compare_equal_and_never_echo(pair):
    nfc, nfd = "José Müller", unicodedata.normalize("NFD", "José Müller")
    assert nfc != nfd
    p = pair({"email": "TEXT", "note": "TEXT"})
    p.insert("a", email="j@x", note=nfd)
    p.insert("b", email="j@x", note=nfc)
    first = p.run()
    assert all(c["updated"] + c["created"] == 0 for c in first.systems.values())
    assert p.values("a", "note") == [nfd] and p.values("b", "note") == [nfc]  # left alone
    second = p.run()
    assert all(c["updated"] + c["created"] == 0 for c in second.systems.values())


def test_numbers_above_2_53_keep_every_digit(pair):
    p = pair({"email": "TEXT", "n": "BIGINT"})
    values = [2**53 + 1, 2**63 - 1, -(2**63), 9007199254740993]
    for i, n in enumerate(values):
        p.insert("a", email=f"n{i}@x", n=n)
    assert p.run().status == "completed"
    assert sorted(p.values("b", "n")) == sorted(values)
    assert canonical(2**53 + 1) == 2**53 + 1 and canonical(10**5000) == "1" + "0" * 5000


def test_huge_values_round_trip(pair):
    p = pair({"email": "TEXT", "note": "TEXT"})
    big = "x" * 1_000_000 + "😀"
    p.insert("a", email="big@x", note=big)
    assert p.run().status == "completed"
    assert p.values("b", "note") == [big]


def test_invalid_utf8_in_a_row_is_copied_with_the_byte_replaced_and_the_others_sync(pair):
    """Gap in blocks/sql.py: SQLite raised 'Could not decode to UTF-8' on the whole read;
    the bad byte now reads as U+FFFD, so the record is copied and nothing is parked."""
    p = pair({"email": "TEXT", "note": "TEXT"})
    p.insert("a", email="good@x", note="fine")
    p.execute(
        "a",
        "INSERT INTO {t} (email, note, m, b) "
        "VALUES ('bad@x', CAST(x'61ff62' AS TEXT), CURRENT_TIMESTAMP, 'p')",
    )
    report = p.run()
    assert report.status == "completed", report.error
    assert report.systems["b"]["created"] == 2 and report.systems["b"]["failed"] == 0
    assert sorted((r["email"], r["note"]) for r in p.rows("b")) == [
        ("bad@x", "a\ufffdb"),
        ("good@x", "fine"),
    ]
    assert _letters(p) == []


def test_lone_surrogates_from_json_become_the_replacement_character():
    assert canonical("a\udcffb") == "a\ufffdb"
    assert canonical("\ud83d\ude00") == "😀"  # a split pair is joined, not replaced


def test_a_timestamp_in_the_future_does_not_hide_later_changes(pair):
    """Gap in blocks/sql.py: the cursor jumps to the future stamp and later edits are
    never read again."""
    p = pair({"email": "TEXT", "note": "TEXT"})
    p.insert("a", stamp="2099-01-01 00:00:00.000000", email="future@x", note="f")
    assert p.run().status == "completed"
    p.insert("a", email="later@x", note="l")
    p.run()
    assert "later@x" in p.values("b", "email")


def test_timestamps_without_a_zone_are_utc():
    assert parse_timestamp("2024-05-01 10:00:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_timestamp("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_timestamp("2024-05-01T10:00:00.000+0000") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_timestamp("yesterday") is None


def test_duplicate_match_on_values_park_every_candidate_and_create_nothing(pair):
    p = pair({"email": "TEXT", "note": "TEXT"})
    p.insert("a", email="dup@x", note="one")
    p.insert("a", email="DUP@x ", note="two")  # same after case and space folding
    p.insert("b", email="dup@x", note="three")
    p.insert("a", email="solo@x", note="ok")
    report = p.run()
    assert report.status == "completed"
    assert sorted(p.values("b", "email")) == ["dup@x", "solo@x"]  # only the good one came
    assert len(p.rows("a")) == 3
    letters = _letters(p)
    # every candidate is held, on both sides: nobody can tell which record is which
    assert sorted(d["system"] for d in letters) == ["a", "a", "b"]
    assert all("ambiguous match" in d["error"] for d in letters)
    assert report.systems["b"]["created"] == 1 and report.systems["a"]["created"] == 0


def _keyless(p: Pair) -> None:
    """System a's table with a text key that may be null or repeated (no constraint)."""
    p.execute("a", "DROP TABLE {t}")
    p.execute("a", "CREATE TABLE {t} (id TEXT, email TEXT, m TEXT, b TEXT)")


def test_a_null_key_is_parked_not_synced_as_the_text_none(pair):
    """Gap in blocks/sql.py (SqlTable._record): str(None) makes every null key 'None'."""
    p = pair({"email": "TEXT"})
    _keyless(p)
    p.execute("a", "INSERT INTO {t} VALUES (NULL, 'n1@x', CURRENT_TIMESTAMP, 'p')")
    p.execute("a", "INSERT INTO {t} VALUES (NULL, 'n2@x', CURRENT_TIMESTAMP, 'p')")
    p.execute("a", "INSERT INTO {t} VALUES ('k1', 'ok@x', CURRENT_TIMESTAMP, 'p')")
    report = p.run()
    assert report.status == "completed"
    assert p.values("b", "email") == ["ok@x"]
    assert {d["error"] for d in _letters(p)} and all("key" in d["error"] for d in _letters(p))


def test_a_duplicate_key_parks_both_records(pair):
    """Gap in tasks/echo.py (filter_echoes): the second record of a key is dropped unseen."""
    p = pair({"email": "TEXT"})
    _keyless(p)
    p.execute("a", "INSERT INTO {t} VALUES ('k1', 'first@x', CURRENT_TIMESTAMP, 'p')")
    p.execute("a", "INSERT INTO {t} VALUES ('k1', 'second@x', CURRENT_TIMESTAMP, 'p')")
    p.execute("a", "INSERT INTO {t} VALUES ('k2', 'ok@x', CURRENT_TIMESTAMP, 'p')")
    report = p.run()
    assert report.status == "completed"
    assert p.values("b", "email") == ["ok@x"]
    assert len(_letters(p)) == 2


def test_a_column_name_with_quotes_and_sql_is_quoted_not_executed(pair):
    p = pair({"email": "TEXT"})
    weird = 'x"; DROP TABLE victim; --'
    for system in ("a", "b"):
        p.execute(system, "CREATE TABLE victim (v TEXT)")
        p.execute(
            system, f'ALTER TABLE {{t}} ADD COLUMN "{weird.replace(chr(34), chr(34) * 2)}" TEXT'
        )
    p.doc["fields"]["weird"] = {"a": weird, "b": weird}
    import yaml

    p.path.write_text(yaml.safe_dump(p.doc))
    p.execute(
        "a",
        f"INSERT INTO {{t}} (email, \"{weird.replace(chr(34), chr(34) * 2)}\", m, b) VALUES ('q@x', 'v', CURRENT_TIMESTAMP, 'p')",
    )
    assert p.run().status == "completed"
    assert p.rows("b")[0][weird] == "v"
    for system in ("a", "b"):
        with p.engines[system].connect() as conn:
            assert sa.inspect(conn).has_table("victim")


@pytest.mark.parametrize(
    "bad, why",
    [
        ("003A0000006Vm9r", None),  # a good 15-character id
        ("003A0000006Vm9", "15 or 18 characters"),
        ("003A0000006Vm9rIA!", "letters and digits only"),
        ("003A0000006Vm9rIA9", "invalid checksum character"),
        ("0030000000000001A", "15 or 18 characters"),
    ],
)
def test_salesforce_ids_of_the_wrong_length_or_checksum_are_refused_by_name(bad, why):
    if why is None:
        assert sfid.is_valid(bad) and len(sfid.to18(bad)) == 18
        return
    assert not sfid.is_valid(bad)
    with pytest.raises(ValueError, match=why):
        sfid.to18(bad)


def test_a_common_sqlite_autoincrement_table_takes_a_batch_of_creates(pair):
    """Gap in blocks/sql.py (SqlTable._insert): SQLite reflects ``id INTEGER PRIMARY KEY
    AUTOINCREMENT`` as nullable, and SQLAlchemy refuses the sorted RETURNING insert."""
    p = pair({"email": "TEXT"}, key_sql="id INTEGER PRIMARY KEY AUTOINCREMENT")
    for i in range(3):
        p.insert("a", email=f"c{i}@x")
    report = p.run()
    assert report.status == "completed", report.error
    assert p.values("b", "email") == ["c0@x", "c1@x", "c2@x"]
