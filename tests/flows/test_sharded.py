"""Sharded loads: the split by link-id hash, the order of results, the shared API limit, and
a real sync through the sharded flow on a local Dask cluster of two worker processes,
compared with the same sync through the unsharded flow."""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa

from tasks.shards import (
    ApiQuota,
    ShardedLoad,
    ensure_limit,
    limit_name,
    merge,
    shard_count,
    shard_of,
    split,
)
from tests.flows.runs import task_runs
from tests.syncrig import sync_rig
from twoway.contract import Create, Endpoint, Update, WriteResult
from twoway.errors import Fatal
from twoway.records import PlannedOp
from twoway.retry import RetryPolicy
from twoway.state import StateStore


def _planned(n: int, seed: int = 7, system: str = "s1") -> list[PlannedOp]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        link = uuid.UUID(int=rng.getrandbits(128)).hex
        op = Create(ref=link, values={"n": i}) if i % 3 else Update(key=str(i), values={"n": i})
        out.append(PlannedOp(link_id=link, system=system, op=op, fields={"n": i}))
    return out


def _ident(op) -> str:
    return op.ref if isinstance(op, Create) else f"u{op.key}"


class _FakeEndpoint(Endpoint):
    """Answers every write with a result naming the op; records what it was given."""

    integration_account = "svc-sync"
    opened: list[_FakeEndpoint] = []
    delays: dict[int, float] = {}  # seconds each write takes, by order of opening (1-based)
    refuse: frozenset = frozenset()  # batches holding any of these ops are refused

    def __init__(self) -> None:
        self.written: list = []
        self.closed = False
        self.intervals: list[tuple[float, float]] = []
        self.batches: list[int] = []
        self.refused = 0
        _FakeEndpoint.opened.append(self)
        self.number = len(_FakeEndpoint.opened)

    def write(self, ops):
        if self.refuse.intersection(map(_ident, ops)):
            self.refused += 1
            raise Fatal("the system refused the batch", system="s1", status=403)
        start = time.monotonic()
        link = _ident(ops[0])
        time.sleep(self.delays.get(self.number, 0.0))
        self.written.extend(ops)
        self.batches.append(len(ops))
        self.intervals.append((start, time.monotonic()))
        return [WriteResult(op=op, key=f"k-{link}-{i}") for i, op in enumerate(ops)]

    def columns(self):
        return set()

    def read_pages(self, cursor):
        raise NotImplementedError

    def read(self, keys):
        return []

    def list_keys(self):
        return set()

    def close(self):
        self.closed = True


@pytest.fixture
def fake_endpoints(monkeypatch):
    _FakeEndpoint.opened = []
    _FakeEndpoint.delays = {}
    _FakeEndpoint.refuse = frozenset()
    monkeypatch.setattr("tasks.shards.open_endpoint", lambda definition, system: _FakeEndpoint())
    return _FakeEndpoint


# -- the split ---------------------------------------------------------------------------


def test_shard_assignment_is_stable_and_covers_every_write_once():
    planned = _planned(5000)
    groups = split(planned, 4)
    positions = [i for g in groups for i in g]
    assert sorted(positions) == list(range(5000))  # every write in exactly one shard
    for n, group in enumerate(groups):
        assert group == sorted(group)  # plan order kept inside a shard
        assert all(shard_of(planned[i].link_id, 4) == n for i in group)
        assert 1000 < len(group) < 1500  # a hash spreads links evenly enough
    assert split(planned, 4) == groups
    # fixed answers, the same in every process, run and release (Python's hash is salted)
    assert {
        link: shard_of(link, 4)
        for link in (
            "cd613e30d8f16adf91b7584a2265b1f5",
            "1e2feb89414c343c1027c4d1c386bbc4",
            "35bf992dc9e9c616612e7696a6cecc1b",
            "0f3c2a9b8e7d4c6a9b1e2d3f4a5b6c7d",
            "a",
        )
    } == {
        "cd613e30d8f16adf91b7584a2265b1f5": 1,
        "1e2feb89414c343c1027c4d1c386bbc4": 0,
        "35bf992dc9e9c616612e7696a6cecc1b": 2,
        "0f3c2a9b8e7d4c6a9b1e2d3f4a5b6c7d": 1,
        "a": 3,
    }


def test_shard_count_follows_the_size_of_the_load():
    assert shard_count(10, 8) == 1
    assert shard_count(250, 8) == 3
    assert shard_count(100_000, 8) == 8
    with pytest.raises(ValueError):
        shard_of("x", 0)


def test_merge_refuses_a_shard_with_the_wrong_number_of_results():
    planned = _planned(10)
    groups = split(planned, 2)
    results = [[WriteResult(op=planned[i].op) for i in g] for g in groups]
    assert [r.op for r in merge(groups, results, 10)] == [p.op for p in planned]
    results[0] = results[0][:-1]
    with pytest.raises(RuntimeError, match="returned"):
        merge(groups, results, 10)


def _load(load: ShardedLoad, planned: list[PlannedOp], seed: int, batch: int, progress=None):
    """The load step of system ``s1`` through ``load`` (the arguments the engine passes)."""
    return load(
        None,
        planned,
        RetryPolicy(),
        time.sleep,
        random.Random(seed),
        progress,
        batch,
    )


def _load_in_a_flow(definition, planned: list[PlannedOp], seed: int, batch: int, **sharding):
    """The sharded load in a flow of four threads, four shards; the flow run's final state."""
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def load_in_shards() -> list[WriteResult]:
        return _load(ShardedLoad(definition, shards=4, **sharding), planned, seed, batch)

    return load_in_shards(return_state=True)


def test_sharded_load_returns_results_in_plan_order(tmp_path, fake_endpoints):
    with sync_rig(tmp_path) as rig:
        definition = rig.definition
    planned = _planned(1000)
    done: list[int] = []
    steps = ShardedLoad(definition, shards=4, prefect=False)
    results = _load(steps, planned, 1, 64, done.append)
    assert [r.op for r in results] == [p.op for p in planned]
    assert len(fake_endpoints.opened) == 4 and all(e.closed for e in fake_endpoints.opened)
    for n, endpoint in enumerate(fake_endpoints.opened):
        assert endpoint.written == [p.op for p in planned if shard_of(p.link_id, 4) == n]
        assert max(endpoint.batches) == 64 and sum(endpoint.batches) == len(endpoint.written)
    assert steps.sizes["s1"] == [len(g) for g in split(planned, 4)]
    assert done[-1] == 1000


# -- against a real Prefect API -----------------------------------------------------------


def _read_limit(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def _acquired_events(limit_id, expected: int) -> list:
    """Every ``prefect.concurrency-limit.acquired`` event of a limit, once ``expected`` have
    reached the server (events arrive shortly after the slots were taken)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                EventFilter(
                    event=EventNameFilter(name=["prefect.concurrency-limit.acquired"]),
                    resource=EventResourceFilter(id=[f"prefect.concurrency-limit.{limit_id}"]),
                ),
                limit=50,
            )
            if page.total >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        events = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            events.extend(page.events)
    return events


def _holders(events: list) -> set[str]:
    """Names of the task runs that took the slots of these events."""
    return {
        r["prefect.resource.name"]
        for e in events
        for r in e.related
        if r["prefect.resource.role"] == "task-run"
    }


@pytest.mark.usefixtures("prefect_api")
def test_a_missing_limit_is_created_and_an_existing_one_left_as_the_operator_set_it():
    name = f"twoway-t{uuid.uuid4().hex[:8]}-crm"
    assert ensure_limit(name, ApiQuota(slots=3)) is True
    assert ensure_limit(name, ApiQuota(slots=9, per_second=5)) is False
    limit = _read_limit(name)
    assert (limit.limit, limit.slot_decay_per_second, limit.active) == (3, 0.0, True)
    rate = f"{name}-rate"
    assert ensure_limit(rate, ApiQuota(slots=10, per_second=2.5)) is True
    assert (_read_limit(rate).limit, _read_limit(rate).slot_decay_per_second) == (10, 2.5)
    with pytest.raises(ValueError):
        ApiQuota(slots=0)


@pytest.mark.usefixtures("prefect_api")
def test_shards_take_the_shared_limit_and_never_exceed_it(tmp_path, fake_endpoints):
    """Four shards in four threads, a limit of one slot: no two batches overlap, whichever
    shard writes first; the results still come back in plan order."""

    with sync_rig(tmp_path) as rig:
        definition = rig.definition
    planned = _planned(400)
    fake_endpoints.delays = {1: 0.05, 2: 0.03, 3: 0.01, 4: 0.0}

    results = _load_in_a_flow(definition, planned, 2, 100, quota=ApiQuota(slots=1)).result()
    assert [r.op for r in results] == [p.op for p in planned]
    intervals = sorted(i for e in fake_endpoints.opened for i in e.intervals)
    assert len(intervals) == sum(math.ceil(len(g) / 100) for g in split(planned, 4))
    for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
        assert start >= end  # one slot: one batch in flight at a time, across all shards
    limit = _read_limit(limit_name(definition.name, "s1"))
    assert limit.limit == 1 and limit.active_slots == 0
    events = _acquired_events(limit.id, len(intervals))
    assert len(events) == len(intervals)  # one slot per write batch
    assert _holders(events) == {f"load s1 shard {i}" for i in range(4)}


@pytest.mark.usefixtures("prefect_api")
def test_with_a_rate_the_shards_share_a_rate_limit(tmp_path, fake_endpoints):
    """Burst 2, then 5 batches a second shared by four shards: 6 batches need at least
    (6 - 2) / 5 = 0.8 s, however many shards ask at once."""

    with sync_rig(tmp_path) as rig:
        definition = rig.definition
    planned = _planned(400)

    quota = ApiQuota(slots=2, per_second=5)
    results = _load_in_a_flow(definition, planned, 4, 100, quota=quota).result()
    assert [r.op for r in results] == [p.op for p in planned]
    starts = sorted(start for e in fake_endpoints.opened for start, _ in e.intervals)
    assert len(starts) == sum(math.ceil(len(g) / 100) for g in split(planned, 4)) == 6
    assert starts[-1] - starts[0] >= (6 - 2) / 5 - 0.05
    limit = _read_limit(limit_name(definition.name, "s1"))
    assert (limit.limit, limit.slot_decay_per_second) == (2, 5.0)
    assert len(_acquired_events(limit.id, 6)) == 6


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_shard_fails_the_load_once_the_other_shards_have_ended(tmp_path, fake_endpoints):

    with sync_rig(tmp_path) as rig:
        definition = rig.definition
    planned = _planned(400)
    shard0 = [planned[i].op for i in split(planned, 4)[0]]
    fake_endpoints.refuse = frozenset(map(_ident, shard0))
    fake_endpoints.delays = {2: 0.2, 3: 0.2, 4: 0.2}  # the others are still writing

    state = _load_in_a_flow(definition, planned, 3, 50)
    assert state.is_failed()
    with pytest.raises(Fatal, match="refused"):
        state.result()
    assert len(fake_endpoints.opened) == 4 and all(e.closed for e in fake_endpoints.opened)
    (failed,) = [e for e in fake_endpoints.opened if e.refused]
    assert failed.refused == 1 and not failed.written  # a fatal error is not retried
    written = [op for e in fake_endpoints.opened for op in e.written]
    assert sorted(map(_ident, written)) == sorted(
        _ident(p.op) for p in planned if p.op not in shard0
    )


def _fill(rig, system: str, rows: list[tuple[str, str, str, str | None]]) -> None:
    """Insert many rows at once, as a person would have made them."""
    stamp = rig.people[system]._stamp()  # the column's own type, who: user-<system>
    _, email, first, last, phone, _, _ = rig.layout[system]
    with rig.engines[system].begin() as conn:
        conn.execute(
            rig.tables[system].insert(),
            [{email: e, first: f, last: la, phone: p, **stamp} for e, f, la, p in rows],
        )


def _seed(rig, n: int) -> None:
    """``n`` contacts in s0; a third of them in s1 too (other phone), and some only in s1."""
    _fill(rig, "s0", [(f"c{i}@example.com", f"F{i}", f"L{i}", f"0{i}") for i in range(n)])
    _fill(
        rig,
        "s1",
        [(f"c{i}@example.com", f"F{i}", f"L{i}", None) for i in range(0, n, 3)]
        + [(f"only{i}@example.com", "O", f"N{i}", f"9{i}") for i in range(n // 10)],
    )


def _state(rig) -> dict:
    store = StateStore(rig.doc["state"])
    try:
        counts = store.counts(rig.doc["name"])
    finally:
        store.close()
    with sa.create_engine(rig.doc["state"]).connect() as conn:
        links = conn.execute(sa.text("SELECT count(DISTINCT link_id) FROM id_map")).scalar()
    return {"linked": counts["linked"], "links": links, "letters": counts["dead_letters"]}


def _rows(rig, system: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "_key"} for r in rig.rows(system)]


def _written_links(rig, system: str) -> set[str]:
    """Link ids of the records our integration account wrote in ``system``."""
    keys = {r["_key"] for r in rig.rows(system) if r["_by"] == "svc-sync"}
    with sa.create_engine(rig.doc["state"]).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT link_id, external_id FROM id_map WHERE system = :s"), {"s": system}
        ).all()
    return {link for link, key in rows if key in keys}


@pytest.mark.usefixtures("prefect_api")
def test_sharded_flow_on_dask_converges_like_the_unsharded_flow(tmp_path):
    from flows.sharded import sharded_sync
    from flows.twoway_flows import two_way_sync

    n = 3000
    for sub in ("plain", "sharded"):
        (tmp_path / sub).mkdir()
    with (
        sync_rig(tmp_path / "plain", batch_size=500) as plain,
        sync_rig(tmp_path / "sharded", batch_size=500) as sharded,
    ):
        for rig in (plain, sharded):
            _seed(rig, n)
        started = time.monotonic()
        expected = two_way_sync(definition=str(plain.path))
        plain_seconds = time.monotonic() - started

        started = time.monotonic()
        state = sharded_sync(
            definition=str(sharded.path), shards=4, dask_workers=2, return_state=True
        )
        sharded_seconds = time.monotonic() - started
        assert state.is_completed(), state.message
        report = state.result()
        print(f"unsharded {plain_seconds:.1f} s, sharded on 2 Dask workers {sharded_seconds:.1f} s")

        assert report["systems"] == expected["systems"]
        assert report["systems"]["s1"]["created"] == n - len(range(0, n, 3))
        assert report["systems"]["s0"]["created"] == n // 10
        for system in ("s0", "s1"):
            assert _rows(sharded, system) == _rows(plain, system)
        assert sharded.data("s0") == sharded.data("s1")  # the two sides hold the same contacts
        assert _state(sharded) == _state(plain)
        assert _state(sharded)["letters"] == 0

        # one task run per shard (3 for the 300 writes to s0, 4 for s1), the others once:
        # extract s0, extract s1, map IDs, compute field deltas and commit state
        runs = task_runs(state.state_details.flow_run_id, expected=4 + 7 + 1)
        shards = sorted(r.name for r in runs if " shard " in r.name)
        assert shards == sorted(
            [f"load s0 shard {i}" for i in range(3)] + [f"load s1 shard {i}" for i in range(4)]
        )
        assert sum(r.name == "commit state" for r in runs) == 1
        assert all(r.state.is_completed() for r in runs)

        # the writes to each system took slots of that system's limit, one per batch, in
        # the shard task runs on the workers
        for system in ("s0", "s1"):
            limit = _read_limit(limit_name(sharded.doc["name"], system))
            assert limit.limit == 4 and limit.active_slots == 0
            links = _written_links(sharded, system)
            k = shard_count(len(links), 4)
            sizes = Counter(shard_of(link, k) for link in links).values()
            batches = sum(math.ceil(size / 500) for size in sizes)
            events = _acquired_events(limit.id, batches)
            assert len(events) == batches
            assert _holders(events) == {f"load {system} shard {i}" for i in range(k)}

        # no echo: the next sharded run writes nothing
        again = sharded_sync(definition=str(sharded.path), shards=4, dask_workers=2)
        for counts in again["systems"].values():
            assert counts["created"] == counts["updated"] == counts["deleted"] == 0
