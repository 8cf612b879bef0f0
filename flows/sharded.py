"""The sharded two-way sync: the same run as ``two_way_sync``, with its writes split into
shards by link-id hash and mapped over a Dask cluster (prefect-dask's ``DaskTaskRunner``),
each system's API quota shared through a Prefect global concurrency limit.

For syncs whose runs spend their time writing (a first sync or a resync of many records,
a mass update). Reading, planning and each chunk's state commit happen in this flow
run's process; docs/scaling.md says when sharding pays and how to run it on a real
cluster. Needs the ``dask`` extra (``pip install 'twoway[dask]'``) where the flow runs and
on every Dask worker.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.states import State
from pydantic import Field

from flows.twoway_flows import (
    Direction,
    SyncRef,
    _finish,
    _Progress,
    _run_name,
    open_run,
    run_or_refuse,
)
from tasks.shards import ApiQuota, ShardedLoad
from twoway.engine import Runtime

Shards = Annotated[int, Field(ge=1, le=1024, description="Shards per load (task runs)")]
Workers = Annotated[
    int, Field(ge=1, le=256, description="Workers of the local Dask cluster (no address)")
]
Slots = Annotated[
    int,
    Field(
        ge=1,
        description="Slots of each system's write limit when twoway creates it (batches at once, "
        "or the burst of a rate limit)",
    ),
]
Rate = Annotated[
    float | None,
    Field(
        gt=0,
        description="Write batches per second per system: makes a newly created limit a rate "
        "limit (empty: a concurrency limit)",
    ),
]


def dask_runner(address: str | None, workers: int = 2) -> Any:
    """The task runner of a sharded run: the Dask scheduler at ``address``, or a local
    cluster of ``workers`` processes (started at the first shard, closed with the run)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "processes": True})


@flow(
    name="twoway-sync-sharded",
    flow_run_name=_run_name,
    description="Keep the systems of a large sync in step, its writes sharded over Dask.",
)
def sharded_sync(
    definition: SyncRef,
    shards: Shards = 4,
    dask_address: str | None = None,
    dask_workers: Workers = 2,
    api_slots: Slots = 4,
    api_rate: Rate = None,
    dry_run: bool = False,
    full: bool = False,
    direction: Direction = "both",
    allow_mass_change: bool = False,
) -> dict[str, Any]:
    """One run of a sync whose writes are split into ``shards`` task runs on Dask workers.

    Args:
        definition: The sync: its name in the catalog, or the path of its definition file.
        shards: How many shards each system's writes are split into (by link-id hash);
            small loads use fewer (one per 100 writes at least).
        dask_address: The Dask scheduler, e.g. ``tcp://scheduler:8786``; empty starts a
            local cluster for this run.
        dask_workers: Worker processes of that local cluster (ignored with an address).
        api_slots: Slots of the limit ``twoway-<sync>-<system>`` when the run creates it; an
            existing limit keeps its own settings.
        api_rate: With a value, a newly created limit is a rate limit of this many write
            batches a second (``api_slots`` the burst).
        dry_run: Plan only: write nothing to any system nor to the sync's state.
        full: Read every record, not only the changes since the last run (a resync).
        direction: 'both', or 'SOURCE -> TARGET' to carry changes one way only.
        allow_mass_change: Allow a run to delete more than the definition's mass-change limit.
    """
    log = get_run_logger()
    started = datetime.now(UTC)
    opened = open_run(definition, direction, dry_run, started)
    if isinstance(opened, State):
        return opened
    parsed, sources, targets = opened
    log.info(
        "%s: %s in up to %d shards per system on %s",
        parsed.name,
        "dry run" if dry_run else "run",
        shards,
        dask_address or f"a local Dask cluster of {dask_workers} workers",
    )
    progress = _Progress(parsed.name, len(sources or parsed.systems))
    # the cluster starts (or is connected to) at the first shard: a dry run or a run with
    # nothing to write never starts one
    with dask_runner(dask_address, dask_workers) as runner:
        load = ShardedLoad(
            parsed, shards, runner=runner, quota=ApiQuota(slots=api_slots, per_second=api_rate)
        )
        report = run_or_refuse(
            parsed,
            Runtime(tracked=True, spread_load=load, observer=progress, logger=log, read_apart=True),
            dry_run=dry_run,
            full=full,
            sources=sources,
            targets=targets,
            allow_mass_change=allow_mass_change,
        )
    if isinstance(report, State):
        return report
    for system, sizes in sorted(load.sizes.items()):
        log.info("%s: %s written in %d shards of %s", parsed.name, system, len(sizes), sizes)
    return _finish(parsed, report, started, progress)
