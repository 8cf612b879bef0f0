"""Reading a flow run's task runs back from the Prefect API in flow tests."""

from __future__ import annotations

import time


def task_runs(flow_run_id, expected: int) -> list:
    """The task runs of a flow run, once the server shows the flow run ended and
    ``expected`` task runs in a final state (it records them from events, a little after
    they end). Fails when the count is not exactly ``expected`` within 30 s."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            ended = client.read_flow_run(flow_run_id).state.is_final()
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            final = [r for r in runs if r.state and r.state.is_final()]
            if ended and len(final) == len(runs) >= expected:
                break
            assert time.monotonic() < deadline, (
                f"flow run ended: {ended}; {len(final)} of {len(runs)} task runs final, "
                f"{expected} expected"
            )
            time.sleep(0.5)
    assert len(runs) == expected, sorted(r.name for r in runs)
    return runs


def run_logs(flow_run_id) -> list:
    """The logs a flow run sent to the Prefect API (sent in batches: flushed first)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )


def sync_events(sync: str, flow_run_id, names: list[str], expected: int) -> list:
    """The events about a sync that a flow run sent and the Prefect server holds, oldest
    first, once ``expected`` are there (they travel over a websocket; after 30 s, whatever
    is there)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    wanted = EventFilter(
        event=EventNameFilter(name=names),
        resource=EventResourceFilter(id=[f"twoway.sync.{sync}"]),
    )
    run = f"prefect.flow-run.{flow_run_id}"
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(filter=wanted, limit=50).events  # newest first
            found = sorted(
                (e for e in page if any(r.id == run for r in e.related)), key=lambda e: e.occurred
            )
            if len(found) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.5)
