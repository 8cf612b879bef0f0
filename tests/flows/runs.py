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
