"""A read over HTTP holds one page at a time: what each page's answer leaves behind is let go
of as the read goes, also while the run pauses Python's cyclic collector."""

from __future__ import annotations

import gc

import httpx
from pydantic import SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.rest import RestCollection
from tasks.extract import extract_changes
from twoway.definition import parse_definition
from twoway.simulators.rest import RestState, create_app
from twoway.simulators.server import BackgroundServer
from twoway.staging import StagedRead
from twoway.state import StateStore

PAGES = 30


def test_a_paged_read_does_not_keep_the_answers_of_its_pages(tmp_path):
    state = RestState()
    for i in range(PAGES * 2):
        state.user_create({"email": f"p{i}@example.com"})
    definition = parse_definition(
        {
            "name": "pages",
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "systems": {
                "api": {"kind": "rest", "base_url": "http://unused", "key": "id"},
                "db": {"kind": "sql", "url": f"sqlite:///{tmp_path / 'db.db'}", "table": "t"},
            },
            "fields": {"email": {"api": "email", "db": "email"}},
        },
        tmp_path / "pages.sync.yaml",
    )
    store = StateStore(definition.state or "")
    store.migrate()
    with BackgroundServer(create_app(state, tokens={"t": "sync"})) as server:
        block = RestCollection(
            base_url=server.url,
            page_size_param="$top",
            page_size=2,
            columns_to_sync=["email"],
            credentials=IntegrationAccountCredentials(token=SecretStr("t")),
        )
        gc.collect()
        gc.disable()  # as a run does
        try:
            summary = extract_changes(
                definition,
                "api",
                block,
                None,
                store.system_ids("pages", "api"),
                StagedRead(":memory:"),
            )
            answers = sum(_answer_of(o, server.url) for o in gc.get_objects())
        finally:
            gc.enable()
            block.close()
            store.engine.dispose()
    assert summary.extracted == PAGES * 2
    # the page on its way when the read ended, and the one before it, at most
    assert answers <= 2, f"{answers} HTTP answers of {PAGES} pages still held"


def _answer_of(obj: object, base_url: str) -> bool:
    """Whether ``obj`` is an HTTP answer of the server at ``base_url``: the worker process
    also holds the answers of other clients (a Prefect test server's log and event
    clients, on threads of their own, talk to it while the read runs)."""
    if not isinstance(obj, httpx.Response):
        return False
    try:
        return str(obj.request.url).startswith(base_url)
    except RuntimeError:  # an answer built without a request
        return False


def test_a_staged_read_sorts_on_disk(tmp_path):
    """The bucket index of a staged read is built when its chunks are planned: sorted in
    memory, the index of a 10M-record read left about 450 MiB behind it, so its sorts go
    to temporary files (and its page cache stays SQLite's small default)."""
    staged = StagedRead(tmp_path / "read.sqlite")
    try:
        staged.put([(f"k{i}", 0, i % 7, 0, 1, {"i": i}) for i in range(100)])
        assert staged.bucket_sizes() == {b: len(range(b, 100, 7)) for b in range(7)}
        assert staged.db.execute("PRAGMA temp_store").fetchone()[0] == 1  # FILE
    finally:
        staged.close()
