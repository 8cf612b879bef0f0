"""The fast JSON paths give the standard library's text and values, exactly: stored values
and hashes must not change with the library that made them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twoway.jsontext import loads, sorted_json
from twoway.values import values_hash

STDLIB = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def stdlib_text(value: object) -> bytes:
    return STDLIB.encode(value).encode("utf-8", "surrogatepass")


scalars = (
    st.text()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.booleans()
    | st.none()
)
flat = st.dictionaries(st.text(), scalars, max_size=25)
nested = st.recursive(scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner))


@settings(max_examples=600)
@given(flat)
def test_a_flat_record_is_written_as_the_standard_library_writes_it(values):
    assert sorted_json(values) == stdlib_text(values)


@settings(max_examples=80)
@given(st.dictionaries(st.text(), nested, max_size=8))
def test_nested_values_are_written_as_the_standard_library_writes_them(values):
    assert sorted_json(values) == stdlib_text(values)


@pytest.mark.parametrize(
    "value",
    [
        {"x": 1e-05},  # orjson: 0.00001
        {"x": 0.0001, "y": 9999999999999998.0},
        {"x": 1e16, "y": 1.5e16},  # orjson: 1e16
        {"x": -2.5e-7, "y": 9.99e-05, "z": 1e-10},
        {"x": 5e-324, "y": 1e300},
        {"x": float("nan")},  # orjson: null
        {"x": float("inf"), "y": 1.5},
        {"x": -float("inf")},
        {"x": -0.0, "y": 0.0},
        {"x": 2**64},  # orjson refuses integers past 64 bits
        {"x": -(2**63) - 1},
        {"x": "\ud800"},  # a lone surrogate
        {1: "a key that is not text"},
        {"b": 1, "a": 2, "é": 3, "z": 4, "\U0001f600": 5},
        [1, {"b": 1, "a": 0.5}],
        "text",
        None,
    ],
)
def test_the_values_orjson_writes_differently_take_the_standard_librarys_path(value):
    assert sorted_json(value) == stdlib_text(value)


def test_a_common_record_is_written_by_orjson(monkeypatch):
    """Timestamps, decimals, e-mail addresses, large floats and text that looks like a small
    float do not send a record to the slow path."""
    import twoway.jsontext

    class Refuse:
        def encode(self, value):
            raise AssertionError(f"the standard library wrote {value!r}")

    monkeypatch.setattr(twoway.jsontext, "_SORTED", Refuse())
    record = {"at": "2024-04-16 12:00:00.000000", "n": 9655.18, "x": 0.0025914796707647847}
    record |= {"mail": "ann-7@example.org", "ok": True, "none": None, "big": 2**63 - 1}
    record |= {"huge": 1.5e300, "zero": -0.0, "note": "x:0.00001 and 1e-7", "min": 0.0001}
    assert sorted_json(record) == stdlib_text(record)


def test_the_values_hash_is_the_one_stores_already_hold():
    """Hashes made before the fast path (sha256 of the standard library's sorted text)."""
    import hashlib

    for values in ({"a": 1, "b": "x", "c": 0.25}, {"x": 1e-05, "t": "é"}, {"big": 2**80}):
        old = hashlib.sha256(STDLIB.encode(values).encode("utf-8")).hexdigest()[:32]
        assert values_hash(values) == old


@settings(max_examples=200)
@given(nested)
def test_text_is_read_as_the_standard_library_reads_it(value):
    text = json.dumps(value, ensure_ascii=False).encode()
    assert repr(loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        b"[123456789012345678901234567890]",  # orjson: a float
        b"[18446744073709551616, -9223372036854775809]",
        b"[0.12345678901234567890123]",
        b"[1e400, -1e400]",  # orjson refuses; the standard library reads infinity
        b"[NaN, Infinity]",
        b'["\\ud800", "\\udc00x"]',  # lone surrogates
        b'{"a": 1, "a": 2}',
        b"\xef\xbb\xbf[1]",  # a byte order mark
        b'{"value": [{"id": 1, "f": 1.5e-7}]}',
        b"[0.0025914796707647847, 1.00000000000000011102230246251565404236316680908203125]",
        b"[3.14159265358979323846264338327950288419716939937510e-5]",
        b'["12345678901234567890", 0.1234567890123456789012345678901234567890123]',
    ],
)
def test_numbers_and_text_orjson_reads_differently_are_read_as_before(text):
    assert repr(loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", [b"[1, 2", b"{'a': 1}", b"<html>", b'{"a": "\xff"}'])
def test_bad_text_fails_as_it_did(text):
    with pytest.raises((ValueError, UnicodeDecodeError)) as expected:
        json.loads(text)
    with pytest.raises(type(expected.value)) as got:
        loads(text)
    assert str(got.value) == str(expected.value)
