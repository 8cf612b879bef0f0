"""What the HTTP endpoint blocks share about one JSON exchange: sending it (transport
failures as Retriable), reading the JSON answer, and the error a non-2xx status means."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from twoway import jsontext
from twoway.errors import Fatal, Retriable, SyncError
from twoway.retry import retry_after_seconds

#: statuses worth another try: conflict/lock, throttling, server trouble, gateway timeouts
RETRY_STATUSES = frozenset({409, 423, 429, 500, 502, 503, 504})


@dataclass
class Reply:
    """One answer: status, lower-cased headers, parsed JSON body (None when empty)."""

    status: int
    headers: dict[str, str]
    body: Any


def send_json(
    client: httpx.Client,
    method: str,
    url: httpx.URL | str,
    where: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> Reply:
    """Send one request with an optional JSON body; a timeout or a broken connection is
    Retriable, an unreadable answer Fatal or Retriable, all named by ``where``."""
    content = None
    send_headers = dict(headers or {})
    if body is not None:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        send_headers["Content-Type"] = "application/json"
    try:
        response = client.request(method, url, content=content, headers=send_headers, params=params)
    except httpx.TimeoutException:
        timeout = client.timeout.read
        raise Retriable(f"{where}: no answer within {timeout:g} s") from None
    except httpx.TransportError as exc:
        raise Retriable(f"{where}: {type(exc).__name__} ({transport_reason(exc)})") from None
    reply_headers = {k.lower(): v for k, v in response.headers.items()}
    return Reply(response.status_code, reply_headers, parse_body(response, where))


def transport_reason(exc: httpx.TransportError) -> str:
    """The error's own words, minus anything after the first line (no URLs or headers)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def parse_body(response: httpx.Response, where: str) -> Any:
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
        transient = status in RETRY_STATUSES or status >= 500
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


def reason(body: Any) -> str:
    """The API's own error message, shortened, as ': message' (empty when there is none):
    Graph's ``error.message``, a top-level ``message`` or ``error``, or the first of
    Directus's ``errors``."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    if message is None:
        message = body.get("message") or error
    errors = body.get("errors")
    if message is None and isinstance(errors, list) and errors and isinstance(errors[0], dict):
        message = errors[0].get("message")
    return f": {str(message)[:200]}" if message else ""


def status_error(reply: Reply, where: str, fatal: bool = False) -> SyncError:
    """The error a non-2xx answer means: Retriable for transient statuses, Fatal otherwise."""
    status = reply.status
    why = reason(reply.body)
    if status in RETRY_STATUSES and not fatal:
        return Retriable(
            f"{where}: refused with {status}{why}",
            status=status,
            retry_after=retry_after_seconds(reply.headers.get("retry-after")),
        )
    if status == 401:
        return Fatal(
            f"{where}: authentication refused (401); check the integration account's token",
            status=status,
        )
    if status == 403:
        return Fatal(f"{where}: the integration account may not do this (403){why}", status=status)
    return Fatal(f"{where}: answered {status}{why}", status=status)
