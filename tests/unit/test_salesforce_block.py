"""The SalesforceObject block against the org simulator: chunking, upserts, preconditions,
per-item errors and retries, token refresh, and secrets kept out of messages."""

from __future__ import annotations

import pickle
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.salesforce import SalesforceObject
from tasks.load import load_changes
from twoway.contract import Create, Delete, Update
from twoway.definition import parse_definition
from twoway.errors import Fatal, PreconditionFailed, Retriable, Skippable
from twoway.records import PlannedOp
from twoway.retry import RetryPolicy
from twoway.simulators.salesforce import SalesforceState, create_app
from twoway.simulators.server import BackgroundServer
from twoway.values import parse_timestamp

SECRET = "very-secret-value"


@pytest.fixture
def org():
    state = SalesforceState(seed=7)
    state.define(
        "Contact", {"Link__c": {"type": "string", "length": 64, "externalId": True, "unique": True}}
    )
    state.add_client("sync", SECRET, "Integration User")
    with BackgroundServer(create_app(state)) as server:
        yield state, server.url


def _block(url: str, **extra) -> SalesforceObject:
    settings = {
        "instance_url": url,
        "object": "Contact",
        "columns_to_sync": ["FirstName", "LastName", "Email"],
        "credentials": IntegrationAccountCredentials(
            client_id="sync", client_secret=SecretStr(SECRET)
        ),
        **extra,
    }
    block = SalesforceObject(**settings)
    block.use_retry_hooks(lambda seconds: None)
    return block


def _creates(n: int) -> list[Create]:
    return [Create(ref=uuid.uuid4().hex, values={"LastName": f"N{i}"}) for i in range(n)]


def test_from_definition_and_integration_user_from_token(org):
    state, url = org
    raw = {
        "name": "crm",
        "systems": {
            "sf": {
                "kind": "salesforce",
                "instance_url": url,
                "object": "Contact",
                "external_id_field": "Link__c",
            },
            "db": {"kind": "sql", "url": "sqlite:///x.db", "table": "people"},
        },
        "fields": {"last": {"sf": "LastName", "db": "last_name"}},
    }
    definition = parse_definition(raw, Path("/tmp/crm.sync.yaml"))
    block = SalesforceObject.from_definition("sf", definition.systems["sf"], ["LastName"])
    assert block.external_id_field == "Link__c" and block.columns_to_sync == ["LastName"]
    assert block.key == "Id" and block.modified_at == "SystemModstamp"
    endpoint = _block(url)
    assert endpoint.integration_account is None
    assert {"LastName", "Link__c", "SystemModstamp"} <= endpoint.columns()
    assert endpoint.integration_account == state.user_id("Integration User")
    fifteen = _block(url, integration_account=state.user_id("Integration User")[:15])
    fifteen.columns()
    assert fifteen.integration_account == state.user_id("Integration User")


def test_writes_go_in_collections_of_200(org):
    state, url = org
    block = _block(url)
    before = state.api_usage
    results = block.write(_creates(450))
    assert all(r.ok for r in results) and len({r.key for r in results}) == 450
    assert all(r.version for r in results)
    # 3 collection calls, 1 read of the new versions (a POST retrieve takes 2,000 ids)
    assert state.api_usage - before == 3 + 1
    # the versions are what a later read returns (echo detection compares them)
    later = {r.key: r.version for r in block.read([r.key for r in results])}
    assert {r.key: r.version for r in results} == later


def test_retried_create_with_external_id_does_not_duplicate(org):
    state, url = org
    block = _block(url, external_id_field="Link__c")
    ops = _creates(3)
    first = block.write(ops)
    again = block.write(ops)
    assert [r.key for r in first] == [r.key for r in again]
    assert len(state.records("Contact")) == 3
    assert {r["Link__c"] for r in state.records("Contact")} == {op.ref for op in ops}


def test_plain_create_without_external_id_field(org):
    state, url = org
    block = _block(url)
    (result,) = block.write(
        [Create(ref="r1", values={"LastName": "Plain", "Email": "p@example.com"})]
    )
    assert result.ok and result.key.startswith("003")
    assert state.records("Contact")[0]["LastModifiedById"] == block.integration_account


def test_item_errors_are_skippable_and_the_rest_goes_on(org):
    state, url = org
    block = _block(url)
    results = block.write(
        [
            Create(ref="a", values={"LastName": "x" * 81}),
            Create(ref="b", values={"FirstName": "no last name"}),
            Create(ref="c", values={"LastName": "Fine"}),
            Update(key="not-an-id", values={"LastName": "y"}),
            Update(key="003000000000099AAA", values={"LastName": "ghost"}),
        ]
    )
    assert isinstance(results[0].error, Skippable) and "STRING_TOO_LONG" in str(results[0].error)
    assert isinstance(results[1].error, Skippable) and "REQUIRED_FIELD_MISSING" in str(
        results[1].error
    )
    assert results[2].ok
    assert isinstance(results[3].error, Skippable)
    assert isinstance(results[4].error, Skippable)


def test_version_checks_on_update_and_delete(org):
    state, url = org
    block = _block(url)
    key = state.user_create("Contact", {"LastName": "Versioned"})
    (record,) = block.read([key[:15]])
    assert record.key == key
    state.user_update("Contact", key, {"FirstName": "Changed"})
    stale_update, stale_delete = block.write(
        [
            Update(key=key, values={"LastName": "Mine"}, version=record.version),
            Delete(key=key, version=record.version),
        ]
    )
    assert isinstance(stale_update.error, PreconditionFailed)
    assert isinstance(stale_delete.error, PreconditionFailed)
    (fresh,) = block.read([key])
    (deleted,) = block.write([Delete(key=key, version=fresh.version)])
    assert deleted.ok and block.read([key]) == []
    again, gone_update = block.write(
        [Delete(key=key), Update(key=key, values={"LastName": "x"}, version=fresh.version)]
    )
    assert again.ok  # already gone: the delete's goal holds
    assert isinstance(gone_update.error, Skippable)


def test_locked_items_are_retried_alone(org):
    state, url = org
    block = _block(url)
    keys = [state.user_create("Contact", {"LastName": f"L{i}"}) for i in range(6)]
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        state.faults.set()  # the lock is released while we wait

    block.use_retry_hooks(sleep)
    state.faults.set(lock=1.0)
    results = block.write([Update(key=k, values={"Title": "T"}) for k in keys])
    assert all(r.ok for r in results), [r.error for r in results]
    assert len(waits) == 1
    assert {r["Title"] for r in state.records("Contact")} == {"T"}


def test_a_lock_that_stays_comes_back_as_retriable(org):
    state, url = org
    block = _block(url, retry_attempts=2)
    key = state.user_create("Contact", {"LastName": "Stuck"})
    state.faults.set(lock=1.0)
    (result,) = block.write([Update(key=key, values={"Title": "T"})])
    assert isinstance(result.error, Retriable) and "UNABLE_TO_LOCK_ROW" in str(result.error)


def test_throttling_is_retried_in_place_then_raised(org):
    state, url = org
    block = _block(url)
    block.columns()  # authenticate first
    calls = []

    def sleep(seconds):
        calls.append(seconds)
        state.faults.set()

    block.use_retry_hooks(sleep)
    state.faults.set(throttle=1.0)
    assert block.read_changes(None).full
    assert calls == [1.0]  # the Retry-After the simulator sent
    stubborn = _block(url, retry_attempts=3)
    state.faults.set(unavailable=1.0)
    with pytest.raises(Retriable):
        stubborn.read_changes(None)
    state.faults.set()


def test_expired_session_gets_a_new_token_once(org):
    state, url = org
    block = _block(url)
    block.columns()
    state.expire_sessions()
    assert "LastName" in block.columns()


def test_bad_credentials_are_fatal_without_the_secret(org):
    _, url = org
    block = SalesforceObject(
        instance_url=url,
        object="Contact",
        credentials=IntegrationAccountCredentials(
            client_id="sync", client_secret=SecretStr("wrong-" + SECRET)
        ),
    )
    with pytest.raises(Fatal) as caught:
        block.columns()
    assert SECRET not in str(caught.value) and "invalid" in str(caught.value)
    with pytest.raises(Fatal):
        SalesforceObject(instance_url=url).columns()


def test_read_changes_cursor_and_deletions(org):
    state, url = org
    block = _block(url, page_size=2, overlap_seconds=0)
    keys = [state.user_create("Contact", {"LastName": f"R{i}"}) for i in range(5)]
    full = block.read_changes(None)
    assert full.full and {r.key for r in full.records} == set(keys) and full.cursor
    assert full.requests == 3  # three pages of two
    state.user_delete("Contact", keys[0])
    state.user_update("Contact", keys[1], {"FirstName": "Later"})
    later = block.read_changes(full.cursor)
    assert not later.full
    # the cursor is the server's clock in whole seconds: records of that second come again
    changed = {r.key: r for r in later.records}
    assert keys[0] in later.deleted and keys[0] not in changed
    assert changed[keys[1]].values["FirstName"] == "Later"
    assert changed[keys[1]].modified_by == state.user_id("Alice")
    assert full.cursor <= later.cursor


def test_block_pickles_without_its_client(org):
    _, url = org
    block = _block(url)
    block.columns()
    copy = pickle.loads(pickle.dumps(block))
    assert copy._http is None
    assert "LastName" in copy.columns()
    block.close()


def test_a_batch_failing_part_way_reports_every_operation(org):
    state, url = org
    block = _block(url, retry_attempts=2)
    key = state.user_create("Contact", {"LastName": "Before"})
    sent = []

    def sleep(seconds):
        sent.append(seconds)

    block.use_retry_hooks(sleep)
    block.columns()
    # the creates go through; the updates that follow meet a lasting outage
    original = block._update_call

    def outage(*args):
        state.faults.set(unavailable=1.0)
        return original(*args)

    block._update_call = outage
    results = block.write(
        [Create(ref="x", values={"LastName": "New"}), Update(key=key, values={"Title": "T"})]
    )
    state.faults.set()
    assert results[0].ok and results[0].key
    assert isinstance(results[1].error, Retriable)
    with pytest.raises(Retriable):  # nothing applied yet: the whole batch is refused
        state.faults.set(unavailable=1.0)
        try:
            block.write([Update(key=key, values={"Title": "U"})])
        finally:
            state.faults.set()


def test_writes_in_flight_answer_in_order_and_renew_an_ended_session_once(org):
    state, url = org
    block = _block(url, batch_size=200)
    assert block.max_writes_in_flight() == 2
    block.columns()
    issued = []
    issue = state.issue_token

    def counted(*args):
        issued.append(args[0])
        return issue(*args)

    state.issue_token = counted
    state.expire_sessions()  # both writes start with the same ended session
    state.latency_ms = 20
    planned = [
        PlannedOp(link_id=c.ref, system="sf", op=c) for c in _creates(600)
    ]  # writes of 200 each, two on their way at a time
    try:
        results = load_changes(
            block, planned, RetryPolicy(), lambda seconds: None, random.Random(5)
        )
    finally:
        state.latency_ms = 0
    assert len(issued) == 1
    assert [r.op for r in results] == [p.op for p in planned]
    assert all(r.ok and r.version for r in results)
    stored = {r.key: r for r in block.read([r.key for r in results])}
    assert [stored[r.key].values["LastName"] for r in results] == [f"N{i}" for i in range(600)]


def test_a_write_keeps_what_it_sent_when_another_write_starts_meanwhile(org):
    state, url = org
    block = _block(url, retry_attempts=2)
    key = state.user_create("Contact", {"LastName": "Before"})
    block.columns()
    original = block._update_call

    def another_write_then_outage(*args):
        # a second write of the same block (another batch in flight) starts and ends here,
        # with nothing to send; then the first write's updates meet a lasting outage
        block.write([Delete(key="not-a-salesforce-id")])
        state.faults.set(unavailable=1.0)
        return original(*args)

    block._update_call = another_write_then_outage
    try:
        results = block.write(
            [Create(ref="x", values={"LastName": "New"}), Update(key=key, values={"Title": "T"})]
        )
    finally:
        state.faults.set()
    # the create was applied: the write reports it rather than raise (a raise would send the
    # whole batch again, the create with it)
    assert results[0].ok and results[0].key
    assert isinstance(results[1].error, Retriable)


def test_a_spent_daily_allocation_stops_the_run_at_once_with_the_usage(org):
    state, url = org
    block = _block(url)
    waits: list[float] = []
    block.use_retry_hooks(waits.append)
    block.columns()
    state.api_limit = state.api_usage  # the org's 24-hour allocation is spent
    with pytest.raises(Fatal) as caught:
        block.read_changes(None)
    message = str(caught.value)
    assert "REQUEST_LIMIT_EXCEEDED" in message
    assert f"api-usage={state.api_usage}/{state.api_limit}" in message
    assert waits == []  # no retries that would spend more calls


def test_a_cursor_past_the_deleted_history_falls_back_to_a_full_read(org, caplog):
    state, url = org
    block = _block(url, overlap_seconds=0)
    keys = [state.user_create("Contact", {"LastName": f"P{i}"}) for i in range(3)]
    cursor = block.read_changes(None).cursor
    state.user_delete("Contact", keys[0])
    state.purge_deleted("Contact")  # the Recycle Bin is emptied before the next run
    with caplog.at_level("WARNING", logger="twoway.salesforce"):
        again = block.read_changes(cursor)
    assert again.full and {r.key for r in again.records} == set(keys[1:])
    assert again.cursor and again.cursor >= cursor  # the cursor moves on
    assert "reading every record" in caplog.text


@pytest.fixture
def clocked():
    """An org on a clock the test moves, an hour behind ours: (state, block, set_time)."""
    start = datetime.now(UTC) - timedelta(hours=1)
    now = [start]
    state = SalesforceState(clock=lambda: now[0])
    state.add_client("sync", SECRET, "Integration User")

    def at(seconds: float) -> None:
        now[0] = start + timedelta(seconds=seconds)

    with BackgroundServer(create_app(state)) as server:
        block = _block(server.url, overlap_seconds=0)
        yield state, block, at
        block.close()


def test_a_deleted_window_past_the_id_limit_is_read_in_halves(clocked):
    state, block, at = clocked
    keys = [state.user_create("Contact", {"LastName": f"W{i}"}) for i in range(3)]
    cursor = block.read_changes(None).cursor
    for minutes, key in zip((1, 10, 20), keys, strict=True):
        at(minutes * 60)
        state.user_delete("Contact", key)
    at(25 * 60)
    state.id_limit = 2
    changes = block.read_changes(cursor)
    assert sorted(changes.deleted) == sorted(keys) and not changes.full


def test_a_change_in_a_long_transaction_is_read_once_it_commits(clocked):
    state, block, at = clocked
    key = state.user_create("Contact", {"LastName": "Long"})
    cursor = block.read_changes(None).cursor
    at(10)
    state.user_update("Contact", key, {"LastName": "Committed late"}, commit_lag=600)
    at(20)
    during = block.read_changes(cursor)
    seen = {r.key: r.values["LastName"] for r in during.records}
    assert seen.get(key, "Long") == "Long"  # the change is not visible yet
    at(700)  # the transaction has ended
    after = block.read_changes(during.cursor)
    assert {r.key: r.values["LastName"] for r in after.records}.get(key) == "Committed late"


@pytest.mark.parametrize("purged", [False, True], ids=["first-read", "after-a-purge"])
def test_a_full_read_keeps_its_cursor_below_a_transaction_still_open(clocked, purged):
    """A full read (the first one, or the one after getDeleted lost its history) asks for
    getUpdated's latestDateCovered first: a change stamped before the read began but
    committed after it is read by the next run, not passed over by the cursor."""
    state, block, at = clocked
    key = state.user_create("Contact", {"LastName": "Long"})
    other = state.user_create("Contact", {"LastName": "Gone"})
    cursor = block.read_changes(None).cursor if purged else None
    at(10)
    state.user_update("Contact", key, {"LastName": "Committed late"}, commit_lag=600)
    if purged:
        state.user_delete("Contact", other)
        state.purge_deleted("Contact")
    at(300)
    full = block.read_changes(cursor)
    assert full.full
    assert {r.key: r.values["LastName"] for r in full.records}[key] == "Long"
    at(700)  # the transaction has ended, long after the full read's start
    after = block.read_changes(full.cursor)
    assert {r.key: r.values["LastName"] for r in after.records}.get(key) == "Committed late"


def test_a_full_read_of_an_org_whose_clock_is_far_from_ours(org_far_ahead):
    """getUpdated refuses a window older than its 30 days: the window our clock gives is
    asked for again by the org's clock, and the read goes on."""
    state, block = org_far_ahead
    key = state.user_create("Contact", {"LastName": "Ahead"})
    changes = block.read_changes(None)
    assert [r.key for r in changes.records] == [key]
    assert parse_timestamp(changes.cursor) > datetime.now(UTC) + timedelta(days=300)


@pytest.fixture
def org_far_ahead():
    """An org whose clock runs a year ahead of ours: (state, block)."""
    state = SalesforceState(clock=lambda: datetime.now(UTC) + timedelta(days=365))
    state.add_client("sync", SECRET, "Integration User")
    with BackgroundServer(create_app(state)) as server:
        block = _block(server.url, overlap_seconds=0)
        yield state, block
        block.close()


# -- shared stamps, system-only bumps, guarded updates ---------------------------------------


@pytest.fixture
def frozen():
    """An org whose clock stands on a whole second until the test moves it:
    (state, url, set_time)."""
    start = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    now = [start]
    state = SalesforceState(clock=lambda: now[0])
    state.add_client("sync", SECRET, "Integration User")

    def at(seconds: float) -> None:
        now[0] = start + timedelta(seconds=seconds)

    with BackgroundServer(create_app(state)) as server:
        yield state, server.url, at


def test_records_sharing_one_stamp_across_the_cursor_are_all_read(frozen):
    """300 records stamped in one millisecond are read over two pages; 250 more written in
    that same millisecond after the read began (the cursor's own instant) come in the next
    read: a tie at the cursor is read again, never skipped."""
    state, url, at = frozen
    block = _block(url, page_size=200, overlap_seconds=0)
    first = [
        state.user_create("Contact", {"LastName": f"Tie{i}"}, user="Loader") for i in range(300)
    ]
    pages = list(block.read_pages(None))
    assert len(pages) == 2 and sum(len(p.records) for p in pages) == 300
    cursor = pages[-1].cursor
    stamps = {r["SystemModstamp"] for r in state.records("Contact")}
    assert len(stamps) == 1 and parse_timestamp(stamps.pop()) == parse_timestamp(cursor)
    later = [
        state.user_create("Contact", {"LastName": f"Late{i}"}, user="Loader") for i in range(250)
    ]
    again = list(block.read_pages(cursor))
    read = {r.key for p in again for r in p.records}
    assert set(later) <= read and set(first) <= read  # the tie is read again, not missed
    at(1)
    assert {r.key for r in block.read_changes(again[-1].cursor).records} == set(first + later)
    at(2)
    assert block.read_changes(block.read_changes(None).cursor).records == []


def test_a_system_bump_is_no_edit(frozen):
    """A bump moves the version (SystemModstamp) but not the edit time a conflict compares,
    and a version check does not take it for an edit."""
    state, url, at = frozen
    key = state.user_create("Contact", {"LastName": "Rolled"})
    for guarded in (True, False):
        edited, editor = (
            state.get("Contact", key)[f] for f in ("LastModifiedDate", "LastModifiedById")
        )
        block = _block(url, guarded_updates=guarded)
        (record,) = block.read([key])
        at(10 if guarded else 20)
        bumped = state.system_bump("Contact", [key])
        (after,) = block.read([key])
        assert parse_timestamp(after.version) == bumped > parse_timestamp(record.version)
        assert after.modified_at == parse_timestamp(edited)  # the last edit, not the bump
        assert after.modified_by == editor  # Alice, then the sync's own write
        (result,) = block.write([Update(key=key, values={"Title": "T"}, version=record.version)])
        assert result.ok, result.error


def test_guarded_updates_go_25_to_a_composite_call(org):
    state, url = org
    keys = [state.user_create("Contact", {"LastName": f"G{i}"}) for i in range(60)]
    for guarded, calls in ((True, 1 + 3 + 1), (False, 1 + 1 + 1)):
        block = _block(url, guarded_updates=guarded)
        versions = {r.key: r.version for r in block.read(keys)}
        block.columns()  # authenticated first
        before = state.api_usage
        ops = [Update(key=k, values={"Title": f"{guarded}"}, version=versions[k]) for k in keys]
        results = block.write(ops)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        # a version check, the writes (3 composite calls of 25 or 1 collection), the versions
        assert state.api_usage - before == calls
        assert {r["Title"] for r in state.records("Contact")} == {f"{guarded}"}
        assert {r.key: r.version for r in results} == {r.key: r.version for r in block.read(keys)}


def test_an_edit_between_the_check_and_the_write_is_refused_not_overwritten(frozen):
    """A person's edit lands right after the version check's retrieve: a guarded update is
    refused (412, PreconditionFailed) and the edit stays; through sObject Collections,
    which take no precondition, it would be overwritten."""
    state, url, at = frozen
    key = state.user_create("Contact", {"LastName": "Race", "Title": "first"})
    other = state.user_create("Contact", {"LastName": "Calm"})
    block = _block(url)
    versions = {r.key: r.version for r in block.read([key, other])}
    at(5)
    state.edit_after_read("Contact", key, {"Title": "person"}, user="Bob")
    raced, calm = block.write(
        [
            Update(key=key, values={"Title": "sync"}, version=versions[key]),
            Update(key=other, values={"Title": "sync"}, version=versions[other]),
        ]
    )
    assert isinstance(raced.error, PreconditionFailed) and raced.error.status == 412
    assert calm.ok
    assert state.get("Contact", key)["Title"] == "person"
    assert state.get("Contact", key)["LastModifiedById"] == state.user_id("Bob")
    # the same interleaving on the collections path: the window the guard closes
    unguarded = _block(url, guarded_updates=False)
    (fresh,) = unguarded.read([key])
    at(10)
    state.edit_after_read("Contact", key, {"Title": "person again"}, user="Bob")
    (lost,) = unguarded.write([Update(key=key, values={"Title": "sync"}, version=fresh.version)])
    assert lost.ok and state.get("Contact", key)["Title"] == "sync"


def test_a_guarded_update_of_a_deleted_or_locked_record(org):
    state, url = org
    block = _block(url, retry_attempts=2)
    gone, stuck = (state.user_create("Contact", {"LastName": n}) for n in ("Gone", "Stuck"))
    versions = {r.key: r.version for r in block.read([gone, stuck])}
    block.columns()
    state.faults.set(lock=1.0)
    (locked,) = block.write([Update(key=stuck, values={"Title": "T"}, version=versions[stuck])])
    state.faults.set()
    assert isinstance(locked.error, Retriable) and "UNABLE_TO_LOCK_ROW" in str(locked.error)
    state.edit_after_read("Contact", gone, None, user="Bob")  # deleted after the check
    (result,) = block.write([Update(key=gone, values={"Title": "T"}, version=versions[gone])])
    assert isinstance(result.error, Skippable) and "does not exist" in str(result.error)
