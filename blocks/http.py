"""The HTTP endpoint base: what the SharePoint, Salesforce and REST blocks share.

A block built on :class:`HttpEndpointBlock` says only what is its system's own (how it
authenticates, which extra statuses and error codes mean "try again" or "stop", its paths
and shapes) and sends every request through :meth:`HttpEndpointBlock.http`, one
:class:`HttpClient` per endpoint that:

- holds one ``httpx.Client`` with the block's timeout, made on first use, dropped when the
  block is pickled or closed;
- puts the credentials of one :class:`Authenticator` on each request (OAuth client
  credentials renewed on a 401, a static bearer token, or none);
- classifies every answer in one place (:meth:`HttpClient.classify`): retriable (408, 423,
  425, 429, 500, 502, 503, 504, the system's own lock codes), honouring ``Retry-After``;
  fatal; or the caller's to read (per-record errors: :func:`record_error`);
- retries with the project's one :class:`~twoway.retry.RetryPolicy`, and never sends a
  request that must not be applied twice again once it may have been applied
  (:data:`OUTCOME_UNKNOWN`, a transport failure after sending);
- names URLs and headers in messages and logs only through :func:`safe_url` and
  :func:`safe_headers`.

- waits as long as a ``Retry-After`` asks, within the endpoint's retry deadline.

:func:`overlap_start` and :func:`cursor_text` are the cursor-with-overlap rule of the
blocks that read changes since a timestamp.

A new connector declares its fields (``retry_attempts`` and ``retry_deadline_seconds``
among them), then::

    class Collection(HttpEndpointBlock):
        _retriable = RETRIABLE_STATUSES | {409}       # optional: its own extra statuses
        _codes = {"RECORD_LOCKED": Retriable}          # optional: its own error codes

        def _authenticator(self) -> Authenticator:
            return BearerToken(self.credentials.token)  # or ClientCredentials, NoAuth

        def _timeout(self) -> float:
            return self.timeout

        def read(self, keys):
            reply = self.http().send("GET", url, params={...})  # retried, classified
            ...

``send(..., once=True)`` for a request that must not be applied twice (a create without
an idempotency key); ``send(..., ok=None)`` to read any status; ``send(..., retry=False)``
with :meth:`HttpClient.retry_failed` to retry only the refused requests of a set.
"""

from __future__ import annotations

import abc
import json
import logging
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import httpx
from pydantic import PrivateAttr, SecretStr

from blocks.base import SETUP_LOCK, EndpointBlock
from twoway import jsontext
from twoway.errors import Fatal, PreconditionFailed, Retriable, Skippable, SyncError
from twoway.retry import RetryPolicy, retry_after_seconds
from twoway.values import parse_timestamp

logger = logging.getLogger("twoway.http")

K = TypeVar("K")

#: answers worth another try on every system: timeout, locked, too early, throttled,
#: server trouble
RETRIABLE_STATUSES = frozenset({408, 423, 425, 429, 500, 502, 503, 504})
#: answers after which a request may have been applied (a gateway gave up on a backend
#: still working): a request that must not be applied twice is not sent again after these
OUTCOME_UNKNOWN = frozenset({500, 502, 504})
#: transport failures that happen before a request leaves: safe to send it again
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: the text form of timestamp cursors
CURSOR_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
TOKEN_MARGIN = 60.0  # seconds before expiry a cached token is renewed

#: query parameters and headers whose values are masked in messages and logs
_SECRET_WORDS = ("token", "key", "secret", "password", "sig", "code", "auth", "cookie")
_PUBLIC_PARAMS = frozenset({"$skiptoken"})


# -- redaction ----------------------------------------------------------------------------


def safe_url(url: str | httpx.URL, *, query: bool = True) -> str:
    """``url`` fit for a message: no user info, secret-looking query values masked (with
    ``query=False`` the query string is left out)."""
    try:
        parsed = httpx.URL(str(url))
    except Exception:
        return "<unparseable URL>"
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    if parsed.query and not query:
        parsed = parsed.copy_with(query=None)
    elif parsed.query:
        pairs = [
            f"{quote(k, safe='$')}=" + ("***" if _secret(k) else quote(v, safe=""))
            for k, v in parsed.params.multi_items()
        ]
        parsed = parsed.copy_with(query="&".join(pairs).encode("ascii"))
    return str(parsed)


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` fit for a log: the values of credentials and secret-looking names masked."""
    return {k: "***" if _secret(k) else v for k, v in headers.items()}


def _secret(name: str) -> bool:
    lowered = name.lower()
    return lowered not in _PUBLIC_PARAMS and any(w in lowered for w in _SECRET_WORDS)


# -- answers ------------------------------------------------------------------------------


@dataclass
class Reply:
    """One answer: its status, headers (case-insensitive) and JSON body (None when empty)."""

    status: int
    headers: httpx.Headers
    body: Any

    @property
    def retry_after(self) -> float | None:
        """The ``Retry-After`` the answer asks for, in seconds."""
        return retry_after_seconds(self.headers.get("retry-after"))


def error_of(body: Any) -> tuple[str | None, str | None]:
    """A system's own error code and message from an error body: Salesforce's
    ``[{"errorCode", "message"}]``, Graph's ``{"error": {"code", "message"}}``, OAuth's
    ``{"error", "error_description"}``, Directus's ``{"errors": [{"message", "extensions":
    {"code"}}]}`` or a plain ``{"message"}``."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        first = body[0]
        return _text(first.get("errorCode") or first.get("statusCode")), _text(first.get("message"))
    if not isinstance(body, dict):
        return None, None
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        extensions = errors[0].get("extensions")
        code = extensions.get("code") if isinstance(extensions, dict) else None
        return _text(code), _text(errors[0].get("message"))
    error = body.get("error")
    if isinstance(error, dict):
        return _text(error.get("code")), _text(error.get("message"))
    if error is not None:
        return _text(error), _text(body.get("error_description"))
    return None, _text(body.get("message"))


def reason(body: Any) -> str:
    """``: CODE: message`` of an error body, shortened (empty when it has neither)."""
    code, message = error_of(body)
    parts = [p for p in (code, message[:200] if message else None) if p]
    return f": {': '.join(parts)}" if parts else ""


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def record_error(
    status: int, what: str, detail: str = "", *, deleting: bool, retry_after: float | None = None
) -> SyncError | None:
    """The error of one record's failed write (a batch sub-answer, one request of a set),
    ``detail`` being the system's :func:`reason`: 412 is a precondition failure, a
    retriable status stays retriable, anything else parks the record. None when a delete
    meets a record already gone: its goal holds."""
    if deleting and status in (404, 410):
        return None
    if status == 412:
        return PreconditionFailed(f"{what} changed since it was read (412)", status=412)
    if status in RETRIABLE_STATUSES or status == 0:
        return Retriable(
            f"{what}: {status}{detail} after retries",
            status=status or None,
            retry_after=retry_after,
        )
    if status == 404:
        return Skippable(f"{what} does not exist", status=404)
    return Skippable(f"{what}: {status}{detail}", status=status)


def _parse_body(response: httpx.Response, where: str, retriable: Collection[int]) -> Any:
    """The JSON body of ``response`` (None when empty). An HTML page, malformed or truncated
    JSON is an error: Retriable when the status says the server is in trouble or the text
    stops early, Fatal otherwise (the URL is probably not the JSON API)."""
    content = response.content
    if not content.strip():
        return None
    try:
        return jsontext.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        status = response.status_code
        kind = response.headers.get("content-type", "").split(";")[0].strip() or "no content type"
        transient = status in retriable or status >= 500
        if "html" in kind:
            message = f"{where}: answered {status} with an HTML page, not JSON"
        elif isinstance(exc, json.JSONDecodeError) and (
            exc.pos >= len(content.rstrip()) - 1 or exc.msg.startswith("Unterminated string")
        ):
            message = f"{where}: the JSON answer ({status}) stops early (truncated body)"
            transient = True
        else:
            message = f"{where}: answered {status} with malformed JSON ({kind})"
        if transient:
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            raise Retriable(message, status=status, retry_after=retry_after) from None
        raise Fatal(message, status=status) from None


def _transport_reason(exc: httpx.TransportError) -> str:
    """The error's own words, first line only (no URLs with secrets, no headers)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


class _OutcomeUnknown(Exception):
    """Carries a Retriable past the retry policy: the request may have been applied."""

    def __init__(self, error: Retriable):
        super().__init__(str(error))
        self.error = error


# -- authenticators -----------------------------------------------------------------------


class Authenticator(abc.ABC):
    """Puts an endpoint's credentials on its requests."""

    @abc.abstractmethod
    def authorization(self, http: HttpClient) -> str | None:
        """The ``Authorization`` header value to send (None: send none)."""

    def renew(self, refused: str | None) -> bool:
        """Forget credentials the server refused (401); True when a new try may pass."""
        return False

    def reset(self) -> None:
        """Forget what was cached (the endpoint closed)."""


class NoAuth(Authenticator):
    """Requests go without credentials."""

    def authorization(self, http: HttpClient) -> str | None:
        return None


class BearerToken(Authenticator):
    """A static bearer token; a 401 is final, since no other token can be had."""

    def __init__(self, token: SecretStr):
        self._token = token

    def authorization(self, http: HttpClient) -> str | None:
        return f"Bearer {self._token.get_secret_value()}"


class ClientCredentials(Authenticator):
    """OAuth 2.0 client credentials: a token asked for on first use, cached until shortly
    before ``expires_in`` (or until refused when the answer gives none), asked for again
    once when a request is refused with 401. ``on_grant`` sees each token answer (its
    ``instance_url``, ``id``) and may refuse it by raising Fatal."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        *,
        scope: str | None = None,
        on_grant: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.token_url = token_url
        self._form = {"grant_type": "client_credentials", "client_id": client_id}
        self._secret = client_secret
        if scope:
            self._form["scope"] = scope
        self._on_grant = on_grant
        self._token: str | None = None
        self._expires = 0.0

    def authorization(self, http: HttpClient) -> str | None:
        with SETUP_LOCK:
            if self._token is None or time.monotonic() >= self._expires - TOKEN_MARGIN:
                self._token = None
                self._grant(http)
            return f"Bearer {self._token}"

    def renew(self, refused: str | None) -> bool:
        with SETUP_LOCK:
            if refused == f"Bearer {self._token}":  # another thread may have renewed it
                self._token = None
        return True

    def reset(self) -> None:
        self._token = None

    def _grant(self, http: HttpClient) -> None:
        where = f"the token endpoint {safe_url(self.token_url, query=False)}"
        form = {**self._form, "client_secret": self._secret.get_secret_value()}
        reply = http.send("POST", self.token_url, data=form, ok=None, authenticate=False)
        body = reply.body if isinstance(reply.body, dict) else {}
        if reply.status != 200 or not body.get("access_token"):
            raise Fatal(
                f"{where} refused the client credentials ({reply.status} {_grant_error(body)})",
                status=reply.status,
            )
        if self._on_grant is not None:
            self._on_grant(body)
        try:
            lifetime = float(body["expires_in"]) if "expires_in" in body else float("inf")
        except (TypeError, ValueError):
            raise Fatal(f"{where}: unreadable expires_in in its answer") from None
        self._token = str(body["access_token"])
        self._expires = time.monotonic() + lifetime


def _grant_error(body: dict[str, Any]) -> str:
    """The OAuth error and, from Entra ID, the AADSTS number; its descriptions (which carry
    trace ids) only when there is no number."""
    codes = body.get("error_codes") or []
    if codes:
        return f"{body.get('error', 'error')} AADSTS{codes[0]}"
    description = str(body.get("error_description") or "")[:200]
    return f"{body.get('error', 'error')}" + (f": {description}" if description else "")


# -- the client ---------------------------------------------------------------------------


class HttpClient:
    """One endpoint's HTTP client: credentials, classification, retries, the send-once rule.

    ``retriable`` are the statuses worth another try; ``codes`` maps a system's own error
    codes (Salesforce's ``UNABLE_TO_LOCK_ROW``) to the error they mean, ahead of the
    status, except that an answer with ``Retry-After`` is always retriable (the server says
    when to come back); ``note`` adds what an answer's headers tell (quota used) to the
    errors it means; ``origin`` (scheme, host and port of a URL), when set, is the only
    place authenticated requests may go; ``deadline`` is the most seconds the client waits
    between retries in all (a wait that would pass it raises Fatal instead).
    """

    def __init__(
        self,
        *,
        timeout: float,
        auth: Authenticator,
        policy: RetryPolicy,
        sleep: Callable[[float], Any] = time.sleep,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
        retriable: Collection[int] = RETRIABLE_STATUSES,
        codes: Mapping[str, type[SyncError]] | None = None,
        note: Callable[[Reply], str] | None = None,
        origin: str | None = None,
        deadline: float = float("inf"),
    ):
        self.auth = auth
        self.deadline = deadline
        self.waited = 0.0  # seconds spent waiting between retries, against ``deadline``
        self.policy = policy
        self.timeout = timeout
        self.retriable = frozenset(retriable)
        self.codes = dict(codes or {})
        self.note = note
        self.origin = httpx.URL(origin) if origin else None
        self.requests = 0  # requests sent to the API, retries included, token requests not
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._client = httpx.Client(
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the connections and forget cached credentials."""
        self._client.close()
        self.auth.reset()

    def classify(self, reply: Reply, where: str) -> SyncError | None:
        """The error an answer means on its own: a system code listed in ``codes``, or a
        retriable status (honouring ``Retry-After``); None leaves it to the caller."""
        code, _ = error_of(reply.body)
        kind = self.codes.get(code or "")
        if kind is not None and reply.retry_after is not None:
            kind = Retriable
        if kind is None and reply.status in self.retriable:
            kind = Retriable
        if kind is None:
            return None
        message = f"{where}: refused with {reply.status}{reason(reply.body)}"
        if self.note is not None:
            message += self.note(reply)
        if kind is Retriable:
            return Retriable(message, status=reply.status, retry_after=reply.retry_after)
        return kind(message, status=reply.status)

    def send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        ok: Collection[int] | None = range(200, 300),
        once: bool = False,
        retry: bool = True,
        authenticate: bool = True,
        **request: Any,
    ) -> Reply:
        """One request under the retry policy; ``request`` holds httpx's ``params``,
        ``json``, ``data``, ``content``, ``headers``.

        A 401 renews the credentials once. A status outside ``ok`` (None: any status) is
        Fatal. With ``once`` (a request that must not be applied twice), a failure after
        which it may have been applied raises Retriable at once, without another try; with
        ``retry`` off, every transient failure does (the caller retries a set of requests
        with :meth:`retry_failed`).
        """
        where = f"{method} {safe_url(url)}"
        if authenticate:
            self._check_origin(url)
        renewed = False

        def attempt() -> Reply:
            nonlocal renewed
            headers = dict(request.get("headers") or {})
            authorization = self.auth.authorization(self) if authenticate else None
            if authorization:
                headers["Authorization"] = authorization
            reply = self._exchange(
                method, url, {**request, "headers": headers}, where, once, authenticate
            )
            if reply.status == 401 and authenticate:
                if not renewed and self.auth.renew(authorization):
                    renewed = True
                    return attempt()
                fresh = " with a fresh token" if renewed else ""
                raise Fatal(
                    f"{where}: authentication refused (401){fresh}{reason(reply.body)}; check "
                    "the integration account's credentials",
                    status=401,
                )
            error = self.classify(reply, where)
            if isinstance(error, Retriable) and once and reply.status in OUTCOME_UNKNOWN:
                raise _OutcomeUnknown(error)
            if error is not None:
                raise error
            return reply

        try:
            reply = (
                self.policy.call(attempt, sleep=self._wait, rng=self.rng) if retry else attempt()
            )
        except _OutcomeUnknown as exc:
            raise exc.error from None
        if ok is not None and reply.status not in ok:
            raise Fatal(
                f"{where}: answered {reply.status}{reason(reply.body)}", status=reply.status
            )
        return reply

    def _exchange(
        self,
        method: str,
        url: str | httpx.URL,
        request: dict[str, Any],
        where: str,
        once: bool,
        counted: bool,
    ) -> Reply:
        """Send once; transport failures become Retriable (made final with ``once`` when
        the request may have left). ``counted`` requests add to :attr:`requests`."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", where, safe_headers(request["headers"]))
        if counted:
            self.requests += 1
        try:
            response = self._client.request(method, url, **request)
        except httpx.TimeoutException as exc:
            error = Retriable(f"{where}: no answer within {self.timeout:g} s")
            if once and not isinstance(exc, NEVER_SENT):
                raise _OutcomeUnknown(error) from None
            raise error from None
        except httpx.TransportError as exc:
            error = Retriable(f"{where}: {type(exc).__name__} ({_transport_reason(exc)})")
            if once and not isinstance(exc, NEVER_SENT):
                raise _OutcomeUnknown(error) from None
            raise error from None
        body = _parse_body(response, where, self.retriable)
        return Reply(response.status_code, response.headers, body)

    def _wait(self, seconds: float) -> None:
        """Wait between tries, within the deadline: a service asking for more than is left
        of it stops the run rather than hold it past what the definition allows."""
        if self.waited + seconds > self.deadline:
            raise Fatal(
                f"the service asks to wait {seconds:g} s before another try; this run has "
                f"waited {self.waited:g} s and may wait {self.deadline:g} s in all "
                "(retry_deadline_seconds)"
            )
        self.waited += seconds
        self.sleep(seconds)

    def _check_origin(self, url: str | httpx.URL) -> None:
        """Never send credentials to a host other than the endpoint's own."""
        if self.origin is None:
            return
        theirs = httpx.URL(str(url))
        if _origin(theirs) != _origin(self.origin):
            raise Fatal(
                f"refusing to call {safe_url(theirs, query=False)}: another host than "
                f"{safe_url(self.origin, query=False)}"
            )

    def retry_failed(
        self, items: Sequence[K], send: Callable[[list[K]], Mapping[K, Retriable]]
    ) -> dict[K, Retriable]:
        """Send ``items`` with ``send``, which returns those refused for a transient reason;
        send those again, alone, with backoff honouring the largest ``Retry-After``, until
        none is left or the tries run out. Returns the ones still refused."""
        pending = list(items)
        attempt = 1
        while True:
            failed = dict(send(pending))
            if not failed or attempt >= self.policy.attempts:
                return failed
            waits = [e.retry_after for e in failed.values() if e.retry_after is not None]
            delay = self.policy.delay(attempt, self.rng, max(waits) if waits else None)
            logger.info(
                "%d request(s) refused for a transient reason; retrying in %.2f s",
                len(failed),
                delay,
            )
            self._wait(delay)
            attempt += 1
            pending = list(failed)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


# -- cursors ------------------------------------------------------------------------------


def overlap_start(
    cursor: str | None, overlap_seconds: float
) -> tuple[datetime | None, datetime | None]:
    """The cursor as a time and where an incremental read starts: that time minus the
    overlap, so a change stamped at a page or clock boundary is read again rather than
    missed (both None for a full read). An unreadable cursor is Fatal."""
    if not cursor:
        return None, None
    since = parse_timestamp(cursor)
    if since is None:
        raise Fatal(f"cursor {cursor!r} is not an ISO 8601 timestamp")
    return since, since - timedelta(seconds=overlap_seconds)


def cursor_text(moment: datetime) -> str:
    """A timestamp cursor as stored: ISO 8601 UTC with microseconds."""
    return moment.astimezone(UTC).strftime(CURSOR_FORMAT)


# -- the block base -------------------------------------------------------------------------


class HttpEndpointBlock(EndpointBlock, abc.ABC):
    """An endpoint block that talks HTTP: it owns one :class:`HttpClient`, made on first
    use from :meth:`_authenticator` and :meth:`_timeout` and the class's ``_retriable``
    statuses and ``_codes``. Subclasses declare the ``retry_attempts`` and
    ``retry_deadline_seconds`` fields.

    Not a block type of its own (``ABC`` among its direct bases); it declares no field, so
    the blocks' registered schemas are unchanged.
    """

    #: statuses worth another try on this system
    _retriable: ClassVar[frozenset[int]] = RETRIABLE_STATUSES
    #: this system's error codes that mean an error whatever the status
    _codes: ClassVar[Mapping[str, type[SyncError]]] = {}

    _http: HttpClient | None = PrivateAttr(None)
    _transport: httpx.BaseTransport | None = PrivateAttr(None)
    _sleep: Callable[[float], Any] = PrivateAttr(time.sleep)
    _rng: random.Random | None = PrivateAttr(None)
    _fresh_when_pickled = {"_http": None, "_transport": None, "_sleep": time.sleep, "_rng": None}

    @abc.abstractmethod
    def _authenticator(self) -> Authenticator:
        """How this endpoint's requests prove who sends them (Fatal when not configured)."""

    @abc.abstractmethod
    def _timeout(self) -> float:
        """Seconds to wait for one HTTP answer."""

    def _origin(self) -> str | None:
        """The only scheme, host and port credentials may go to (None: any)."""
        return None

    def _note(self, reply: Reply) -> str:
        """What an error answer's headers add to its message (quota used); empty here."""
        return ""

    @property
    def policy(self) -> RetryPolicy:
        """How many tries a request gets, with backoff and jitter between them; a
        Retry-After is honoured in full, the deadline bounding the waits in all."""
        return RetryPolicy(
            attempts=self.retry_attempts,  # type: ignore[attr-defined]
            max_retry_after=self.retry_deadline_seconds,  # type: ignore[attr-defined]
        )

    def http(self) -> HttpClient:
        """The endpoint's HTTP client, made on first use (one for all of a load's threads)."""
        with SETUP_LOCK:
            if self._http is None:
                self._http = HttpClient(
                    timeout=self._timeout(),
                    auth=self._authenticator(),
                    policy=self.policy,
                    sleep=self._sleep,
                    rng=self._rng,
                    transport=self._transport,
                    retriable=self._retriable,
                    codes=self._codes,
                    note=self._note,
                    origin=self._origin(),
                    deadline=self.retry_deadline_seconds,  # type: ignore[attr-defined]
                )
            return self._http

    def close(self) -> None:
        """Close the client; the next request opens a new one."""
        if self._http is not None:
            self._http.close()
        self._http = None

    def use_transport(self, transport: httpx.BaseTransport | None) -> None:
        """Send requests through ``transport`` (tests, custom proxies); closes the client."""
        self.close()
        self._transport = transport

    def use_retry_hooks(
        self, sleep: Callable[[float], Any], rng: random.Random | None = None
    ) -> None:
        """Wait with ``sleep`` and draw jitter from ``rng`` between retries (tests)."""
        self._sleep = sleep
        self._rng = rng
        if self._http is not None:
            self._http.sleep = sleep
            self._http.rng = rng or random.Random()
