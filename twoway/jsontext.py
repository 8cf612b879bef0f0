"""JSON text at C speed where it is the same text.

Every read page is decoded and every record's values are encoded (for their hash and for the
state store), so JSON is much of a large read's work. orjson (which Prefect depends on) is
several times faster than the standard library but not identical: it writes 1e-05 as
0.00001 and NaN as null, fails on integers past 64 bits and reads integers past 64 bits as
floats.
These functions use it only where its answer is the standard library's, byte for byte and
value for value, and the standard library everywhere else, so stored hashes never change.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import orjson

_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#: value types orjson writes as the standard library does (floats only within _PLAIN_FLOATS)
_FLAT = frozenset({str, int, float, bool, type(None)})
_NO_FLOATS = _FLAT - {float}
#: the floats orjson writes as the standard library does: 0 and 1e-4 <= |x| <= the largest
#: finite float. Below 1e-4 it writes 1e-05 as 0.00001 and 1e-07 as 1e-7; NaN and the
#: infinities it writes as null.
_PLAIN_FLOATS = (1e-4, sys.float_info.max)
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
    if type(value) is dict and _orjson_writes_alike(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # an integer past 64 bits, a lone surrogate, a key not a str
            pass
    return _SORTED.encode(value).encode("utf-8", "surrogatepass")


def _orjson_writes_alike(values: dict) -> bool:
    """Whether every value of a flat dict is one orjson writes as the standard library does
    (checked on the values, not on the text: a scan of the text cost four times the encoding)."""
    types = set(map(type, values.values()))
    if types <= _NO_FLOATS:
        return True
    if not types <= _FLAT:
        return False
    low, high = _PLAIN_FLOATS
    for v in values.values():  # noqa: SIM110 (all() over a generator is a third slower)
        if type(v) is float and v and not low <= abs(v) <= high:
            return False
    return True


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
