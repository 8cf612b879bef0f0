"""JSON text at C speed where it is the same text.

Every read page is decoded and every record's values are encoded (for their hash and for the
state store), so JSON is much of a large read's work. orjson (which Prefect depends on) is
several times faster than the standard library but not identical: it writes 1e-05 as
0.00001, fails on integers past 64 bits and reads integers past 64 bits as floats.
These functions use it only where its answer is the standard library's, byte for byte and
value for value, and the standard library everywhere else, so stored hashes never change.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#: value types orjson writes as the standard library does (all but some small floats)
_FLAT = frozenset({str, int, float, bool, type(None)})
#: where orjson writes a float below 1e-4 otherwise (0.00001 for 1e-05, 1e-7 for 1e-07):
#: a value of a flat dict follows ":"; text that holds one of these anywhere (in a string
#: too) is written by the standard library
_SMALL_FLOATS = (b":0.0000", b":-0.0000", b"e-5", b"e-6", b"e-7", b"e-8", b"e-9")
#: digits to "0", the point kept, every other byte to " ": an integer of 19 digits or more
#: (orjson reads those as floats) is then " " and 19 zeros; a fraction's digits follow "."
_NUMBER_SHAPES = bytes(
    ord("0") if byte in b"0123456789" else byte if byte == ord(".") else ord(" ")
    for byte in range(256)
)
_LONG_INTEGER = b"0" * 19


def sorted_json(value: Any) -> bytes:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` as
    UTF-8: the stored and hashed form of a record's values (orjson for a flat dict)."""
    if type(value) is dict and set(map(type, value.values())) <= _FLAT:
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # an integer past 64 bits, a lone surrogate, a key not a str
            pass
        else:
            for mark in _SMALL_FLOATS:
                if mark in text:
                    break
            else:
                return text
    return _SORTED.encode(value).encode("utf-8", "surrogatepass")


def loads(data: bytes) -> Any:
    """``json.loads(data)``: the same values, and the same errors for text it refuses."""
    if not _long_integer(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN, 1e400, a lone surrogate, bad JSON: the standard library decides
    return json.loads(data)


def _long_integer(data: bytes) -> bool:
    """Whether the text may hold an integer of 19 digits or more (digits in a string or an
    exponent count too; a fraction's do not: orjson reads those exactly)."""
    shapes = data.translate(_NUMBER_SHAPES)
    return shapes.startswith(_LONG_INTEGER) or b" " + _LONG_INTEGER in shapes
