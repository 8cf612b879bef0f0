"""Reading a flow run's task runs back from the Prefect API in flow tests."""

from __future__ import annotations

import time


def task_runs(flow_run_id, expected: int) -> list:
    """The task runs of a flow run, once ``expected`` of them have completed (the server
    records them from events, a little after they end; after 30 s, whatever is there)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            done = [r for r in runs if r.state and r.state.is_completed()]
            if len(done) >= expected or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)
