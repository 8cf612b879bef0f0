"""Salesforce ids: 15 -> 18 conversion against published examples, validation, prefixes."""

from __future__ import annotations

import pytest

from twoway import sfid

# (15-character id, 18-character id) pairs from public write-ups of the algorithm, plus one by hand
KNOWN = [
    ("a0D30000001n7Pi", "a0D30000001n7PiEAI"),
    ("0019000000B98de", "0019000000B98deAAB"),
    ("500x000000003TR", "500x000000003TRAAY"),
    ("001A0000006Vm9r", "001A0000006Vm9rIAC"),
    ("00300000000ABCD", "00300000000ABCDAA4"),  # worked by hand: 0ABCD -> 11110 -> 30 -> "4"
]


@pytest.mark.parametrize(("id15", "id18"), KNOWN)
def test_known_vectors(id15, id18):
    assert sfid.to18(id15) == id18
    assert sfid.checksum(id15) == id18[15:]
    assert sfid.to18(id18) == id18
    assert sfid.is_valid(id15) and sfid.is_valid(id18)


def test_18_character_ids_are_case_insensitive():
    assert sfid.to18("A0D30000001N7PIEAI") == "a0D30000001n7PiEAI"
    assert sfid.to18("001a0000006vm9riac") == "001A0000006Vm9rIAC"
    assert not sfid.is_valid("001a0000006vm9riac")  # not as the API writes it
    assert sfid.is_valid("001a0000006vm9riac", strict=False)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "001",
        "001A0000006Vm9",  # 14 characters
        "001A0000006Vm9rIA",  # 17 characters
        "001A0000006Vm9rIACX",  # 19 characters
        "001A0000006Vm9-",  # not alphanumeric
        "001A0000006Vm9rIA9",  # 9 is not a checksum character
        "00120000001YztiABD",  # the suffix marks a digit as upper-case
        "does-not-exist-0001",
    ],
)
def test_invalid_ids_are_rejected(bad):
    assert not sfid.is_valid(bad)
    assert not sfid.is_valid(bad, strict=False)
    with pytest.raises(ValueError):
        sfid.to18(bad)


def test_wrong_checksum_for_the_case_is_not_strictly_valid():
    assert not sfid.is_valid("001A0000006Vm9rAAA")
    assert sfid.to18("001A0000006Vm9rAAA") == "001a0000006vm9rAAA"  # another record


def test_key_prefixes_and_made_ids():
    assert sfid.key_prefix("0019000000B98de") == "001"
    assert sfid.KEY_PREFIXES["Contact"] == "003"
    made = sfid.make_id("003", "5g", 12345)
    assert len(made) == 18 and made.startswith("0035g0") and sfid.is_valid(made)
    assert sfid.make_id("003", "5g", 1) != sfid.make_id("003", "5g", 2)
    assert [sfid.custom_prefix(i) for i in (0, 1, 33)] == ["a00", "a01", "a0X"]
    with pytest.raises(ValueError):
        sfid.custom_prefix(-1)
    assert sfid.base62(61, 2) == "0z"
