"""The SOQL subset of the Salesforce simulator: every construct, evaluation, and errors."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from twoway.simulators import soql
from twoway.simulators.soql import BoolOp, Comparison, InList, Like, Not, SoqlError, parse


def test_field_list_from_order_limit_offset():
    q = parse(
        "select Id, Name , Email FROM Contact ORDER BY Name DESC NULLS LAST, Id LIMIT 10 OFFSET 5"
    )
    assert q.fields == ["Id", "Name", "Email"]
    assert q.sobject == "Contact"
    assert [(k.field, k.descending, k.nulls_go_first) for k in q.order_by] == [
        ("Name", True, False),
        ("Id", False, True),
    ]
    assert (q.limit, q.offset) == (10, 5)
    assert parse("SELECT Id FROM Account ORDER BY Name ASC NULLS FIRST").order_by[0].nulls_go_first


def test_literals():
    q = parse(
        "SELECT Id FROM X WHERE A = 'it\\'s\\n' AND B = 42 AND C = -1.5 AND D = true AND E = null "
        "AND F = 2024-01-31 AND G >= 2024-01-01T00:00:00Z AND H < 2024-01-01T02:00:00.5+02:00 "
        "AND I != FALSE AND J = '\\u00e9'"
    )
    values = [item.value for item in q.where.items]
    assert values == [
        "it's\n",
        42,
        Decimal("-1.5"),
        True,
        None,
        date(2024, 1, 31),
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
        False,
        "é",
    ]


def test_operators_in_like_not_and_parentheses():
    q = parse(
        "SELECT Id FROM X WHERE (A <> 1 OR B <= 2) AND NOT C > 3 AND D IN ('a', 'b') "
        "AND E NOT IN (1, 2) AND F LIKE 'Ab%'"
    )
    assert isinstance(q.where, BoolOp) and q.where.op == "AND"
    first, second, third, fourth, fifth = q.where.items
    assert isinstance(first, BoolOp) and first.op == "OR"
    assert first.items[0] == Comparison("A", "!=", 1)
    assert isinstance(second, Not) and second.item == Comparison("C", ">", 3)
    assert third == InList("D", ["a", "b"])
    assert fourth == InList("E", [1, 2], negate=True)
    assert isinstance(fifth, Like)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SELECT FROM Contact",
        "SELECT Id Contact",
        "SELECT Id, FROM Contact",
        "SELECT Id FROM Contact WHERE",
        "SELECT Id FROM Contact WHERE Name = 'open",
        "SELECT Id FROM Contact WHERE Name == 'x'",
        "SELECT Id FROM Contact WHERE A = 1 AND B = 2 OR C = 3",  # mixing needs parentheses
        "SELECT Id FROM Contact WHERE (A = 1",
        "SELECT Id FROM Contact WHERE A IN 1",
        "SELECT Id FROM Contact WHERE A LIKE 1",
        "SELECT Id FROM Contact WHERE A NOT = 1",
        "SELECT Id FROM Contact LIMIT x",
        "SELECT Id FROM Contact ORDER BY Name NULLS",
        "SELECT Id FROM Contact extra",
        "SELECT Id FROM Contact WHERE A = 'bad \\q escape'",
        "SELECT Id FROM Contact WHERE A = 2024-13-45",
        "SELECT Id FROM Contact WHERE A = #",
    ],
)
def test_malformed_queries(text):
    with pytest.raises(SoqlError) as caught:
        parse(text)
    assert caught.value.code == "MALFORMED_QUERY"


def _bound(text: str) -> soql.Query:
    q = parse(text)
    names = {"name": "Name", "n": "N", "at": "At", "flag": "Flag"}
    q.bind(lambda n: names[n.lower()], lambda f, v: v)
    return q


ROWS = [
    {"Name": "Ann", "N": 3, "At": datetime(2024, 1, 2, tzinfo=UTC), "Flag": True},
    {"Name": "bob", "N": 1, "At": datetime(2024, 1, 1, tzinfo=UTC), "Flag": False},
    {"Name": None, "N": 2, "At": None, "Flag": False},
    {"Name": "50% off", "N": None, "At": datetime(2024, 1, 3, tzinfo=UTC), "Flag": True},
]


def _names(text: str) -> list:
    q = _bound(text)
    rows = [r for r in ROWS if soql.matches(q.where, r)]
    if q.order_by:
        rows.sort(key=soql.sort_key(q.order_by))
    return [r["Name"] for r in rows]


def test_evaluation():
    assert _names("SELECT Name FROM X WHERE name = 'ANN'") == ["Ann"]  # case-insensitive
    assert _names("SELECT Name FROM X WHERE At >= 2024-01-02T00:00:00Z ORDER BY At") == [
        "Ann",
        "50% off",
    ]
    assert _names("SELECT Name FROM X WHERE Name = null") == [None]
    assert _names("SELECT Name FROM X WHERE Name != null AND N > 0 ORDER BY N DESC") == [
        "Ann",
        "bob",
    ]
    assert _names("SELECT Name FROM X WHERE Name LIKE 'b%'") == ["bob"]
    assert _names("SELECT Name FROM X WHERE Name LIKE '50\\% _ff'") == ["50% off"]
    assert _names("SELECT Name FROM X WHERE N IN (1, 2) ORDER BY N") == ["bob", None]
    assert _names("SELECT Name FROM X WHERE N NOT IN (1, 2) ORDER BY N") == ["Ann"]  # null excluded
    assert _names("SELECT Name FROM X WHERE NOT (Flag = true OR N = 1)") == [None]
    assert _names("SELECT Name FROM X WHERE Flag = true AND (N = 3 OR N = null) ORDER BY Name") == [
        "50% off",
        "Ann",
    ]


def test_ordering_of_nulls_and_several_keys():
    assert _names("SELECT Name FROM X ORDER BY Name") == [None, "50% off", "Ann", "bob"]
    assert _names("SELECT Name FROM X ORDER BY Name DESC") == ["bob", "Ann", "50% off", None]
    assert _names("SELECT Name FROM X ORDER BY Name NULLS LAST") == ["50% off", "Ann", "bob", None]
    assert _names("SELECT Name FROM X ORDER BY Name DESC NULLS FIRST") == [
        None,
        "bob",
        "Ann",
        "50% off",
    ]
    q = _bound("SELECT Name FROM X ORDER BY Flag, N DESC")
    ordered = sorted(ROWS, key=soql.sort_key(q.order_by))
    assert [r["Name"] for r in ordered] == [None, "bob", "Ann", "50% off"]


def test_field_refs_lists_every_mention():
    q = parse("SELECT Id, Name FROM X WHERE A = 1 AND (B LIKE 'x' OR NOT C IN (1)) ORDER BY D")
    assert q.field_refs() == ["Id", "Name", "A", "B", "C", "D"]
