"""The benchmark's SharePoint list or Salesforce object, served from its own process.

``python bench/saas.py sharepoint --port P`` serves the Graph simulator
(:mod:`twoway.simulators.graph`) with an empty list ``Bench`` whose columns ``f01``..``f20``
take the benchmark's 20 fields (text, number, boolean); ``python bench/saas.py salesforce
--port P`` serves the Salesforce simulator (:mod:`twoway.simulators.salesforce`) with an
empty custom object ``Bench__c`` and fields ``f01__c``..``f20__c`` (string, int, double,
checkbox). Both accept the client credentials ``bench`` / the value of the environment
variable ``BENCH_CLIENT_SECRET``; the Graph app's display name, and so its integration
account, is ``svc-sync``. ``--latency-ms D`` delays every answer by D milliseconds, as a
service far away would.

Two extra routes for the harness: ``GET /_bench/stats`` returns the requests served since
``POST /_bench/reset`` by kind (``token``, ``batch``: Graph ``$batch`` or Salesforce sObject
Collections calls, ``other``) and the number of records the list or object holds, so the
harness can check that a load wrote every record, in how many calls.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import COLUMN_TYPES, Counting  # noqa: E402

CLIENT_ID = "bench"
LIST = "Bench"
SOBJECT = "Bench__c"
GRAPH_TYPES = {"TEXT": "text", "INTEGER": "number", "REAL": "number", "BOOLEAN": "boolean"}
SALESFORCE_TYPES = {"TEXT": "string", "INTEGER": "int", "REAL": "double", "BOOLEAN": "boolean"}


def salesforce_field(field: str) -> str:
    """The API name of a benchmark field on ``Bench__c``."""
    return f"{field}__c"


def _counting(app: Any, batch_path: str, count: Callable[[], int]) -> Counting:
    """``app`` with its requests counted as token, batch (``batch_path``) or other calls,
    and the number of records it holds in the stats."""

    def kind_of(scope: dict[str, Any]) -> str:
        path = scope["path"]
        if "token" in path:
            return "token"
        return "batch" if path.endswith(batch_path) else "other"

    return Counting(app, ("token", "batch", "other"), kind_of, lambda: {"records": count()})


def sharepoint_app(secret: str, latency_ms: float = 0.0) -> Counting:
    """The Graph simulator with the empty list ``Bench``, answering after ``latency_ms``."""
    from twoway.simulators.graph import GraphState, create_app

    state = GraphState(
        client_id=CLIENT_ID, client_secret=secret, display_name="svc-sync", latency_ms=latency_ms
    )
    state.add_list(LIST, {f: GRAPH_TYPES[t] for f, t in COLUMN_TYPES.items()})
    return _counting(create_app(state), "/$batch", lambda: len(state.items(LIST)))


def salesforce_app(secret: str, latency_ms: float = 0.0) -> Counting:
    """The Salesforce simulator with the empty custom object ``Bench__c``, answering after
    ``latency_ms``."""
    from twoway.simulators.salesforce import SalesforceState, create_app

    state = SalesforceState(latency_ms=latency_ms)
    state.add_client(CLIENT_ID, secret, "Integration User")
    state.define(
        SOBJECT,
        {salesforce_field(f): {"type": SALESFORCE_TYPES[t]} for f, t in COLUMN_TYPES.items()},
    )
    return _counting(create_app(state), "/composite/sobjects", lambda: len(state.records(SOBJECT)))


def main(argv: list[str] | None = None) -> None:
    """Serve one simulator on 127.0.0.1 (blocking)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["sharepoint", "salesforce"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of every answer")
    args = parser.parse_args(argv)
    secret = os.environ.get("BENCH_CLIENT_SECRET", "bench-secret")
    make = sharepoint_app if args.kind == "sharepoint" else salesforce_app
    app = make(secret, args.latency_ms)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
