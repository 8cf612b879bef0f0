"""The review's form: one choice per held conflict naming each value, one per dead letter,
defaults that decide nothing, and answers read back as decisions."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError

from flows.review import OWN_VALUE, read_answer, review_form, review_markdown
from twoway.review import HeldConflict, ParkedRecord, Pending

WAITING = Pending(
    "contacts",
    [
        HeldConflict(
            id=3,
            field="first_name",
            link_id="L1",
            candidates={"crm": "Early", "portal": "Later | x"},
            changed_at={"crm": "2026-11-26T11:00:01.5+02:00"},
            detected_at=datetime(2026, 11, 26, 9, 10),
            match="jane@example.com",
        )
    ],
    [
        ParkedRecord(
            id=5,
            system="portal",
            record="joe@example.com",
            operation="update",
            kind="failed",
            error="value too long",
            attempts=2,
            first_seen=datetime(2026, 11, 26, 8, 0),
        )
    ],
)


def test_the_form_names_each_value_when_it_changed_and_the_record():
    schema = review_form(WAITING).model_json_schema()["properties"]
    conflict = schema["conflict_3"]
    assert conflict["title"] == "Conflict #3: first_name of jane@example.com"
    assert conflict["enum"] == [
        "leave open",
        'keep crm: "Early"',
        'keep portal: "Later | x"',
        OWN_VALUE,
    ]
    assert conflict["default"] == "leave open"
    assert conflict["description"] == (
        'crm: "Early" (changed 2026-11-26 09:00:01 UTC); portal: "Later | x" (change time unknown)'
    )
    letter = schema["dead_letter_5"]
    assert letter["enum"] == ["leave", "retry", "drop"] and letter["default"] == "leave"
    assert letter["title"] == "Dead letter #5: update of joe@example.com in portal"
    assert letter["description"] == "2 attempts since 2026-11-26 08:00 UTC: value too long"
    assert schema["decided_by"]["default"] == "ui"
    markdown = review_markdown(WAITING)
    assert "| 3 | jane@example.com | first_name |" in markdown
    assert '`"Later \\| x"`' in markdown  # a pipe in a value does not split the table


def test_answers_become_decisions_and_defaults_decide_nothing():
    form = review_form(WAITING)
    decisions, problems = read_answer(WAITING, form())
    assert not decisions and problems == []
    keep, _ = read_answer(
        WAITING, form(conflict_3='keep portal: "Later | x"', dead_letter_5="drop")
    )
    assert keep.keep == {3: "portal"} and keep.letters == {5: "drop"}
    own, _ = read_answer(WAITING, form(conflict_3=OWN_VALUE, conflict_3_value="crm"))
    assert own.values == {3: "crm"} and not own.keep  # a value that names a system is a value
    empty, problems = read_answer(WAITING, form(conflict_3=OWN_VALUE, conflict_3_value="  "))
    assert not empty and problems == ["conflict #3: left open (no value of your own entered)"]
    with pytest.raises(ValidationError):
        form(conflict_3="keep erp: 1")


def test_a_capped_form_says_how_many_more_wait():
    from dataclasses import replace

    from flows.review import REVIEW_CAP

    crowded = replace(WAITING, conflicts_open=120, letters_open=1)
    assert f"This form holds the oldest {REVIEW_CAP} of each: 119 more conflicts wait" in (
        review_markdown(crowded)
    )
    assert "more dead letters" not in review_markdown(crowded)
