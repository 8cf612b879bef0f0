"""The lazy benchmark collection serves what the REST simulator serves, byte for byte.

``python -m pytest bench/test_collection.py -q``: the same operations on a
:class:`LazyCollection` and on a :class:`RestState` loaded with its records, through the
simulator's HTTP app (pages by ``$skiptoken``, ``modified_since``, ``$batch`` edits,
deletes, creates, ``If-Match``), must give the same answers.
"""

from __future__ import annotations

import itertools
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collection import BLOCK, LazyCollection, records  # noqa: E402

from twoway.simulators.rest import RestState, create_app  # noqa: E402

START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


class Clock:
    """A virtual clock: every reading is 1 ms after the previous one."""

    def __init__(self, ticks_before: int = 0) -> None:
        self.now = START + timedelta(hours=3) - timedelta(milliseconds=ticks_before)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def pair(n: int, read_ahead: bool = True) -> tuple[TestClient, TestClient, LazyCollection]:
    """Clients of the lazy collection and of the simulator loaded with the same records."""
    lazy = LazyCollection(n, start=START, clock=Clock(), read_ahead=read_ahead)
    full = RestState(clock=Clock(ticks_before=1))  # its load() reads the clock once
    full.load(records(n, start=START))
    options = {"require_auth": False, "default_user": "svc-sync", "max_batch": 20}
    options["tokens"] = {"token-alice": "alice"}
    return (
        TestClient(create_app(lazy, **options)),  # type: ignore[arg-type]
        TestClient(create_app(full, **options)),
        lazy,
    )


def pages(client: TestClient, url: str) -> list[bytes]:
    """Every page's body, following ``@odata.nextLink``."""
    out = []
    while url:
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        out.append(answer.content)
        url = answer.json().get("@odata.nextLink")
    return out


def same(a: TestClient, b: TestClient, url: str) -> list[bytes]:
    got, want = pages(a, url), pages(b, url)
    assert got == want
    return got


def batch(client: TestClient, requests: list[dict], user: str = "token-alice") -> bytes:
    answer = client.post(
        "/$batch", json={"requests": requests}, headers={"Authorization": f"Bearer {user}"}
    )
    assert answer.status_code == 200
    return answer.content


def test_records_are_a_function_of_the_index() -> None:
    first = list(records(2_500, start=START))
    again = list(records(2_500, start=START))
    assert first == again
    assert [r["id"] for r in first] == [f"r{i:08d}" for i in range(2_500)]
    stamps = [r["modified_at"] for r in first]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[0] == "2026-01-01T10:00:00.000000Z"
    assert len({r["f05"] for r in first}) > 2_000  # the values vary from record to record
    kinds = {type(v) for r in first for v in r.values()}
    assert kinds == {str, int, float, bool, type(None)}
    assert list(records(10, seed=7, start=START)) != first[:10]


@pytest.mark.parametrize("read_ahead", [True, False])
def test_full_read_pages_like_the_simulator(read_ahead: bool) -> None:
    lazy, full, _ = pair(2_345, read_ahead)
    got = same(lazy, full, "/items?$top=1000")
    assert len(got) == 3
    assert sum(len(json.loads(p)["value"]) for p in got) == 2_345
    same(lazy, full, "/items?$top=7")  # pages that start inside blocks


def test_since_filter_edits_deletes_and_creates_like_the_simulator() -> None:
    lazy, full, collection = pair(3 * BLOCK + 17)
    cut = list(records(3 * BLOCK + 17, start=START))[1_500]["modified_at"]
    same(lazy, full, f"/items?$top=333&modified_since={cut}")
    ids = [f"r{i:08d}" for i in (0, 5, 999, 1_000, 1_001, 2_500, 3_016)]
    edits = [
        {"id": str(j), "method": "PATCH", "url": f"/items/{key}", "body": {"f03": "x", "f05": j}}
        for j, key in enumerate(ids)
    ]
    assert batch(lazy, edits) == batch(full, edits)
    again = [  # the second write of a record replaces its first in the changes
        {"id": "a", "method": "PATCH", "url": f"/items/{ids[1]}", "body": {"f13": "y"}},
        {"id": "b", "method": "DELETE", "url": f"/items/{ids[2]}"},
        {"id": "c", "method": "DELETE", "url": "/items/r00000007"},
        {"id": "d", "method": "PATCH", "url": "/items/r00000008", "body": {"f01": None}},
        {"id": "e", "method": "GET", "url": "/items/r00000009"},
        {"id": "f", "method": "GET", "url": "/items/r00000007"},
        {"id": "g", "method": "PATCH", "url": "/items/r99999999", "body": {"f01": "z"}},
    ]
    assert batch(lazy, again) == batch(full, again)
    stale = [
        {
            "id": "s",
            "method": "PATCH",
            "url": f"/items/{ids[0]}",
            "headers": {"If-Match": '"1"'},
            "body": {"f01": "late"},
        }
    ]
    answer = batch(lazy, stale)
    assert b'"status":412' in answer and answer == batch(full, stale)
    # creates get random ids, so compare them by what else they hold
    for client in (lazy, full):
        answer = client.post("/items", json={"f01": "new one"}, headers={"Idempotency-Key": "k"})
        assert answer.status_code == 201
    assert collection.overlay_size() == len(ids) + 2 + 1
    assert len(collection) == 3 * BLOCK + 17 - 2 + 1
    for url in (
        "/items?$top=1000",
        "/items?$top=50",
        f"/items?$top=100&modified_since={cut}",
        "/items?$top=1000&modified_since=2026-01-01T13:00:00Z",  # the writes only
    ):
        got, want = pages(lazy, url), pages(full, url)
        assert len(got) == len(want)
        for page_got, page_want in zip(got, want, strict=True):
            a, b = json.loads(page_got)["value"], json.loads(page_want)["value"]
            new_a = [r for r in a if not r["id"].startswith("r")]
            new_b = [r for r in b if not r["id"].startswith("r")]
            assert [r for r in a if r not in new_a] == [r for r in b if r not in new_b]
            strip = [{k: v for k, v in r.items() if k != "id"} for r in new_a]
            assert strip == [{k: v for k, v in r.items() if k != "id"} for r in new_b]
    tombstones = json.loads(pages(lazy, "/items?$top=1000&modified_since=2026-01-01T13:00:00Z")[0])
    removed = [r["id"] for r in tombstones["value"] if "@removed" in r]
    assert removed == [ids[2], "r00000007"]
    for key in ids + ["r00000007", "r00000009"]:
        a, b = lazy.get(f"/items/{key}"), full.get(f"/items/{key}")
        assert (a.status_code, a.content, a.headers.get("etag")) == (
            b.status_code,
            b.content,
            b.headers.get("etag"),
        )


def test_many_rewrites_of_the_same_records_compact_like_the_simulator() -> None:
    lazy, full, _ = pair(1_200)
    for round_no, chunk in itertools.product(range(3), range(0, 1_200, 20)):
        requests = [
            {"id": str(k), "method": "PATCH", "url": f"/items/r{k:08d}", "body": {"f05": round_no}}
            for k in range(chunk, chunk + 20)
        ]
        assert batch(lazy, requests) == batch(full, requests)
    same(lazy, full, "/items?$top=1000")
    same(lazy, full, "/items?$top=256&modified_since=2026-01-01T13:00:00Z")


def test_start_up_does_no_work_for_any_size() -> None:
    collection = LazyCollection(10_000_000, start=START)
    assert collection.built == 0
    assert len(collection) == 10_000_000
    raws, last = collection.page(None, None, 1_000)
    assert len(raws) == 1_000 and last == (json.loads(raws[-1])["modified_at"], "r00000999")
    raws, _ = collection.page(None, (json.loads(raws[-1])["modified_at"], "r00000999"), 1)
    assert json.loads(raws[0])["id"] == "r00001000"
    tail, last = collection.page("2026-01-01T10:59:59.999000Z", None, 1_000)
    assert [json.loads(r)["id"] for r in tail][-1] == "r09999999" and last is None
    collection.close()
