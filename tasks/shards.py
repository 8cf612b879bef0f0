"""Sharded loads: the write step of a large run split by link-id hash and mapped over a
task runner (a Dask cluster in production), with each system's API quota shared through a
Prefect global concurrency limit.

Only the load step is sharded. Extract, echo filtering, ID mapping, deltas and each chunk's
state commit run in the flow run's own process: they read and write the state store and
are rarely what makes a large sync slow. Loads are, because every
write is an API call (or a database round trip) of the target system.

How a load is sharded:

- each planned write goes to shard ``blake2b(link_id) mod K``: a stable hash (Python's
  ``hash`` is salted per process), so the same link always lands in the same shard and
  every write lands in exactly one;
- each shard is one task run, given the definition and the system's *name* (both
  picklable) rather than an open endpoint: the task opens its own endpoint with
  :func:`twoway.connectors.open_endpoint` on whatever worker runs it, and closes it after;
- each write batch of a shard first takes a slot of the limit ``twoway-<sync>-<system>``
  (:func:`limit_name`): every shard of every run on every worker draws on the same slots,
  so several workers together never exceed the quota the limit describes;
- the shards' results are put back in the order of the plan, which is what the engine
  expects (it pairs results with planned writes by position).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect import task

from tasks.common import TASK_OPTIONS, whole
from tasks.load import load_changes
from twoway.connectors import open_endpoint
from twoway.contract import ChangeSet, Endpoint, Op, RawRecord, WriteResult
from twoway.definition import Definition
from twoway.records import PlannedOp
from twoway.retry import RetryPolicy

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

#: a load with fewer planned writes per shard than this uses fewer shards (a shard has a
#: fixed cost: a task run, a round trip to a worker, an endpoint to open)
MIN_SHARD_SIZE = 100


def shard_of(link_id: str, shards: int) -> int:
    """The shard (0 to ``shards - 1``) of a link: the same answer in every process and run."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    digest = hashlib.blake2b(link_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def split(planned: Sequence[PlannedOp], shards: int) -> list[list[int]]:
    """Positions in ``planned`` per shard, each list in plan order; every position once."""
    groups: list[list[int]] = [[] for _ in range(shards)]
    for position, p in enumerate(planned):
        groups[shard_of(p.link_id, shards)].append(position)
    return groups


def merge(
    groups: Sequence[Sequence[int]], shard_results: Sequence[Sequence[WriteResult]], total: int
) -> list[WriteResult]:
    """The shards' results put back in plan order (``groups`` as :func:`split` made them).

    Refuses a shard that returned a different number of results than it was given writes:
    pairing results with the wrong writes would corrupt the ID map.
    """
    out: list[WriteResult | None] = [None] * total
    for positions, results in zip(groups, shard_results, strict=True):
        if len(results) != len(positions):
            raise RuntimeError(
                f"a shard returned {len(results)} results for {len(positions)} writes"
            )
        for position, result in zip(positions, results, strict=True):
            out[position] = result
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise RuntimeError(f"{len(missing)} planned writes have no result (first: {missing[0]})")
    return out  # type: ignore[return-value]


def shard_count(writes: int, shards: int, min_size: int = MIN_SHARD_SIZE) -> int:
    """How many shards a load of ``writes`` gets: at most ``shards``, at least 1, and no
    more than one per ``min_size`` writes."""
    return max(1, min(shards, math.ceil(writes / max(1, min_size))))


# -- the shared API quota ---------------------------------------------------------------


def limit_name(sync: str, system: str) -> str:
    """The Prefect global concurrency limit that holds one system's write quota."""
    return f"twoway-{sync}-{system}"


@dataclass(frozen=True)
class ApiQuota:
    """How much of a system's API the writes of all shards, runs and workers may use.

    One slot is taken per write batch (one :meth:`Endpoint.write` call, at most the
    system's ``batch_size`` records). With ``per_second`` unset the limit caps the batches
    in flight at once (``slots``); with ``per_second`` set it is a rate limit: a slot is
    never given back but decays at ``per_second`` slots a second, ``slots`` being the burst.
    When the limit already exists on the Prefect server, its own settings apply (an
    operator's ``prefect gcl update`` wins); ``create`` makes a missing limit with these.
    """

    slots: int = 4
    per_second: float | None = None
    timeout_seconds: float | None = 600.0
    create: bool = True

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"an API quota needs at least 1 slot, not {self.slots}")
        if self.per_second is not None and self.per_second <= 0:
            raise ValueError(f"per_second must be positive, not {self.per_second}")


def ensure_limit(name: str, quota: ApiQuota) -> bool:
    """Create the global concurrency limit ``name`` from ``quota`` if the Prefect server
    has none of that name; True when it was created. An existing limit is left as it is."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(
                    name=name,
                    limit=quota.slots,
                    slot_decay_per_second=quota.per_second or 0.0,
                    active=True,
                )
            )
        except ObjectAlreadyExists:  # another run created it a moment ago
            return False
        return True


class QuotaEndpoint(Endpoint):
    """An endpoint whose writes each take a slot of a global concurrency (or rate) limit
    first; reads pass straight through (the limit guards the write quota). A shard sends
    its batches one after another (the contract's one write in flight): how many writes
    are on their way at once is the limit's to say, across every shard."""

    def __init__(self, inner: Endpoint, limit: str, quota: ApiQuota):
        self.inner, self.limit, self.quota = inner, limit, quota
        self.integration_account = inner.integration_account

    def write(self, ops: Sequence[Op]) -> list[WriteResult]:
        from prefect.concurrency.sync import concurrency, rate_limit

        # strict: a limit deleted while the run works must stop it, not silently lift the quota
        if self.quota.per_second is not None:
            rate_limit(self.limit, timeout_seconds=self.quota.timeout_seconds, strict=True)
            return self.inner.write(ops)
        with concurrency(self.limit, timeout_seconds=self.quota.timeout_seconds, strict=True):
            return self.inner.write(ops)

    def max_batch(self) -> int:
        return self.inner.max_batch()

    def columns(self) -> set[str]:
        return self.inner.columns()

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        return self.inner.read_pages(cursor)

    def read(self, keys: Sequence[str]) -> list[RawRecord]:
        return self.inner.read(keys)

    def list_keys(self) -> set[str] | None:
        return self.inner.list_keys()

    def count_keys(self) -> int | None:
        return self.inner.count_keys()

    def close(self) -> None:
        self.inner.close()


# -- one shard --------------------------------------------------------------------------


def load_shard(
    definition: Definition,
    system: str,
    planned: list[PlannedOp],
    shard: int,
    policy: RetryPolicy,
    seed: int,
    batch_size: int | None = None,
    limit: str | None = None,
    quota: ApiQuota | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> list[WriteResult]:
    """Write one shard of a load to ``system``: one result per planned write, in order.

    Runs on whichever worker the task runner picks, so it takes only picklable inputs and
    opens its own endpoint (closed when it returns). With ``limit``, each batch waits for
    a slot of that global concurrency limit. ``shard`` only names the task run.
    """
    endpoint: Endpoint = open_endpoint(definition, system)
    try:
        target = QuotaEndpoint(endpoint, limit, quota or ApiQuota()) if limit else endpoint
        return load_changes(target, planned, policy, sleep, random.Random(seed), None, batch_size)
    finally:
        endpoint.close()


# a shard is never retried as a whole (a create would be sent twice); its batches retry
load_shard_task = task(
    whole(load_shard),
    name="load shard",
    task_run_name="load {system} shard {shard}",
    **{**TASK_OPTIONS, "retries": 0, "retry_condition_fn": None},
)


class ShardedLoad:
    """The load step, sharded: the same arguments and the same result as
    :func:`tasks.load.load_changes`, its planned writes split into shards by link-id hash,
    each shard one task run submitted to ``runner`` (a started Prefect task runner, e.g. a
    ``DaskTaskRunner``) or, when ``runner`` is None, to the flow's own task runner. With
    ``prefect=False`` the shards run one after another in this process, with no limit
    (tests, and a check of the split with no Prefect API).

    ``quota`` set: each shard's batches take slots of the limit :func:`limit_name` names,
    created first when missing and ``quota.create`` is set.
    """

    def __init__(
        self,
        definition: Definition,
        shards: int = 4,
        *,
        prefect: bool = True,
        runner: TaskRunner | None = None,
        quota: ApiQuota | None = None,
        min_shard_size: int = MIN_SHARD_SIZE,
    ):
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards}")
        self.prefect = prefect
        self.definition = definition
        self.shards = shards
        self.runner = runner
        self.quota = quota
        self.min_shard_size = min_shard_size
        #: per system: the shard sizes of every load of the run, one list per chunk
        self.sizes: dict[str, list[int]] = {}

    def __call__(
        self,
        endpoint: Endpoint,
        planned: list[PlannedOp],
        policy: RetryPolicy,
        sleep: Callable[[float], Any],
        rng: random.Random,
        on_progress: Callable[[int], Any] | None = None,
        batch_size: int | None = None,
    ) -> list[WriteResult]:
        """``endpoint`` is not used: each shard opens its own."""
        if not planned:
            return []
        systems = {p.system for p in planned}
        if len(systems) != 1:
            raise ValueError(f"one load writes to one system, not {sorted(systems)}")
        system = systems.pop()
        k = shard_count(len(planned), self.shards, self.min_shard_size)
        groups = [g for g in split(planned, k) if g]
        self.sizes.setdefault(system, []).extend(len(g) for g in groups)
        limit = None
        if self.quota is not None and self.prefect:
            limit = limit_name(self.definition.name, system)
            if self.quota.create:
                ensure_limit(limit, self.quota)
        seeds = [rng.getrandbits(64) for _ in groups]
        shard_planned = [[planned[i] for i in g] for g in groups]
        if not self.prefect:
            results = []
            for n, (ops, seed) in enumerate(zip(shard_planned, seeds, strict=True)):
                results.append(
                    load_shard(
                        self.definition,
                        system,
                        ops,
                        n,
                        policy,
                        seed,
                        batch_size,
                        limit,
                        self.quota,
                        sleep,
                    )
                )
                if on_progress:
                    on_progress(sum(len(r) for r in results))
            return merge(groups, results, len(planned))
        return merge(
            groups,
            self._submit(
                system, shard_planned, seeds, policy, batch_size, limit, sleep, on_progress
            ),
            len(planned),
        )

    def _submit(
        self,
        system: str,
        shard_planned: list[list[PlannedOp]],
        seeds: list[int],
        policy: RetryPolicy,
        batch_size: int | None,
        limit: str | None,
        sleep: Callable[[float], Any],
        on_progress: Callable[[int], Any] | None,
    ) -> list[list[WriteResult]]:
        """Map the shard task over the shards, wait for every one, and return their results
        in shard order. A failed shard fails the load, but only after the others ended: no
        write may still be in flight when the run settles its state."""
        from prefect.futures import as_completed
        from prefect.utilities.annotations import unmapped

        # no ``quote`` here: it is a tuple, which Dask unpacks in a task's arguments
        parameters = {
            "definition": unmapped(self.definition),
            "system": unmapped(system),
            "planned": shard_planned,
            "shard": list(range(len(shard_planned))),
            "policy": unmapped(policy),
            "seed": seeds,
            "batch_size": unmapped(batch_size),
            "limit": unmapped(limit),
            "quota": unmapped(self.quota),
            "sleep": unmapped(sleep),
        }
        if self.runner is not None:
            futures = self.runner.map(load_shard_task, parameters)
        else:
            futures = load_shard_task.map(**parameters)
        position = {f.task_run_id: n for n, f in enumerate(futures)}
        results: list[list[WriteResult] | None] = [None] * len(futures)
        errors: list[BaseException] = []
        done = 0
        for future in as_completed(list(futures)):
            try:
                out = future.result().value
            except Exception as exc:  # re-raised once every shard has ended
                errors.append(exc)
                continue
            results[position[future.task_run_id]] = out
            done += len(out)
            if on_progress:
                on_progress(done)
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]
