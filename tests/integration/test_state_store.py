"""The state store on SQLite, PostgreSQL and MariaDB: schema, atomic commits, the lease."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.sqlrig import server_url
from tests.syncrig import sync_rig
from twoway.errors import AlreadyRunning
from twoway.state import SCHEMA_VERSION, Intent, Link, Member, StateChanges, StateStore

BACKENDS = ["sqlite", "postgres", "mariadb"]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    url = server_url(request.param, tmp_path)
    s = StateStore(url)
    s.migrate()
    yield s
    s.close()


def test_schema_is_versioned_and_migrate_is_idempotent(store):
    assert StateStore(store.url).migrate() == SCHEMA_VERSION
    with store.engine.connect() as conn:
        assert (
            conn.execute(sa.text("select max(version) from twoway_schema")).scalar()
            == SCHEMA_VERSION
        )


def test_commit_is_all_or_nothing(store):
    sync = f"s{uuid.uuid4().hex[:6]}"
    good = StateChanges(
        members=[Member("a", "1", "L1", {"x": 1}, "h", "v1", None)],
        links=[Link("L1", {"x": 1}, "mk", None)],
        cursors={("a", "*"): "c1"},
    )
    store.commit(sync, good)
    bad = StateChanges(
        members=[Member("a", "2", "L2", {"x": 2}, "h", "v", None)],
        links=[Link("L2", {"x": 2}, None, None)],
        cursors={("a", "*"): "c2"},
        conflicts=[
            {"link_id": "L2", "field": "x", "status": "resolved", "policy": None, "candidates": {}}
        ],
    )
    with pytest.raises(
        sa.exc.IntegrityError
    ):  # policy may not be NULL: the whole commit rolls back
        store.commit(sync, bad)
    assert store.cursor(sync, "a", "*") == "c1"
    assert set(store.members_by_key(sync, "a", ["1", "2"])) == {"1"}
    assert set(store.links(sync, ["L1", "L2"])) == {"L1"}


def test_a_record_holding_its_links_base_is_stored_once_and_keeps_its_values_as_it_moves(store):
    sync, other = f"s{uuid.uuid4().hex[:6]}", f"o{uuid.uuid4().hex[:6]}"

    def member(system, key, seen, deleted_at=None):
        return Member(system, key, "L1", seen, f"h{seen}", "v", deleted_at)

    gone = datetime(2026, 1, 1)
    store.commit(
        sync,
        StateChanges(
            members=[member("a", "1", {"x": 1}), member("b", "2", {"x": 1, "y": None}, gone)]
            + [member("c", "3", {"x": 9}), member("d", "4", {"x": None})],
            links=[Link("L1", {"x": 1}, None, None)],
        ),
    )
    store.commit(
        other,
        StateChanges(
            members=[member("a", "1", {"x": 7})], links=[Link("L1", {"x": 7}, None, None)]
        ),
    )
    with store.engine.connect() as conn:
        stored = dict(
            conn.execute(
                sa.text("select system, seen from id_map where sync = :s"), {"s": sync}
            ).all()
        )
    # the base leaves out empty fields: b's empty y is listed; d's x differs from the base
    assert stored["a"] == "=" and stored["b"] == '=["y"]'
    assert json.loads(stored["c"]) == {"x": 9} and json.loads(stored["d"]) == {"x": None}

    def seen() -> dict[str, dict]:
        return {m.system: m.seen for m in store.members_of(sync, ["L1"])["L1"]}

    assert seen() == {"a": {"x": 1}, "b": {"x": 1, "y": None}, "c": {"x": 9}, "d": {"x": None}}
    # the base moves with a's record only: b and c keep the values they had
    store.commit(
        sync,
        StateChanges(
            members=[member("a", "1", {"x": 2})], links=[Link("L1", {"x": 2}, None, None)]
        ),
    )
    assert seen() == {"a": {"x": 2}, "b": {"x": 1, "y": None}, "c": {"x": 9}, "d": {"x": None}}
    store.commit(sync, StateChanges(links=[Link("L1", {"x": 3}, None, None)]))
    assert seen() == {"a": {"x": 2}, "b": {"x": 1, "y": None}, "c": {"x": 9}, "d": {"x": None}}
    assert store.links(sync, ["L1"])["L1"].base == {"x": 3}
    # another sync's link of the same id is its own
    assert [m.seen for m in store.members_of(other, ["L1"])["L1"]] == [{"x": 7}]


def test_intents_add_new_records_and_leave_a_tombstone_on_the_same_key(store):
    sync = f"s{uuid.uuid4().hex[:6]}"
    gone = datetime(2026, 1, 1)
    store.commit(sync, StateChanges(members=[Member("a", "k1", "OLD", {"x": 0}, "h0", "v", gone)]))
    fresh = [Member("a", f"k{n}", f"L{n}", None, None, "v", None) for n in range(1, 1202)]
    intents = [Intent("b", f"L{n}", "hash", [("a", f"k{n}")]) for n in range(1, 1202)]
    store.record_intents(sync, "run-1", intents, fresh)
    store.record_intents(sync, "run-2", intents[:1], fresh[:1])  # a rerun: nothing doubles
    known = store.members_by_key(sync, "a", [f"k{n}" for n in range(1, 1202)])
    assert len(known) == 1201
    assert (known["k1"].link_id, known["k1"].deleted_at) == ("OLD", gone)  # kept as it was
    assert {known[f"k{n}"].link_id for n in range(2, 1202)} == {f"L{n}" for n in range(2, 1202)}
    assert all(known[f"k{n}"].seen_hash is None for n in range(2, 1202))
    assert {(i.link_id, i.members[0][1]) for i in store.open_intents(sync)} == {
        (f"L{n}", f"k{n}") for n in range(1, 1202)
    }


def test_lease_excludes_a_second_holder_until_it_expires(store):
    sync = f"s{uuid.uuid4().hex[:6]}"
    store.acquire_lease(sync, "one", ttl=60)
    with pytest.raises(AlreadyRunning, match="already running"):
        store.acquire_lease(sync, "two", ttl=60)
    store.release_lease(sync, "one")
    store.acquire_lease(sync, "two", ttl=60)
    # an expired lease is taken over
    later = StateStore(store.url, clock=lambda: datetime.now(UTC) + timedelta(seconds=120))
    later.acquire_lease(sync, "three", ttl=60)
    assert not store.renew_lease(sync, "two")
    later.release_lease(sync, "three")
    later.close()


def test_lease_of_a_dead_process_on_this_host_is_taken_at_once(store):
    sync = f"s{uuid.uuid4().hex[:6]}"
    store.acquire_lease(sync, "ghost", ttl=600)
    with store.engine.begin() as conn:
        conn.execute(sa.text("update leases set pid = 999999999 where sync = :s"), {"s": sync})
    store.acquire_lease(sync, "me", ttl=60)
    with store.engine.connect() as conn:
        held = conn.execute(
            sa.text("select holder, pid from leases where sync = :s"), {"s": sync}
        ).all()
    assert held == [("me", os.getpid())]
    assert not store.renew_lease(sync, "ghost")
    store.release_lease(sync, "me")


@pytest.mark.parametrize("backend", ["postgres", "mariadb"])
def test_sync_with_state_on_a_server(tmp_path, backend):
    with sync_rig(tmp_path, state=server_url(backend, tmp_path)) as rig:
        rig.add("s0", "srv@example.com", "Sr", "V")
        assert rig.run().systems["s1"]["created"] == 1
        rig.edit("s1", "srv@example.com", first_name="Changed")
        assert rig.run().systems["s0"]["updated"] == 1
        assert rig.row("s0", "srv@example.com")["first_name"] == "Changed"


def test_a_commit_moves_a_record_to_another_link_and_back_to_life(store):
    """Records committed again take every value the commit carries: a new link (a key a
    system reused), a tombstone and its removal, a changed match key, new values; rows
    whose indexed columns did not change keep them."""
    sync = f"s{uuid.uuid4().hex[:6]}"
    gone = datetime(2026, 3, 1)
    store.commit(
        sync,
        StateChanges(
            members=[Member("a", str(n), f"L{n}", {"x": n}, f"h{n}", "v1", None) for n in range(4)],
            links=[Link(f"L{n}", {"x": n}, f"m{n}", None) for n in range(4)],
        ),
    )
    store.commit(
        sync,
        StateChanges(
            members=[
                Member("a", "0", "L0", {"x": 10}, "h10", "v2", None),  # new values only
                Member("a", "1", "L9", {"x": 1}, "h1", "v2", None),  # another link
                Member("a", "2", "L2", {"x": 2}, "h2", "v2", gone),  # deleted
                Member("a", "4", "L4", {"x": 4}, "h4", "v1", None),  # new
            ],
            links=[Link("L0", {"x": 10}, "m0", None), Link("L2", {"x": 2}, "m2x", gone)],
        ),
    )
    store.commit(sync, StateChanges(members=[Member("a", "2", "L2", {"x": 2}, "h2", "v3", None)]))
    got = store.members_by_key(sync, "a", [str(n) for n in range(5)])
    assert {k: (m.link_id, m.seen_hash, m.version, m.deleted_at) for k, m in got.items()} == {
        "0": ("L0", "h10", "v2", None),
        "1": ("L9", "h1", "v2", None),
        "2": ("L2", "h2", "v3", None),
        "3": ("L3", "h3", "v1", None),
        "4": ("L4", "h4", "v1", None),
    }
    links = store.links(sync, ["L0", "L2", "L3"])
    assert {k: (v.base, v.match_key, v.deleted_at) for k, v in links.items()} == {
        "L0": ({"x": 10}, "m0", None),
        "L2": ({"x": 2}, "m2x", gone),
        "L3": ({"x": 3}, "m3", None),
    }
    assert store.links_by_match_key(sync, ["m2", "m2x", "m3"]) == {"m3": ["L3"]}
    assert sorted(m.external_id for m in store.members_of(sync, ["L9"])["L9"]) == ["1"]
    assert store.live_count(sync, "a") == 5
