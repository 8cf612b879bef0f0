"""SaaS systems for the randomized harness: a SharePoint list in the Graph simulator and a
Salesforce object in the org simulator, each served over HTTP on 127.0.0.1 from this
process, on the world's virtual clock.

People edit through the simulators' own user API as other identities than the integration
account. Faults are the simulators' own, at the HTTP level: the world's fault rates become
429/403 throttling and 503 with Retry-After, 504 before anything is applied, 423
resourceLocked or UNABLE_TO_LOCK_ROW on some records of a batch, and 504 after the request
was applied (its answer lost). A 412 on a stale eTag, or a changed SystemModstamp, comes
from a person editing the record right before our update (``concurrent_edit``).

Rules of their own draw the faults each service has: a Salesforce recycle bin or delete
log purged (getDeleted then refuses the cursor with INVALID_REPLICATION_DATE), a person's
edit in a long transaction (stamped at once, seen only when it commits, latestDateCovered
held below it meanwhile), a Graph delta token gone (410 with either resync code, before a
read or while it pages), and throttling that asks to wait tens of seconds to minutes
(slept on virtual time). ``FIRED`` counts how often each of them reached the connector.

Requests reach a simulator one at a time (the endpoints are synchronous and send their
write batches one after another, ``writes_in_flight=1``), every fault draw comes from a
seeded source, and the simulators read the world's clock: a sequence replays exactly.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from pydantic import PrivateAttr, SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.salesforce import SalesforceObject
from blocks.sharepoint import UPLOAD_DIFFERENCES, SharePointList
from tests.convergence.machine import SyncMachine, rule
from tests.convergence.world import FIELDS, Faults, Side, SqlSide, World
from twoway import sfid
from twoway.contract import ChangeSet, Endpoint
from twoway.simulators.faults import FaultPlan
from twoway.simulators.graph import RESYNC_CODES, GraphError, GraphState
from twoway.simulators.graph import create_app as graph_app
from twoway.simulators.salesforce import SalesforceState, SfError
from twoway.simulators.salesforce import create_app as salesforce_app
from twoway.simulators.server import BackgroundServer

CLIENT_ID, CLIENT_SECRET = "twoway-sync", "harness-secret"
PAGE_SIZE = 3  # reads span several pages, so people can edit between them
LONG_WAIT = 20.0  # seconds: a Retry-After at least this long is a long one
#: how often each of the services' own faults reached a connector, over every sequence
FIRED: Counter[str] = Counter()


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


def side_seed(world: World, name: str) -> int:
    """A number of the world's seed and the system, for what each side draws or names."""
    return world.seed * 31 + world.names.index(name)


def fault_plan(world: World, name: str) -> FaultPlan:
    """A fault plan seeded from the world's seed and the system; faults answer at once
    (no real stalls) and ask for a one-second Retry-After, slept on virtual time."""
    return FaultPlan(
        seed=side_seed(world, name),
        timeout_seconds=0.0,
        slow_seconds=0.0,
        retry_after=1,
    )


class PagingHook:
    """An ASGI app in front of a simulator that calls ``hook`` before serving a request
    for the next page of a read: a person's edit then lands while the read pages.
    ``before`` sees every request first, ``answered`` every answer's status."""

    def __init__(self, app: Any, next_page: Callable[[dict[str, Any]], bool]):
        self.app, self.next_page = app, next_page
        self.state = app.state  # what BackgroundServer looks at
        self.hook: Callable[[list[str]], None] | None = None
        self.before: Callable[[dict[str, Any]], None] | None = None
        self.answered: Callable[[dict[str, Any], int], None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.before is not None:
            self.before(scope)
        if self.hook is not None and self.next_page(scope):
            self.hook([])  # which keys the read returned so far is not known here

        async def answer(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and self.answered is not None:
                self.answered(scope, message["status"])
            await send(message)

        await self.app(scope, receive, answer)


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
        self.paging.before, self.paging.answered = self.before_request, self.answered
        self.server = BackgroundServer(self.paging).start()

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self.plan.set(**{kind: rate for kind, rate in simulator_rates(faults).items() if rate})

    def throttle(self, rate: float, retry_after: int) -> None:
        """Throttling and unavailability at ``rate`` in all, each answer asking to wait
        ``retry_after`` seconds, on top of the world's other faults (until ``set_faults``)."""
        rates = simulator_rates(getattr(self, "faults", Faults()))
        rates["throttle"] = rates["unavailable"] = rate / 2
        scale = min(1.0, 1 / sum(rates.values()))
        self.plan.set(**{kind: r * scale for kind, r in rates.items() if r})
        self.plan.retry_after = retry_after

    def sleep(self, seconds: float) -> None:
        """The connector waits between tries: on the world's clock, never really."""
        if seconds >= LONG_WAIT:
            FIRED["long Retry-After waited out"] += 1
        self.world.clock.advance(seconds)

    def before_request(self, scope: dict[str, Any]) -> None:
        """A request reaches the simulator (on the server's thread; the run waits)."""

    def answered(self, scope: dict[str, Any], status: int) -> None:
        """The simulator answered a request with ``status``."""

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
        block.use_retry_hooks(self.sleep, self.world.rng)
        self.paging.hook = between_pages
        return block

    def expire_delta_tokens(self, code: str) -> None:
        self.state.expire_delta_tokens(code)

    uploading = False  # a run read a 410 resyncChangesUploadDifferences

    def remove(self, key: str) -> bool:
        gone = super().remove(key)
        if gone and self.uploading:
            self._restorable()  # the full read under way may no longer find the item
        return gone

    def _restorable(self) -> None:
        """After a 410 resyncChangesUploadDifferences Graph asks the client to upload the
        items it did not return: a deletion the state has not taken (its key is still
        linked) is undone, by design. Those deletions may come back."""
        live = {
            r.external_id
            for r in self.world.id_rows()
            if r.system == self.name and r.deleted_at is None
        }
        for gone in self.world.deleted:
            if gone.system == self.name and gone.key in live:
                gone.restorable = True

    def before_request(self, scope: dict[str, Any]) -> None:
        expiring = getattr(self, "expire_while_paging", None)
        if expiring is not None and _graph_next_page(scope):
            self.expire_while_paging = None
            self.state.expire_delta_tokens(expiring)

    def answered(self, scope: dict[str, Any], status: int) -> None:
        if status == 410:
            FIRED[f"410 {self.state.resync_code}"] += 1
            if self.state.resync_code == UPLOAD_DIFFERENCES:
                self.uploading = True
                self._restorable()

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


class ObservedSalesforceObject(SalesforceObject):
    """The Salesforce block, telling its side while a read opens: its requests up to the
    first page's answer (token, getDeleted, the query) all come before the query sees the
    records, so a change committed at one of them is one this read returns."""

    _block_type_slug = "twoway-harness-salesforce-object"  # not registered in place of the real one
    _side: Any = PrivateAttr(None)

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        self._side.opening = True
        try:
            for page in super().read_pages(cursor):
                self._side.opening = False
                yield page
        finally:
            self._side.opening = False


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
        # the org's id from the world's seed: its record ids (and their order) are the same
        # on every replay, whichever orgs this process made before
        pod = sfid.base62(side_seed(world, name) % (62 * 62), 2)
        self.state = SalesforceState(
            clock=world.clock, faults=self.plan, seed=world.seed, org_id=sfid.make_id("00D", pod, 1)
        )
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
        block = ObservedSalesforceObject(
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
        block.use_retry_hooks(self.sleep, self.world.rng)
        block._side = self
        self.paging.hook = between_pages
        return block

    opening = False  # a read is between its start and its first page

    # -- long transactions: a change stamped now, seen when it commits --------------------

    def update_in_transaction(self, key: str, values: dict[str, str], lag: float) -> bool:
        """A person's change in a transaction that commits ``lag`` seconds from now; False
        when the record is gone or locked."""
        self.settle()
        try:
            self.state.user_update(
                self.COLLECTION, key, self._fields(values), user=self.person, commit_lag=lag
            )
        except SfError:
            return False
        return True

    def pending(self) -> list[tuple[datetime, str, datetime]]:
        """(commits at, record, stamped at) of the transactions still open."""
        return [(due, rid, rec["SystemModstamp"]) for due, _, rid, rec in self.state._uncommitted]

    def settle(self, first_read: bool = False) -> None:
        """Commit the transactions whose time has come, as the simulator would on its next
        request, and note when their changes became visible: then, or (``first_read``: the
        request opens the extraction, whose query will see them) at their stamp, no
        earlier than the previous extraction's start, so that extraction is the one that
        must return them."""
        now = self.state.now()
        due = [(rid, stamp) for at, rid, stamp in self.pending() if at <= now]
        if not due:
            return
        self.state.commit_due()
        floor = self.read_floor
        for rid, stamp in due:
            seen = max(stamp, floor or stamp) if first_read else self.world.clock()
            self.world.true_change[(self.name, rid)] = seen
            FIRED["commit lag: a change committed late"] += 1

    read_floor: datetime | None = None  # where the extraction check's window starts

    def before_request(self, scope: dict[str, Any]) -> None:
        if scope["path"].endswith("/deleted/") and self.pending():
            FIRED["commit lag: latestDateCovered held back"] += 1
        self.settle(first_read=self.opening)

    def answered(self, scope: dict[str, Any], status: int) -> None:
        if status == 400 and scope["path"].endswith("/deleted/"):
            FIRED["getDeleted refused after a purge"] += 1

    def insert(self, values: dict[str, str]) -> str:
        self.settle()
        return super().insert(values)

    def update(self, key: str, values: dict[str, str], as_account: bool = False) -> bool:
        self.settle()
        return super().update(key, values, as_account)

    def remove(self, key: str) -> bool:
        self.settle()
        return super().remove(key)

    def live_keys(self) -> list[str]:
        self.settle()
        return sorted(r["Id"] for r in self.state.records(self.COLLECTION))

    def rows(self) -> dict[str, dict[str, str]]:
        self.settle()
        return {
            r["Id"]: {f: r.get(col) for f, col in self.COLUMNS.items()}
            for r in self.state.records(self.COLLECTION)
        }


class SaasMachine(SyncMachine):
    """A machine over simulators: each run gets fresh connections (as a run that builds its
    endpoints does), so the retry deadline bounds the waits of one run, not of all."""

    def _sides(self, kind: type[SimulatorSide]) -> list[Any]:
        return [s for s in self.world.sides.values() if isinstance(s, kind)]

    def _run(self, steps=None, direction=None):  # type: ignore[no-untyped-def]
        for name, side in self.world.sides.items():
            if isinstance(side, SimulatorSide):
                self.world.endpoints[name].inner.close()
        self._floors()
        try:
            return super()._run(steps, direction)
        finally:
            for side in self._sides(GraphSide):
                side.uploading = False

    def _check_extraction(self, starts: dict[str, datetime | None]) -> None:
        super()._check_extraction(starts)
        self._floors()

    def _floors(self) -> None:
        """Tell the Salesforce sides where the extraction check's window starts now."""
        for side in self._sides(SalesforceSide):
            side.read_floor = self.prev_start.get(side.name)

    @rule(seconds=st.sampled_from([1, 30, 90, 300]))
    def service_asks_to_wait(self, seconds: int) -> None:
        """From now on, a throttled or unavailable service asks to wait ``seconds``."""
        for side in self._sides(SimulatorSide):
            side.plan.retry_after = seconds

    @rule(seconds=st.sampled_from([25, 60, 180, 480]), rate=st.sampled_from([0.1, 0.3, 0.6]))
    def run_while_throttled(self, seconds: int, rate: float) -> None:
        """A run the services throttle (429, 403 REQUEST_LIMIT_EXCEEDED) or turn away (503),
        asking to wait tens of seconds to minutes: waited out on the world's clock while
        people's clocks move on, or given up once the run's retry deadline would pass."""
        sides = self._sides(SimulatorSide)
        retry_after = {side.name: side.plan.retry_after for side in sides}
        for side in sides:
            side.throttle(rate, seconds)
        try:
            self._run()
        finally:
            for side in sides:
                side.set_faults(self.world.faults)
                side.plan.retry_after = retry_after[side.name]


class GraphFaults(SaasMachine):
    """Graph's own faults: a delta token that is gone (410 Gone, either resync code)."""

    @rule(code=st.sampled_from(sorted(RESYNC_CODES)), while_paging=st.booleans())
    def delta_token_expires(self, code: str, while_paging: bool) -> None:
        """Every delta and paging token expires: now (the next read's first call answers
        410 ``code``), or while the next run's read pages (then that run runs)."""
        for side in self._sides(GraphSide):
            if while_paging:
                side.expire_while_paging = code
            else:
                side.expire_delta_tokens(code)
        if while_paging:
            try:
                self._run()
            finally:
                for side in self._sides(GraphSide):
                    side.expire_while_paging = None


class SalesforceFaults(SaasMachine):
    """Salesforce's own faults: a purged recycle bin, and edits in long transactions."""

    @rule(everything=st.booleans(), delete=st.none() | st.integers(0, 50))
    def recycle_bin_purged(self, everything: bool, delete: int | None) -> None:
        """The recycle bin is emptied (or the records deleted over 10 s ago are purged from
        the delete log), after a person deletes record number ``delete`` when given (a hard
        delete): getDeleted refuses a start before the last one purged."""
        for side in self._sides(SalesforceSide):
            keys = self.world.keys(side.name)
            if delete is not None and keys:
                self.world.clock.advance(1)
                self.world.delete(side.name, keys[delete % len(keys)])
            before = None if everything else side.state.now() - timedelta(seconds=10)
            if side.state.purge_deleted(side.COLLECTION, before):
                FIRED["recycle bin purged"] += 1

    @rule(
        pick=st.integers(0, 50),
        field=st.sampled_from(FIELDS),
        lag=st.sampled_from([3.0, 12.0, 40.0, 200.0]),
    )
    def person_edits_in_a_long_transaction(self, pick: int, field: str, lag: float) -> None:
        """A person's change in a transaction open ``lag`` seconds: stamped now, seen when it
        commits, the record locked meanwhile; latestDateCovered stays below its stamp."""
        world = self.world
        for side in self._sides(SalesforceSide):
            keys = world.keys(side.name)
            if not keys:
                continue
            world.clock.advance(1)
            key, value = keys[pick % len(keys)], world.unique(field[0])
            before = world.true_change.get((side.name, key))
            if side.update_in_transaction(key, {field: value}, lag):
                FIRED["commit lag: an edit in a long transaction"] += 1
                world._note_if_unconfirmed(side.name, key, {field: value})
                world._log(side.name, key, {field: value})
                # not a change any read can see yet: it counts once it commits
                if before is None:
                    world.true_change.pop((side.name, key), None)
                else:
                    world.true_change[(side.name, key)] = before


class SharePointAndSql(GraphFaults):
    """A SharePoint list and a SQL table."""

    sides = (GraphSide, SqlSide)


class SalesforceAndSql(SalesforceFaults):
    """A Salesforce object and a SQL table."""

    sides = (SalesforceSide, SqlSide)


class SharePointSalesforceSql(GraphFaults, SalesforceFaults):
    """A SharePoint list, a Salesforce object and a SQL table, all three in step."""

    sides = (GraphSide, SalesforceSide, SqlSide)
