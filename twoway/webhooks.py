"""The webhook receiver: change notifications in, Prefect events out.

Systems tell us that a sync's data changed; the receiver checks that the notification is
genuine, answers at once (``202``) and, in the background, emits the Prefect event
``twoway.changes.notified`` for resource ``twoway.sync.<NAME>``. The deployment of that
sync has a ``triggers:`` section (prefect.yaml) that creates a run when the event arrives.
Open-source Prefect servers have no inbound webhooks of their own, hence this receiver.

Routes (``twoway webhooks serve --port P``, on 127.0.0.1 unless told otherwise):

- ``POST /graph/{sync}/{system}``: Microsoft Graph change notifications for a SharePoint
  list. With ``?validationToken=...`` it is the subscription handshake: the token is
  echoed as ``text/plain`` at once. Otherwise every notification's ``clientState`` must
  equal the webhook secret of the system's credentials block; when none does, ``401``.
- ``POST /notify/{sync}/{system}``: Salesforce (an Apex callout or a Flow's HTTP action)
  and in-house systems: a JSON body with ``X-Twoway-Timestamp: <unix seconds>`` and
  ``X-Twoway-Signature: sha256=<hex>``, the HMAC-SHA256 with the system's webhook secret of
  ``<timestamp>.`` followed by the raw body (see :func:`sign`). A bad or missing signature,
  or a timestamp more than ``TOLERANCE_SECONDS`` (5 minutes) away from our clock, gets
  ``401`` and triggers nothing. The same notification delivered again (same
  ``X-Twoway-Delivery`` id, or the same signature when there is no id) is answered ``202``
  and processed once.
- ``POST /directus/{sync}/{system}``: a Directus Flow with an event hook trigger
  (``items.create``, ``items.update``, ``items.delete`` on the collection) and a
  "Webhook / Request URL" operation whose header ``X-Twoway-Secret`` carries the system's
  webhook secret (compared in constant time; wrong or missing: ``401``) and whose body is
  ``{{$trigger}}``. An event other than an item create, update or delete gets ``400``.
- ``GET /healthz``: counters, for monitoring.

Every body is refused before it is parsed when it is larger than ``MAX_BODY`` (``413``) or
not ``application/json`` (``415``; checked after the signature on ``/notify``, so an
unsigned request learns nothing but ``401``). A notification is only a hint that something
changed: nothing in it is written anywhere; the run it asks for re-reads the systems.

Secrets: the ``webhook_secret`` of the integration-account credentials block that the
system's ``block`` names in the definition (or that an endpoint block nests), or the
system's own ``webhook_secret`` key (``kind: directus``, written as ``${ENV_VAR}``). They stay
``SecretStr``, are compared in constant time and never logged.

Debounce: a burst of notifications for one sync leads to one run now and at most one
queued. Before emitting, the receiver asks the Prefect API whether the sync's deployment
already has a run that has not started yet (scheduled to start now, pending, or waiting
for the concurrency slot), or whether the event it emitted last has not become a run yet;
then that run will read the change and no event is emitted. The deployment's polling
schedule stays as the safety net for notifications that never arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote

import anyio.to_thread
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from twoway import catalog
from twoway.definition import Definition
from twoway.errors import DefinitionError, Fatal, TwowayError

log = logging.getLogger("twoway.webhooks")

EVENT_NAME = "twoway.changes.notified"
SIGNATURE_HEADER = "X-Twoway-Signature"
TIMESTAMP_HEADER = "X-Twoway-Timestamp"
DELIVERY_HEADER = "X-Twoway-Delivery"
SECRET_HEADER = "X-Twoway-Secret"  # Directus Flows send the shared secret itself
DIRECTUS_EVENTS = ("items.create", "items.update", "items.delete")
TOLERANCE_SECONDS = 300.0  # how far a signed timestamp may be from our clock, either way
DEFAULT_DEPLOYMENT = "twoway-sync/{sync}"
MAX_BODY = 1_000_000  # bytes; Graph notifications are a few KB
SECRET_TTL = 60.0  # seconds a secret read from a block is cached (rotations apply after)
SETTLE_SECONDS = 30.0  # how long an emitted event may take to become a flow run
SOON = timedelta(seconds=5)  # a scheduled run starting within this counts as waiting
#: Graph allows list subscriptions up to 42,300 minutes; renew well before that
SUBSCRIPTION_MINUTES = 41_760  # 29 days


def resource_id(sync: str) -> str:
    """The Prefect resource id of a sync in the events the receiver emits."""
    return f"twoway.sync.{sync}"


def sign(body: bytes, secret: SecretStr | str, timestamp: int | str | None = None) -> str:
    """The ``X-Twoway-Signature`` value: ``sha256=`` and the hex HMAC-SHA256.

    With ``timestamp`` (what the receiver requires, sent as ``X-Twoway-Timestamp``) the MAC
    covers ``b"<timestamp>." + body``, so an old notification cannot be replayed with a
    fresh timestamp; without it, the body alone.
    """
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    signed = body if timestamp is None else f"{timestamp}.".encode("ascii") + body
    return "sha256=" + hmac.new(key.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def signed_headers(body: bytes, secret: SecretStr | str, now: float | None = None) -> dict:
    """The headers a sender puts on a notification to ``/notify`` (timestamp, signature)."""
    stamp = int(time.time() if now is None else now)
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(stamp),
        SIGNATURE_HEADER: sign(body, secret, stamp),
    }


def signature_ok(
    body: bytes, header: str | None, secret: SecretStr, timestamp: str | None = None
) -> bool:
    """True when ``header`` is the HMAC-SHA256 of ``body`` (``sha256=<hex>`` or bare hex),
    compared in constant time; with ``timestamp``, of ``<timestamp>.`` and the body."""
    if not header:
        return False
    given = header.strip()
    given = given[7:] if given.lower().startswith("sha256=") else given
    expected = sign(body, secret, timestamp)[7:]
    return hmac.compare_digest(given.lower().encode("ascii", "replace"), expected.encode())


def timestamp_problem(value: str | None, now: float, tolerance: float = TOLERANCE_SECONDS):
    """Why an ``X-Twoway-Timestamp`` is not acceptable at ``now`` (None when it is)."""
    if value is None:
        return f"missing {TIMESTAMP_HEADER}"
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        return f"{TIMESTAMP_HEADER} must be whole Unix seconds"
    if abs(int(text) - now) > tolerance:
        return f"{TIMESTAMP_HEADER} is more than {tolerance:.0f} s away from our clock"
    return None


def is_json_content(content_type: str | None) -> bool:
    """True for ``application/json`` (parameters such as ``charset`` allowed)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class SeenDeliveries:
    """Delivery ids seen within the tolerance window: a replay is processed once."""

    def __init__(self, keep: float = 2 * TOLERANCE_SECONDS, limit: int = 100_000):
        self.keep = keep
        self.limit = limit
        self._seen: dict[str, float] = {}

    def first_time(self, key: str, now: float) -> bool:
        """Record ``key``; False when it was seen within the last ``keep`` seconds."""
        if len(self._seen) >= self.limit or len(self._seen) % 1000 == 999:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.keep}
            while len(self._seen) >= self.limit:  # a flood: forget the oldest
                self._seen.pop(next(iter(self._seen)))
        seen = self._seen.get(key)
        if seen is not None and now - seen < self.keep:
            return False
        self._seen[key] = now
        return True


def client_state_ok(value: Any, secret: SecretStr) -> bool:
    """True when a Graph notification's ``clientState`` is the system's webhook secret."""
    if not isinstance(value, str):
        return False
    return hmac.compare_digest(value.encode("utf-8"), secret.get_secret_value().encode("utf-8"))


# -- where secrets come from ------------------------------------------------------------


class SecretSource(Protocol):
    """Gives the webhook secret of one system of a sync (None when it has none)."""

    def __call__(self, sync: str, system: str) -> SecretStr | None: ...


def block_secret(sync: str, system: str) -> SecretStr | None:
    """The ``webhook_secret`` of the credentials block behind a system of a sync.

    Raises DefinitionError when the sync or the system does not exist.
    """
    return system_secret(catalog.load(sync), system)


def system_secret(definition: Definition, system: str) -> SecretStr | None:
    """The webhook secret of a system of a loaded definition (see :func:`block_secret`)."""
    if system not in definition.systems:
        known = ", ".join(sorted(definition.systems))
        raise DefinitionError(
            f"sync {definition.name!r} has no system {system!r} (its systems: {known})"
        )
    own = getattr(definition.systems[system], "webhook_secret", None)
    if own is not None:
        return own
    block_name = definition.systems[system].block
    if not block_name:
        return None
    from blocks.base import load_block
    from blocks.credentials import IntegrationAccountCredentials

    saved = load_block(block_name, f"systems.{system}")
    creds = saved if isinstance(saved, IntegrationAccountCredentials) else None
    if creds is None:
        creds = getattr(saved, "credentials", None)
    return getattr(creds, "webhook_secret", None) if creds is not None else None


class CachedSecrets:
    """Secrets per (sync, system), read through ``source`` and kept for ``ttl`` seconds."""

    def __init__(self, source: SecretSource = block_secret, ttl: float = SECRET_TTL):
        self.source = source
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, SecretStr | None]] = {}

    async def get(self, sync: str, system: str) -> SecretStr | None:
        key = (sync, system)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        secret = await anyio.to_thread.run_sync(self.source, sync, system)
        self._cache[key] = (time.monotonic(), secret)
        return secret


# -- debounce ---------------------------------------------------------------------------


@dataclass
class RunInfo:
    """What the debouncer needs to know about one flow run of a sync's deployment."""

    id: str
    waiting: bool  # not started yet: scheduled, pending or awaiting the concurrency slot


RunLister = Callable[[str], Awaitable[list[RunInfo] | None]]


async def prefect_runs(sync: str, deployment: str = DEFAULT_DEPLOYMENT) -> list[RunInfo] | None:
    """Runs of the sync's deployment expected to start by now (None: no such deployment)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    now = datetime.now(UTC)
    async with get_client() as client:
        try:
            found = await client.read_deployment_by_name(deployment.format(sync=sync))
        except ObjectNotFound:
            return None
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
            flow_run_filter=FlowRunFilter(
                expected_start_time=FlowRunFilterExpectedStartTime(
                    after_=now - timedelta(days=1), before_=now + SOON
                )
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=50,
        )
    waiting_types = {StateType.SCHEDULED, StateType.PENDING}
    return [
        RunInfo(id=str(r.id), waiting=r.state is not None and r.state.type in waiting_types)
        for r in runs
    ]


class Debouncer:
    """Decides, per sync, whether a notification needs a new run.

    A run that has not started yet will read every change made before it starts, so while
    one exists (or while the event emitted last has not become a run yet) no event is
    emitted. That gives one run now and at most one waiting, whatever the burst.
    """

    def __init__(
        self,
        runs: RunLister,
        settle: float = SETTLE_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.runs = runs
        self.settle = timedelta(seconds=settle)
        self.clock = clock
        self._emitted: dict[str, tuple[datetime, set[str]]] = {}

    async def needs_run(self, sync: str) -> bool:
        """True when an event should be emitted for ``sync`` now (and records it)."""
        now = self.clock()
        try:
            runs = await self.runs(sync)
        except Exception as exc:  # the API is down: better one run too many than none
            log.warning("cannot read the runs of %s (%s); emitting anyway", sync, exc)
            runs = []
        if runs is None:
            log.warning("no deployment found for sync %s; is it deployed?", sync)
            runs = []
        if any(r.waiting for r in runs):
            log.debug("%s: a run that has not started yet will pick the change up", sync)
            return False
        last = self._emitted.get(sync)
        new_runs = {r.id for r in runs} - last[1] if last is not None else set()
        if last is not None and now - last[0] < self.settle and not new_runs:
            log.debug("%s: the event emitted at %s has not become a run yet", sync, last[0])
            return False
        self._emitted[sync] = (now, {r.id for r in runs})
        return True


# -- emitting ---------------------------------------------------------------------------


Emitter = Callable[[str, dict[str, Any]], None]


def emit_prefect_event(sync: str, payload: dict[str, Any]) -> None:
    """Emit ``twoway.changes.notified`` for the sync; the deployment's trigger starts a run."""
    from prefect.events import emit_event

    emit_event(
        event=EVENT_NAME,
        resource={"prefect.resource.id": resource_id(sync), "prefect.resource.name": sync},
        payload=payload,
    )


# -- the ASGI app -----------------------------------------------------------------------


@dataclass
class Stats:
    received: int = 0
    refused: int = 0
    emitted: int = 0
    coalesced: int = 0
    handshakes: int = 0
    errors: int = 0
    duplicates: int = 0
    by_sync: dict[str, int] = field(default_factory=dict)


class Receiver:
    """Checks notifications, answers fast, and turns them into events in the background."""

    def __init__(
        self,
        *,
        secrets: CachedSecrets | None = None,
        debouncer: Debouncer | None = None,
        emit: Emitter = emit_prefect_event,
        known_sync: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
        tolerance: float = TOLERANCE_SECONDS,
    ):
        self.clock = clock
        self.tolerance = tolerance
        self.deliveries = SeenDeliveries(keep=2 * tolerance)
        self.secrets = secrets or CachedSecrets()
        self.debouncer = debouncer or Debouncer(prefect_runs)
        self.emit = emit
        self.known_sync = known_sync or _in_catalog
        self.stats = Stats()
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._queued: set[str] = set()
        self._worker: asyncio.Task[None] | None = None
        self._pending = 0
        self.idle = asyncio.Event()

    # the background worker -------------------------------------------------------------

    def _enqueue(self, sync: str, payload: dict[str, Any]) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        self.stats.by_sync[sync] = self.stats.by_sync.get(sync, 0) + 1
        if sync in self._queued:  # already waiting for the worker: one check covers both
            self.stats.coalesced += 1
            return
        self._queued.add(sync)
        self._pending += 1
        self.idle.clear()
        self._queue.put_nowait((sync, payload))

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            sync, payload = await self._queue.get()
            self._queued.discard(sync)
            try:
                if await self.debouncer.needs_run(sync):
                    await anyio.to_thread.run_sync(self.emit, sync, payload)
                    self.stats.emitted += 1
                    log.info("%s: change notified by %s; run requested", sync, payload["source"])
                else:
                    self.stats.coalesced += 1
            except Exception:
                self.stats.errors += 1
                log.exception("%s: could not request a run", sync)
            finally:
                self._pending -= 1
                if not self._pending:
                    self.idle.set()

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until queued notifications were handled (tests)."""
        if self._pending:
            await asyncio.wait_for(self.idle.wait(), timeout)

    # routes ------------------------------------------------------------------------------

    async def _secret(self, sync: str, system: str) -> SecretStr | None:
        try:
            return await self.secrets.get(sync, system)
        except TwowayError as exc:
            log.warning("%s/%s: no webhook secret (%s)", sync, system, exc)
            return None

    def _refuse(self, sync: str, system: str, why: str) -> Response:
        self.stats.refused += 1
        log.warning("refused a notification for %s/%s: %s", sync, system, why)
        return JSONResponse({"error": why}, status_code=401)

    async def graph(self, request: Request) -> Response:
        sync, system = request.path_params["sync"], request.path_params["system"]
        token = request.query_params.get("validationToken")
        if token is not None:
            # Graph's handshake: answer within 10 s with the token, as text, or no subscription
            if not self.known_sync(sync):
                return JSONResponse({"error": f"unknown sync {sync!r}"}, status_code=404)
            self.stats.handshakes += 1
            return PlainTextResponse(token, status_code=200)
        body = await _read_body(request)
        if body is None:
            return JSONResponse({"error": "body too large"}, status_code=413)
        if not is_json_content(request.headers.get("content-type")):
            return JSONResponse({"error": "Content-Type must be application/json"}, 415)
        try:
            notes = json.loads(body).get("value")
        except (ValueError, AttributeError, RecursionError):
            notes = None
        if not isinstance(notes, list) or not notes:
            return JSONResponse({"error": "expected {'value': [notifications]}"}, status_code=400)
        self.stats.received += len(notes)
        secret = await self._secret(sync, system)
        if secret is None:
            return self._refuse(sync, system, "no webhook secret is configured for this system")
        genuine = [
            n
            for n in notes
            if isinstance(n, dict) and client_state_ok(n.get("clientState"), secret)
        ]
        if not genuine:
            return self._refuse(sync, system, "clientState does not match")
        if len(genuine) < len(notes):
            self._refuse(
                sync, system, f"{len(notes) - len(genuine)} notifications with a wrong clientState"
            )
        self._enqueue(
            sync,
            {
                "source": "graph",
                "system": system,
                "notifications": len(genuine),
                "subscriptions": sorted({str(n.get("subscriptionId")) for n in genuine}),
            },
        )
        return Response(status_code=202)

    async def _body_and_secret(
        self, request: Request, sync: str, system: str
    ) -> tuple[bytes, SecretStr] | Response:
        """The body of a notification and the system's secret, or the refusal to answer."""
        body = await _read_body(request)
        if body is None:
            return JSONResponse({"error": "body too large"}, status_code=413)
        self.stats.received += 1
        secret = await self._secret(sync, system)
        if secret is None:
            return self._refuse(sync, system, "no webhook secret is configured for this system")
        return body, secret

    async def notify(self, request: Request) -> Response:
        sync, system = request.path_params["sync"], request.path_params["system"]
        checked = await self._body_and_secret(request, sync, system)
        if isinstance(checked, Response):
            return checked
        body, secret = checked
        now = self.clock()
        stamp = request.headers.get(TIMESTAMP_HEADER)
        signature = request.headers.get(SIGNATURE_HEADER)
        stale = timestamp_problem(stamp, now, self.tolerance)
        if stale:
            return self._refuse(sync, system, stale)
        if not signature_ok(body, signature, secret, stamp.strip()):  # type: ignore[union-attr]
            return self._refuse(sync, system, f"bad or missing {SIGNATURE_HEADER}")
        if not is_json_content(request.headers.get("content-type")):
            return JSONResponse({"error": "Content-Type must be application/json"}, 415)
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict | list):
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        delivery = request.headers.get(DELIVERY_HEADER) or signature.strip().lower()  # type: ignore[union-attr]
        if not self.deliveries.first_time(f"{sync}/{system}/{delivery}", now):
            self.stats.duplicates += 1
            log.info("%s/%s: notification delivered again; already processed", sync, system)
            return Response(status_code=202)
        # only a hint: the run re-reads the systems, nothing of the body is passed on
        self._enqueue(sync, {"source": "signed", "system": system})
        return Response(status_code=202)

    async def directus(self, request: Request) -> Response:
        """A Directus Flow's event hook: the shared secret in ``X-Twoway-Secret``."""
        sync, system = request.path_params["sync"], request.path_params["system"]
        checked = await self._body_and_secret(request, sync, system)
        if isinstance(checked, Response):
            return checked
        body, secret = checked
        if not client_state_ok(request.headers.get(SECRET_HEADER), secret):
            return self._refuse(sync, system, f"bad or missing {SECRET_HEADER}")
        if not is_json_content(request.headers.get("content-type")):
            return JSONResponse({"error": "Content-Type must be application/json"}, 415)
        try:
            event = json.loads(body).get("event")
        except (ValueError, AttributeError, RecursionError):
            event = None
        if not isinstance(event, str) or not event.endswith(DIRECTUS_EVENTS):
            return JSONResponse(
                {
                    "error": "expected a Directus event hook body with 'event': '<collection>."
                    "items.create|update|delete'"
                },
                status_code=400,
            )
        self._enqueue(sync, {"source": "directus", "system": system, "event": event})
        return Response(status_code=202)

    async def health(self, request: Request) -> Response:
        s = self.stats
        return JSONResponse(
            {
                "received": s.received,
                "refused": s.refused,
                "emitted": s.emitted,
                "coalesced": s.coalesced,
                "handshakes": s.handshakes,
                "errors": s.errors,
                "duplicates": s.duplicates,
            }
        )

    def app(self) -> Starlette:
        """The receiver as an ASGI app."""
        app = Starlette(
            routes=[
                Route("/graph/{sync}/{system}", self.graph, methods=["POST"]),
                Route("/notify/{sync}/{system}", self.notify, methods=["POST"]),
                Route("/directus/{sync}/{system}", self.directus, methods=["POST"]),
                Route("/healthz", self.health, methods=["GET"]),
            ]
        )
        app.state.receiver = self
        return app


def _in_catalog(sync: str) -> bool:
    try:
        catalog.resolve(sync)
    except DefinitionError:
        return False
    return not catalog.looks_like_path(sync)


async def _read_body(request: Request) -> bytes | None:
    """The raw body, or None when it is larger than ``MAX_BODY`` (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(**kwargs: Any) -> Starlette:
    """A receiver app with Prefect events and block secrets (see :class:`Receiver`)."""
    return Receiver(**kwargs).app()


# -- Graph subscriptions ----------------------------------------------------------------


def subscribe(
    sync: str,
    public_url: str,
    *,
    systems: list[str] | None = None,
    minutes: int = SUBSCRIPTION_MINUTES,
) -> list[dict[str, Any]]:
    """Create, or renew, the Graph subscriptions of a sync's SharePoint lists.

    Each list gets one subscription whose ``notificationUrl`` is
    ``{public_url}/graph/{sync}/{system}`` and whose ``clientState`` is the system's webhook
    secret; an existing one (same URL and list) gets a new expiration instead. Graph calls
    the receiver for the validation handshake while this waits, so the receiver must be
    serving at ``public_url``. Returns one summary per subscription (no secrets).
    """
    from blocks.sharepoint import check_notification_url
    from twoway.connectors import open_endpoint

    definition = catalog.load(sync)
    lists = [s for s, spec in definition.systems.items() if spec.kind == "sharepoint"]
    if systems:
        unknown = [s for s in systems if s not in lists]
        if unknown:
            raise DefinitionError(
                f"sync {definition.name!r} has no SharePoint system {', '.join(unknown)} "
                f"(its SharePoint systems: {', '.join(lists) or 'none'})"
            )
        lists = list(systems)
    if not lists:
        raise DefinitionError(f"sync {definition.name!r} has no SharePoint list to subscribe to")
    urls = {
        system: f"{public_url.rstrip('/')}/graph/{quote(definition.name)}/{quote(system)}"
        for system in lists
    }
    for system in lists:  # before any block is loaded or request sent
        check_notification_url(definition.systems[system].graph_url, urls[system])
    out = []
    for system in lists:
        secret = system_secret(definition, system)
        if secret is None:
            raise DefinitionError(
                f"systems.{system}: the credentials block has no webhook_secret; Graph needs "
                "it as the clientState that proves a notification genuine"
            )
        endpoint = open_endpoint(definition, system)
        try:
            out.append(
                endpoint.subscribe(urls[system], secret, minutes)
                | {"sync": definition.name, "system": system}
            )
        finally:
            endpoint.close()
    return out


# -- serving ----------------------------------------------------------------------------


def serve(
    port: int,
    host: str = "127.0.0.1",
    *,
    deployment: str = DEFAULT_DEPLOYMENT,
    subscribe_syncs: list[str] | None = None,
    public_url: str | None = None,
    renew_hours: float = 24.0,
) -> None:
    """Run the receiver in the foreground until interrupted (``twoway webhooks serve``).

    With ``subscribe_syncs``, once listening it creates or renews those syncs' Graph
    subscriptions, and renews them every ``renew_hours``.
    """
    import uvicorn
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise Fatal(
            "PREFECT_API_URL is not set: the receiver's events would go to a temporary "
            "server and trigger nothing. Point it at your Prefect server, e.g. "
            "prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )

    async def runs(sync: str) -> list[RunInfo] | None:
        return await prefect_runs(sync, deployment)

    receiver = Receiver(debouncer=Debouncer(runs))
    config = uvicorn.Config(
        receiver.app(), host=host, port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    base = public_url or f"http://{host}:{port}"
    print(f"twoway webhook receiver on http://{host}:{port}", flush=True)
    print(f"  Graph notifications:  {base}/graph/SYNC/SYSTEM", flush=True)
    print(
        f"  signed notifications: {base}/notify/SYNC/SYSTEM  ({TIMESTAMP_HEADER}, {SIGNATURE_HEADER})",
        flush=True,
    )
    if subscribe_syncs:
        threading.Thread(
            target=_keep_subscribed,
            args=(server, subscribe_syncs, base, renew_hours),
            name="graph-subscriptions",
            daemon=True,
        ).start()
    server.run()


def _keep_subscribed(server: Any, syncs: list[str], base: str, renew_hours: float) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    while not server.should_exit:
        for sync in syncs:
            try:
                for sub in subscribe(sync, base):
                    print(
                        f"{sub['sync']}/{sub['system']}: subscription {sub['id']} "
                        f"{sub['action']}, expires {sub['expirationDateTime']}",
                        flush=True,
                    )
            except TwowayError as exc:
                log.error("%s: could not subscribe: %s", sync, exc)
                print(f"{sync}: could not subscribe: {exc}", flush=True)
        deadline = time.monotonic() + renew_hours * 3600
        while time.monotonic() < deadline and not server.should_exit:
            time.sleep(1)
