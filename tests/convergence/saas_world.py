"""SaaS systems for the randomized harness: a SharePoint list in the Graph simulator and a
Salesforce object in the org simulator, each served over HTTP on 127.0.0.1 from this
process, on the world's virtual clock.

People edit through the simulators' own user API as other identities than the integration
account. Faults are the simulators' own, at the HTTP level: the world's fault rates become
429/403 throttling and 503 with Retry-After, 504 before anything is applied, 423
resourceLocked or UNABLE_TO_LOCK_ROW on some records of a batch, and 504 after the request
was applied (its answer lost). A 412 on a stale eTag, or a changed SystemModstamp, comes
from a person editing the record right before our update (``concurrent_edit``).

Requests reach a simulator one at a time (the endpoints are synchronous and send their
write batches one after another, ``writes_in_flight=1``), every fault draw comes from a
seeded source, and the simulators read the world's clock: a sequence replays exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.salesforce import SalesforceObject
from blocks.sharepoint import SharePointList
from tests.convergence.machine import SyncMachine
from tests.convergence.world import Faults, Side, SqlSide, World
from twoway.contract import Endpoint
from twoway.simulators.faults import FaultPlan
from twoway.simulators.graph import GraphError, GraphState
from twoway.simulators.graph import create_app as graph_app
from twoway.simulators.salesforce import SalesforceState, SfError
from twoway.simulators.salesforce import create_app as salesforce_app
from twoway.simulators.server import BackgroundServer

CLIENT_ID, CLIENT_SECRET = "twoway-sync", "harness-secret"
PAGE_SIZE = 3  # reads span several pages, so people can edit between them


def simulator_rates(faults: Faults) -> dict[str, float]:
    """The world's fault rates as a simulator's fault plan: failures before anything is
    applied split evenly between throttling, unavailability and a gateway timeout."""
    before = faults.error_before / 3
    return {
        "throttle": before,
        "unavailable": before,
        "timeout": before,
        "lock": faults.partial,
        "lost": faults.applied_then_timeout,
    }


def fault_plan(world: World, name: str) -> FaultPlan:
    """A fault plan seeded from the world's seed and the system; faults answer at once
    (no real stalls) and ask for a one-second Retry-After, slept on virtual time."""
    return FaultPlan(
        seed=world.seed * 31 + world.names.index(name),
        timeout_seconds=0.0,
        slow_seconds=0.0,
        retry_after=1,
    )


class PagingHook:
    """An ASGI app in front of a simulator that calls ``hook`` before serving a request
    for the next page of a read: a person's edit then lands while the read pages."""

    def __init__(self, app: Any, next_page: Callable[[dict[str, Any]], bool]):
        self.app, self.next_page = app, next_page
        self.state = app.state  # what BackgroundServer looks at
        self.hook: Callable[[list[str]], None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.hook is not None and self.next_page(scope):
            self.hook([])  # which keys the read returned so far is not known here
        await self.app(scope, receive, send)


class SimulatorSide(Side):
    """A system served by a simulator over HTTP; its faults are the simulator's own."""

    http_faults = True
    COLLECTION: str  # the list or object synced
    COLUMNS: dict[str, str]  # field -> the simulator's column
    REFUSED: type[Exception]  # what the simulator raises for an edit it refuses
    state: Any  # the simulator's state (GraphState, SalesforceState)

    def __init__(self, world: World, name: str):
        super().__init__(world, name)
        self.person = f"Person {name.upper()}"  # never the integration account
        self.plan = fault_plan(world, name)
        self.server: BackgroundServer | None = None

    def serve(self, app: Any, next_page: Callable[[dict[str, Any]], bool]) -> None:
        self.paging = PagingHook(app, next_page)
        self.server = BackgroundServer(self.paging).start()

    def set_faults(self, faults: Faults) -> None:
        self.plan.set(**{kind: rate for kind, rate in simulator_rates(faults).items() if rate})

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # a person's edits, through the simulator's own user API; a refused one returns False
    def column(self, field_name: str) -> str:
        return self.COLUMNS[field_name]

    def _fields(self, values: dict[str, str]) -> dict[str, str]:
        return {self.COLUMNS[f]: v for f, v in values.items()}

    def insert(self, values: dict[str, str]) -> str:
        return self.state.user_create(self.COLLECTION, self._fields(values), user=self.person)

    def update(self, key: str, values: dict[str, str], as_account: bool = False) -> bool:
        assert not as_account, "the simulators' people edit as themselves"
        try:
            self.state.user_update(self.COLLECTION, key, self._fields(values), user=self.person)
        except self.REFUSED:
            return False
        return True

    def remove(self, key: str) -> bool:
        try:
            self.state.user_delete(self.COLLECTION, key, user=self.person)
        except self.REFUSED:
            return False
        return True


def _graph_next_page(scope: dict[str, Any]) -> bool:
    return scope["method"] == "GET" and b"skiptoken" in scope.get("query_string", b"")


class GraphSide(SimulatorSide):
    """A SharePoint list in the Graph simulator; people edit it in the SharePoint UI."""

    COLLECTION = "Records"
    REFUSED = GraphError
    COLUMNS = {"email": "Email", "first_name": "FirstName", "last_name": "LastName"}
    MARKER = "TwowayLink"

    def __init__(self, world: World, name: str):
        super().__init__(world, name)
        self.state = GraphState(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            display_name="twoway-sync",
            faults=self.plan,
            clock=world.clock,
        )
        self.marked = True  # a list column holds the link id of every create
        columns = dict.fromkeys([*self.COLUMNS.values(), self.MARKER], "text")
        self.state.add_list(self.COLLECTION, columns)
        self.serve(graph_app(self.state), _graph_next_page)

    def system(self) -> dict[str, Any]:
        url = self.server.url
        return {
            "kind": "sharepoint",
            "graph_url": url,
            "token_url": f"{url}/{self.state.tenant_id}/oauth2/v2.0/token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "list": self.COLLECTION,
            "link_column": self.MARKER,
            "integration_account": "twoway-sync",
        }

    def endpoint(self, between_pages: Callable[[list[str]], None]) -> Endpoint:
        spec = self.system()
        block = SharePointList(
            graph_url=spec["graph_url"],
            token_url=spec["token_url"],
            list=self.COLLECTION,
            link_column=self.MARKER,
            integration_account="twoway-sync",
            columns_to_sync=list(self.COLUMNS.values()),
            page_size=PAGE_SIZE,
            writes_in_flight=1,  # a replayable order of requests
            credentials=IntegrationAccountCredentials(
                client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET)
            ),
        )
        block.use_retry_hooks(self.world.clock.advance, self.world.rng)
        self.paging.hook = between_pages
        return block

    def live_keys(self) -> list[str]:
        return [item["id"] for item in self.state.items(self.COLLECTION)]  # in id order

    def rows(self) -> dict[str, dict[str, str]]:
        return {
            item["id"]: {f: item["fields"].get(col) for f, col in self.COLUMNS.items()}
            for item in self.state.items(self.COLLECTION)
        }

    def close(self) -> None:
        super().close()
        self.state.close()


_NEXT_BATCH = re.compile(r"/services/data/v[\d.]+/query(All)?/[^/]+$")


def _salesforce_next_page(scope: dict[str, Any]) -> bool:
    return scope["method"] == "GET" and bool(_NEXT_BATCH.search(scope["path"]))


class SalesforceSide(SimulatorSide):
    """A custom object of a Salesforce org simulator; people edit it as another User."""

    COLLECTION = "Record__c"
    REFUSED = SfError
    COLUMNS = {"email": "Email__c", "first_name": "First_Name__c", "last_name": "Last_Name__c"}
    MARKER = "Twoway_Link__c"

    def __init__(self, world: World, name: str):
        super().__init__(world, name)
        self.state = SalesforceState(clock=world.clock, faults=self.plan, seed=world.seed)
        self.marked = True  # an External ID field holds the link id of every create
        self.state.define(
            self.COLLECTION,
            {col: {"type": "string", "length": 80} for col in self.COLUMNS.values()}
            | {self.MARKER: {"type": "string", "length": 40, "externalId": True}},
        )
        self.account = self.state.add_client(CLIENT_ID, CLIENT_SECRET, "Integration User")
        self.serve(salesforce_app(self.state), _salesforce_next_page)

    def system(self) -> dict[str, Any]:
        return {
            "kind": "salesforce",
            "instance_url": self.server.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "object": self.COLLECTION,
            "external_id_field": self.MARKER,
            "integration_account": self.account,
            "overlap_seconds": self.world.overlap,
        }

    def endpoint(self, between_pages: Callable[[list[str]], None]) -> Endpoint:
        block = SalesforceObject(
            instance_url=self.server.url,
            object=self.COLLECTION,
            external_id_field=self.MARKER,
            integration_account=self.account,
            columns_to_sync=list(self.COLUMNS.values()),
            page_size=PAGE_SIZE,
            overlap_seconds=self.world.overlap,
            credentials=IntegrationAccountCredentials(
                client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET)
            ),
        )
        block.use_retry_hooks(self.world.clock.advance, self.world.rng)
        self.paging.hook = between_pages
        return block

    def live_keys(self) -> list[str]:
        return sorted(r["Id"] for r in self.state.records(self.COLLECTION))

    def rows(self) -> dict[str, dict[str, str]]:
        return {
            r["Id"]: {f: r.get(col) for f, col in self.COLUMNS.items()}
            for r in self.state.records(self.COLLECTION)
        }


class SharePointAndSql(SyncMachine):
    """A SharePoint list and a SQL table."""

    sides = (GraphSide, SqlSide)


class SalesforceAndSql(SyncMachine):
    """A Salesforce object and a SQL table."""

    sides = (SalesforceSide, SqlSide)


class SharePointSalesforceSql(SyncMachine):
    """A SharePoint list, a Salesforce object and a SQL table, all three in step."""

    sides = (GraphSide, SalesforceSide, SqlSide)
