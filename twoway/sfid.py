"""Salesforce record ids: the 15-character case-sensitive form, the 18-character case-safe
form (15 characters plus a 3-character checksum that encodes their case), key prefixes.

The API always returns 18-character ids and accepts both forms; twoway stores 18-character
ids only, so the same record never appears under two keys.
"""

from __future__ import annotations

import re
import string

#: the 32 characters a checksum character is drawn from (5 bits each)
SUFFIX_ALPHABET = string.ascii_uppercase + "012345"
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ID_CHARS = re.compile(r"^[A-Za-z0-9]+$")

#: key prefixes (the first three characters of an id) of the objects twoway meets
KEY_PREFIXES = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Opportunity": "006",
    "Lead": "00Q",
    "Case": "500",
    "Organization": "00D",
}


def checksum(id15: str) -> str:
    """The 3-character suffix of a 15-character id: one character per 5-character chunk,
    whose bits say which characters of the chunk are upper-case letters."""
    if len(id15) != 15 or not _ID_CHARS.match(id15):
        raise ValueError(f"{id15!r} is not a 15-character Salesforce id")
    suffix = []
    for start in range(0, 15, 5):
        bits = 0
        for offset, char in enumerate(id15[start : start + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << offset
        suffix.append(SUFFIX_ALPHABET[bits])
    return "".join(suffix)


def to18(record_id: str) -> str:
    """The 18-character form of a 15- or 18-character id.

    An 18-character id is case-insensitive: its case is restored from the checksum, so
    ``001A0000006VM9RIAC`` and ``001A0000006Vm9rIAC`` give the same answer. Raises
    ValueError for anything that is not a Salesforce id.
    """
    if not isinstance(record_id, str) or not _ID_CHARS.match(record_id or ""):
        raise ValueError(f"{record_id!r} is not a Salesforce id (letters and digits only)")
    if len(record_id) == 15:
        return record_id + checksum(record_id)
    if len(record_id) != 18:
        raise ValueError(f"{record_id!r} is not a Salesforce id (15 or 18 characters)")
    suffix = record_id[15:].upper()
    body = []
    for chunk, char in enumerate(suffix):
        bits = SUFFIX_ALPHABET.find(char)
        if bits < 0:
            raise ValueError(f"{record_id!r} has an invalid checksum character {char!r}")
        for offset in range(5):
            c = record_id[chunk * 5 + offset]
            upper = bool(bits & (1 << offset))
            if upper and not c.isalpha():
                raise ValueError(f"{record_id!r} has a checksum that does not fit its characters")
            body.append(c.upper() if upper else c.lower())
    return "".join(body) + suffix


def is_valid(record_id: object, strict: bool = True) -> bool:
    """True for a well-formed id. ``strict`` 18-character ids must carry the checksum of
    their own first 15 characters (as the API returns them); otherwise any case is accepted."""
    if not isinstance(record_id, str):
        return False
    try:
        normal = to18(record_id)
    except ValueError:
        return False
    return not strict or len(record_id) == 15 or normal == record_id


def normalize(record_id: str) -> str:
    """Alias of :func:`to18`, named for what callers do with it."""
    return to18(record_id)


def key_prefix(record_id: str) -> str:
    """The key prefix (object type) of an id: ``001`` for an Account, ``003`` a Contact."""
    return to18(record_id)[:3]


def custom_prefix(index: int) -> str:
    """The key prefix of the ``index``-th custom object of an org: a00, a01, ... a0X, ..."""
    if not 0 <= index < 62 * 62:
        raise ValueError("custom object index out of range")
    return "a" + BASE62[index // 62] + BASE62[index % 62]


def base62(number: int, width: int) -> str:
    """``number`` in base 62 (0-9, A-Z, a-z), left-padded with zeros to ``width``."""
    if number < 0 or number >= 62**width:
        raise ValueError(f"{number} does not fit {width} base-62 digits")
    out = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        out.append(BASE62[digit])
    return "".join(reversed(out))


def make_id(prefix: str, pod: str, number: int) -> str:
    """An 18-character id: key prefix (3), pod (2), a reserved ``0``, a 9-digit base-62
    serial number, and the checksum."""
    if len(prefix) != 3 or len(pod) != 2:
        raise ValueError("a key prefix has 3 characters and a pod 2")
    id15 = prefix + pod + "0" + base62(number, 9)
    return id15 + checksum(id15)
