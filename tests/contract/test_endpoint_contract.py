"""The endpoint contract: every kind of system passes the same suite."""

from __future__ import annotations

import uuid

from twoway.contract import Create, Delete, Update
from twoway.errors import PreconditionFailed, Skippable


def _unique(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def _by_key(records):
    return {r.key: r for r in records}


def test_full_read_returns_every_record_across_pages(rig):
    people = [
        rig.person.create(rig.values(f"{_unique('p')}@example.com", "Ann", f"L{i}"))
        for i in range(rig.page_size * 2 + 1)
    ]
    changes = rig.endpoint.read_changes(None)
    keys = {r.key for r in changes.records}
    assert set(people) <= keys
    assert len(keys) == len(changes.records), "a record came back twice"
    assert changes.full
    # the cursor reads on from there: an incremental read, with edits on any page in it
    first, last = people[0], people[-1]
    rig.person.update(first, {rig.columns["last"]: "First page"})
    rig.person.update(last, {rig.columns["last"]: "Last page"})
    later = rig.endpoint.read_changes(changes.cursor)
    assert not later.full
    seen = {r.key: r.values[rig.columns["last"]] for r in later.records}
    assert (seen[first], seen[last]) == ("First page", "Last page")


def test_create_stamps_integration_account_and_returns_keys(rig):
    ops = [
        Create(ref=uuid.uuid4().hex, values=rig.values(f"{_unique('c')}@example.com", "Bo", "Li"))
        for _ in range(3)
    ]
    results = rig.endpoint.write(ops)
    assert [r.ok for r in results] == [True] * 3
    keys = [r.key for r in results]
    assert len(set(keys)) == 3 and all(keys)
    got = _by_key(rig.endpoint.read(keys))
    assert set(got) == set(keys)
    for op, result in zip(ops, results, strict=True):
        record = got[result.key]
        assert record.values[rig.columns["email"]] == op.values[rig.columns["email"]]
        assert record.modified_by == rig.endpoint.integration_account
        assert result.version == record.version
    # the version a create returns is the record's current one, and a real check: a write
    # carrying it is accepted, and refused once a person has edited the record since
    current, edited = results[0], results[1]
    rig.person.update(edited.key, {rig.columns["last"]: "Edited"})
    first = rig.columns["first"]
    checked = rig.endpoint.write(
        [
            Update(key=current.key, values={first: "Current"}, version=current.version),
            Update(key=edited.key, values={first: "Stale"}, version=edited.version),
        ]
    )
    assert checked[0].ok, checked[0].error
    assert isinstance(checked[1].error, PreconditionFailed)


def test_a_batch_of_updates_defers_only_its_stale_record(rig):
    """Updates of different fields in one batch, one of a record a person edited since it
    was read and one of a record deleted since: the others are applied, the edited record
    keeps the person's value and its update is deferred, the deleted one is refused."""
    first, last = rig.columns["first"], rig.columns["last"]
    keys = [
        rig.person.create(rig.values(f"{_unique('b')}@example.com", f"P{i}", "Orig"))
        for i in range(6)
    ]
    read = _by_key(rig.endpoint.read(keys))
    rig.person.update(keys[2], {first: "Person"})
    rig.person.delete(keys[4])
    ops = [
        Update(key=k, values={first if i % 2 else last: f"Sync{i}"}, version=read[k].version)
        for i, k in enumerate(keys)
    ]
    results = rig.endpoint.write(ops)
    assert isinstance(results[2].error, PreconditionFailed)
    assert isinstance(results[4].error, Skippable | PreconditionFailed)
    assert all(results[i].ok for i in (0, 1, 3, 5)), [r.error for r in results]
    now = _by_key(rig.endpoint.read(keys))
    assert now[keys[2]].values[first] == "Person" and now[keys[2]].values[last] == "Orig"
    for i in (0, 1, 3, 5):
        assert now[keys[i]].values[first if i % 2 else last] == f"Sync{i}"
        assert results[i].version == now[keys[i]].version


def test_incremental_read_sees_a_persons_edit_and_not_before(rig):
    key = rig.person.create(rig.values(f"{_unique('i')}@example.com", "Cy", "Old"))
    first = rig.endpoint.read_changes(None)
    assert key in {r.key for r in first.records}
    rig.person.update(key, {rig.columns["last"]: "New"})
    later = rig.endpoint.read_changes(first.cursor)
    seen = _by_key(later.records)
    assert key in seen
    assert seen[key].values[rig.columns["last"]] == "New"
    assert seen[key].modified_by == rig.person.name
    assert seen[key].modified_by != rig.endpoint.integration_account


def test_update_changes_only_given_fields_and_checks_version(rig):
    key = rig.person.create(rig.values(f"{_unique('u')}@example.com", "Di", "Orig"))
    (before,) = rig.endpoint.read([key])
    ok = rig.endpoint.write(
        [Update(key=key, values={rig.columns["first"]: "Dee"}, version=before.version)]
    )
    assert ok[0].ok, ok[0].error
    (after,) = rig.endpoint.read([key])
    assert after.values[rig.columns["first"]] == "Dee"
    assert after.values[rig.columns["last"]] == "Orig"
    assert after.version != before.version
    # a write that carries the old version must not overwrite
    stale = rig.endpoint.write(
        [Update(key=key, values={rig.columns["first"]: "Lost"}, version=before.version)]
    )
    assert isinstance(stale[0].error, PreconditionFailed)
    (still,) = rig.endpoint.read([key])
    assert still.values[rig.columns["first"]] == "Dee"


def test_one_bad_operation_does_not_stop_the_batch(rig):
    good = rig.person.create(rig.values(f"{_unique('g')}@example.com", "Ed", "Good"))
    (record,) = rig.endpoint.read([good])
    missing = rig.endpoint.write([Delete(key=good)])[0]
    assert missing.ok
    results = rig.endpoint.write(
        [
            Update(key=good, values={rig.columns["first"]: "Gone"}, version=record.version),
            Create(
                ref=uuid.uuid4().hex, values=rig.values(f"{_unique('n')}@example.com", "Fi", "New")
            ),
        ]
    )
    assert isinstance(results[0].error, Skippable | PreconditionFailed)
    assert results[1].ok and results[1].key


def test_delete_is_seen_as_gone(rig):
    key = rig.person.create(rig.values(f"{_unique('d')}@example.com", "Gu", "Del"))
    before = rig.endpoint.read_changes(None)
    rig.person.delete(key)
    assert rig.endpoint.read([key]) == []
    keys = rig.endpoint.list_keys()
    if keys is None:  # the change feed reports deletions itself
        after = rig.endpoint.read_changes(before.cursor)
        assert key in after.deleted
    else:
        assert key not in keys


def test_read_leaves_out_missing_keys(rig):
    key = rig.person.create(rig.values(f"{_unique('r')}@example.com", "Ha", "Here"))
    got = rig.endpoint.read([key, "does-not-exist-0001"])
    assert [r.key for r in got] == [key]


def test_columns_lists_the_mapped_columns(rig):
    assert set(rig.columns.values()) <= rig.endpoint.columns()


def test_unicode_round_trips(rig):
    text = "Zoë 🚀 مرحبا"
    res = rig.endpoint.write(
        [
            Create(
                ref=uuid.uuid4().hex, values=rig.values(f"{_unique('z')}@example.com", text, "Ünï")
            )
        ]
    )
    assert res[0].ok, res[0].error
    (rec,) = rig.endpoint.read([res[0].key])
    assert rec.values[rig.columns["first"]] == text
