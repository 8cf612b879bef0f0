"""A read arrives a page at a time: later pages win, and the extract step stages each page
as it arrives, never holding the whole read (tasks/extract.py, twoway/contract.py ``fold_pages``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from tasks.extract import canonicalise, extract_changes
from twoway import staging
from twoway.contract import ChangeSet, Endpoint, RawRecord, fold_pages, read_ahead
from twoway.definition import load_definition
from twoway.errors import Retriable
from twoway.staging import StagedRead
from twoway.state import Member

DEFINITION = """\
name: paged
state: sqlite:///state.db
systems:
  a: {kind: sql, url: "sqlite:///a.db", table: t, key: id, modified_at: m, modified_by: b,
      integration_account: svc}
  b: {kind: sql, url: "sqlite:///b.db", table: t, key: id, modified_at: m, modified_by: b,
      integration_account: svc}
fields:
  email: {a: email, b: email}
"""


def extract(definition, system, endpoint, cursor, ids):
    """A read staged in memory: what it came to, and everything it staged."""
    staged = StagedRead(":memory:")
    summary = extract_changes(definition, system, endpoint, cursor, ids, staged)
    return summary, staged.filtered(system)


def record(key: str, email: str, by: str = "person") -> RawRecord:
    return RawRecord(key=key, values={"email": email}, modified_by=by)


def test_a_later_page_replaces_what_an_earlier_one_said_of_a_key():
    pages = [
        ChangeSet([record("1", "old"), record("2", "x"), record("3", "y")], cursor="c1"),
        ChangeSet([record("1", "new"), record("4", "z")], deleted=["2"], cursor="c2"),
        ChangeSet([record("2", "back")], deleted=["3"], cursor="c3", requests=2),
    ]
    pages[0].requests = pages[1].requests = 1
    folded = fold_pages(pages)
    assert {r.key: r.values["email"] for r in folded.records} == {"1": "new", "4": "z", "2": "back"}
    assert folded.deleted == ["3"]
    assert (folded.cursor, folded.requests) == ("c3", 4)


def test_records_of_one_page_that_share_a_key_stay_side_by_side():
    folded = fold_pages([ChangeSet([record("1", "a"), record("1", "b")], cursor="c")])
    assert [r.values["email"] for r in folded.records] == ["a", "b"]


class Paged(Endpoint):
    """An endpoint serving fixed pages, checking that each page is let go of before the
    next one is asked for."""

    integration_account = "svc"

    def __init__(self, pages: list[ChangeSet], keys: set[str] | None = None):
        self.pages, self.keys, self.held, self.listed = pages, keys, [], 0

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        for i, page in enumerate(self.pages):
            self.held.append(sum(len(p.records) for p in self.pages[:i]))
            yield page

    def read(self, keys: Sequence[str]) -> list[RawRecord]:
        return []

    def list_keys(self) -> set[str] | None:
        self.listed += 1
        return self.keys

    def count_keys(self) -> int | None:
        return None if self.keys is None else len(self.keys)

    def columns(self) -> set[str]:
        return {"email"}

    def write(self, ops):
        raise AssertionError("a read writes nothing")


def stored(definition, system: str, *records: RawRecord) -> dict:
    """ID-map rows as if each record had been seen as given."""
    return {
        r.key: Member(
            system,
            r.key,
            f"L{r.key}",
            None,
            canonicalise(definition, system, r).hash,
            None,
            None,
        )
        for r in records
    }


class Ids:
    """One system's part of the ID map, in memory; records what the extract asks of it."""

    def __init__(self, members: dict[str, Member]):
        self.rows, self.asked = members, []

    def members(self, keys):
        self.asked.append(sorted(keys))
        return {k: self.rows[k] for k in keys if k in self.rows}

    def live_keys(self):
        return {k for k, m in self.rows.items() if m.deleted_at is None}

    def live_count(self):
        return len(self.live_keys())


def test_the_extract_keeps_only_changes_and_asks_the_store_page_by_page(tmp_path):
    path = tmp_path / "paged.sync.yaml"
    path.write_text(DEFINITION)
    definition = load_definition(path)
    members = stored(
        definition,
        "a",
        record("1", "same"),
        record("2", "before"),
        record("3", "ours", "svc"),
        record("4", "before"),
        record("9", "gone"),
    )
    ids = Ids(members)
    endpoint = Paged(
        [
            ChangeSet([record("1", "same"), record("2", "edited"), record("3", "ours", "svc")]),
            # "2" edited back to what the state holds while the read paged; "4" now changed
            ChangeSet([record("2", "before"), record("4", "after"), record("5", "new")]),
            ChangeSet(
                [record("", "no key"), record("6", "x"), record("6", "y")], cursor="c", full=True
            ),
        ]
    )
    summary, result = extract(definition, "a", endpoint, None, ids)

    assert endpoint.held == [0, 0, 0]  # each page's records were let go of before the next
    assert ids.asked[:3] == [["1", "2", "3"], ["2", "4", "5"], ["", "6", "6"]]
    assert sorted(r.key for r in result.changed) == ["4", "5"]
    assert result.deleted == {"9"} and set(result.members) == {"4", "9"}
    assert (summary.extracted, summary.echo_skipped, summary.unchanged) == (7, 1, 2)
    assert sorted(p["external_id"] for p in result.parked) == ["", "6", "6"]
    assert (summary.cursor, summary.full) == ("c", True)


def incremental(tmp_path, table: set[str], read: list[RawRecord]):
    """An incremental read of ``read`` from a table now holding ``table``, with the ID map
    holding records 1 and 2 as live."""
    path = tmp_path / "paged.sync.yaml"
    path.write_text(DEFINITION)
    definition = load_definition(path)
    ids = Ids(stored(definition, "a", record("1", "x"), record("2", "y")))
    endpoint = Paged([ChangeSet(read, cursor="c")], keys=table)
    return endpoint, extract(definition, "a", endpoint, "c0", ids)[1]


def test_an_incremental_read_lists_no_keys_when_the_count_is_what_the_id_map_expects(tmp_path):
    endpoint, result = incremental(
        tmp_path, {"1", "2", "3"}, [record("1", "new"), record("3", "z")]
    )
    assert sorted(r.key for r in result.changed) == ["1", "3"] and result.deleted == set()
    assert endpoint.listed == 0


def test_a_hard_delete_is_found_in_the_key_list_when_the_count_is_off(tmp_path):
    endpoint, result = incremental(tmp_path, {"1"}, [record("1", "changed")])
    assert [r.key for r in result.changed] == ["1"]
    assert result.deleted == {"2"} and set(result.members) == {"1", "2"}
    assert endpoint.listed == 1


def test_a_hard_delete_offset_by_a_new_record_is_still_found(tmp_path):
    endpoint, result = incremental(tmp_path, {"1", "3"}, [record("3", "new")])
    assert result.deleted == {"2"} and endpoint.listed == 1


def test_the_next_page_is_fetched_while_the_caller_works_on_one():
    """read_ahead: the second page is asked for before the caller is done with the first,
    on another thread that sees the caller's context."""
    import contextvars
    import threading

    marker = contextvars.ContextVar("marker", default="unset")
    marker.set("the run's")
    asked = threading.Event()
    seen: list[tuple[str, str]] = []

    def pages() -> Iterator[int]:
        for n in range(3):
            seen.append((threading.current_thread().name, marker.get()))
            if n == 1:
                asked.set()
            yield n

    got = []
    for page in read_ahead(pages()):
        if page == 0:
            assert asked.wait(5), "page 2 was not asked for while page 1 was worked on"
        got.append(page)
    assert got == [0, 1, 2]
    assert all(
        name.startswith("twoway-read-ahead") and value == "the run's" for name, value in seen
    )


def test_an_error_fetching_a_page_reaches_the_caller_after_the_pages_before_it():
    def pages() -> Iterator[int]:
        yield 1
        raise Retriable("the service went away")

    got = []
    with pytest.raises(Retriable, match="went away"):
        for page in read_ahead(pages()):
            got.append(page)
    assert got == [1]


def test_a_read_left_early_closes_its_pages_once_the_page_on_its_way_arrived():
    closed: list[bool] = []
    fetched: list[int] = []

    def pages() -> Iterator[int]:
        try:
            for n in range(10):
                fetched.append(n)
                yield n
        finally:
            closed.append(True)

    for page in read_ahead(pages()):
        if page == 1:
            break
    assert closed == [True]
    assert fetched == [0, 1, 2]  # one page ahead, never more


def test_a_chunk_reads_back_only_the_rows_it_works_on_through_their_own_index():
    """Echoes and unchanged records stay out of the bucket index: counting the buckets and
    reading a chunk back visit the rows a chunk works on, not every row the read staged."""
    staged = StagedRead(":memory:")
    member = Member("a", "u1", "link-1", None, "h", "v2", None)
    staged.put(
        [(f"e{i}", staging.ECHO, i % 4, 0, 0, None) for i in range(40)]
        + [(f"c{i}", staging.CHANGED, i % 4, 0, 1, (record(f"c{i}", "x"), None)) for i in range(8)]
        + [("d1", staging.DELETED, 1, 0, 0, None), ("u1", staging.UNCHANGED, 2, 0, 0, member)]
    )
    assert staged.bucket_sizes() == {0: 2, 1: 3, 2: 3, 3: 2}
    chunk = staged.filtered("a", [1, 2])
    assert sorted(r.key for r in chunk.changed) == ["c1", "c2", "c5", "c6"]
    assert chunk.deleted == {"d1"} and set(chunk.refreshed) == {"u1"}
    for query in (
        f"SELECT bucket, count(*) FROM staged WHERE {staging._WORK} GROUP BY bucket",
        f"SELECT key FROM staged WHERE {staging._WORK} AND bucket IN (1, 2)",
    ):
        plan = " ".join(row[-1] for row in staged.db.execute("EXPLAIN QUERY PLAN " + query))
        assert "ix_work" in plan, plan
