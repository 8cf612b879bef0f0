"""With 20% of requests failing transiently on both simulators, every run completes or
parks records as dead letters, and within three runs everything has converged."""

from __future__ import annotations

import random
from contextlib import ExitStack

import pytest

from flows.steps import run_sync
from tests.integration.test_saas_sync import (
    CANONICAL,
    GRAPH_CLIENT,
    GRAPH_COLUMNS,
    LIST,
    SF_CLIENT,
    SF_COLUMNS,
    GraphSide,
    SalesforceSide,
    data,
    graph_server,
    salesforce_server,
    written,
)
from twoway.connectors import open_endpoint
from twoway.definition import parse_definition
from twoway.engine import Runtime
from twoway.report import RunReport
from twoway.simulators.faults import FaultPlan

RATES = {"lock": 0.07, "throttle": 0.07, "unavailable": 0.06}  # 20% of requests


@pytest.mark.parametrize("seed", [11, 12])
def test_twenty_percent_transient_faults_converge_within_three_runs(tmp_path, monkeypatch, seed):
    waits: list[float] = []
    with ExitStack() as stack:
        graph, gserver = stack.enter_context(graph_server(faults=FaultPlan(seed=seed)))
        org, sserver = stack.enter_context(salesforce_server(faults=FaultPlan(seed=seed + 100)))
        sides = {"sharepoint": GraphSide(graph), "salesforce": SalesforceSide(org)}
        monkeypatch.setenv("T_GRAPH_SECRET", GRAPH_CLIENT[1])
        monkeypatch.setenv("T_SF_SECRET", SF_CLIENT[1])
        definition = parse_definition(
            {
                "name": "twenty",
                "state": f"sqlite:///{tmp_path / 'state.db'}",
                "systems": {
                    "sharepoint": {
                        "kind": "sharepoint",
                        "graph_url": gserver.url,
                        "token_url": f"{gserver.url}/{graph.tenant_id}/oauth2/v2.0/token",
                        "client_id": GRAPH_CLIENT[0],
                        "client_secret": "${T_GRAPH_SECRET}",
                        "list": LIST,
                        "integration_account": "twoway-sync",
                    },
                    "salesforce": {
                        "kind": "salesforce",
                        "instance_url": sserver.url,
                        "client_id": SF_CLIENT[0],
                        "client_secret": "${T_SF_SECRET}",
                    },
                },
                "fields": {
                    c: {"sharepoint": GRAPH_COLUMNS[f], "salesforce": SF_COLUMNS[f]}
                    for c, f in CANONICAL.items()
                },
                "match_on": ["email"],
            },
            tmp_path / "twenty.sync.yaml",
        )
        rng = random.Random(seed)

        def run() -> RunReport:
            endpoints = {s: open_endpoint(definition, s) for s in definition.systems}
            endpoints["sharepoint"].use_retry_hooks(waits.append)
            endpoints["salesforce"].use_retry_hooks(waits.append, random.Random(seed))
            try:
                report = run_sync(
                    definition, Runtime(sleep=waits.append, rng=rng, endpoints=endpoints)
                )
            finally:
                for endpoint in endpoints.values():
                    endpoint.close()
            # every run completes, or parks what it could not apply: it never just fails
            assert report.status == "completed", report.error
            return report

        for i in range(30):
            name = ("sharepoint", "salesforce")[i % 2]
            sides[name].add(email=f"p{i}@example.com", first=f"F{i}", last=f"L{i}")
        for plan in (graph.faults, org.faults):
            plan.set(**RATES)

        def converged() -> bool:
            held = [data(side) for side in sides.values()]
            return all(d == held[0] for d in held) and len(held[0]) == 30

        runs = 0
        while runs < 3 and (runs == 0 or not converged()):
            run()
            runs += 1
        assert converged(), f"not converged after {runs} runs under 20% faults"

        # people edit on both sides while the faults go on
        for i in rng.sample(range(30), 10):
            sides[rng.choice(list(sides))].edit(f"p{i}@example.com", first=f"E{i}")
        runs = 0
        while runs < 3 and (runs == 0 or not converged()):
            run()
            runs += 1
        assert converged(), f"edits not converged after {runs} runs under 20% faults"
        assert sum(sum(p.counts.values()) for p in (graph.faults, org.faults)) > 0

        for plan in (graph.faults, org.faults):
            plan.set()
        assert written(run()) == 0
