"""One error model for every connector: what is retried, what stops the run, what is parked.

Glossary: *retriable* errors are transient (locked record, throttling, timeouts); *fatal*
errors stop the run before more damage (auth, bad definition, unreachable system);
*skippable* errors concern one record, which is parked in the dead-letter table while the
others go on; *precondition failed* means the record changed since we read it (stale eTag
or version): never overwrite, re-read and recompute instead.
"""

from __future__ import annotations

import logging
import re
import traceback


class TwowayError(Exception):
    """Base of every error twoway raises on purpose; its message is safe to print."""


class DefinitionError(TwowayError):
    """A sync definition (or the command line) is wrong; one line per problem."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class AlreadyRunning(TwowayError):
    """Another run of the same sync holds the lease."""


class MassChangeRefused(TwowayError):
    """A run would delete or overwrite more than the allowed share of a system's records."""


class SyncError(TwowayError):
    """An error talking to a system; the subclass says what to do about it."""

    def __init__(self, message: str, *, system: str | None = None, status: int | None = None):
        self.system = system
        self.status = status
        super().__init__(message)


class Retriable(SyncError):
    """Transient: retry with backoff (honouring ``retry_after`` seconds when the system gave one)."""

    def __init__(
        self,
        message: str,
        *,
        system: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, system=system, status=status)
        self.retry_after = retry_after


class Fatal(SyncError):
    """Stops the run: authentication, permissions, other 4xx, a broken endpoint."""


class Skippable(SyncError):
    """One record cannot be applied; park it and go on with the others."""


class PreconditionFailed(SyncError):
    """The record's version is not the one we read (412, stale eTag, changed modified_at)."""


def is_retriable(exc: BaseException) -> bool:
    """True for errors worth another attempt: our Retriable and raw network timeouts/resets."""
    if isinstance(exc, Retriable):
        return True
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a dependency
        return False
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


#: ``scheme://user:password@host``: what :func:`redact` masks in any text
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"]+)@")
#: ``?access_token=...`` and friends: secrets some APIs take as query parameters
_SECRET_PARAMS = re.compile(
    r"(?P<name>[?&](?:access_token|token|client_secret|password|sig|signature|code)=)[^&\s'\"]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with credentials in URLs masked: ``user:***@``, ``***@`` and ``token=***``.

    For messages built from other libraries' errors, which may quote a URL as given.
    """

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match.group("userinfo").partition(":")
        # a bare ``token@host`` is a secret itself; ``user:password@`` keeps the user
        return f"{match.group('scheme')}{user + ':' if colon else ''}***@"

    return _SECRET_PARAMS.sub(r"\g<name>***", _URL_CREDENTIALS.sub(userinfo, text))


class RedactingFilter(logging.Filter):
    """Masks credentials (as :func:`redact` does) in log records and their tracebacks,
    and drops the traceback of a known error (its message says what is wrong), logged as a
    warning: the Prefect engine logs a task's error, with its traceback, in the error's own
    text, and the run logs the one error line of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and isinstance(record.exc_info[1], TwowayError):
            record.exc_info = None
            if record.levelno > logging.WARNING:
                # the run's own line is the one error of a known failure; what a task run
                # says of it on the way (a retry, retries exhausted) is a warning
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        elif (
            record.name == "prefect.task_runs"
            and record.levelno > logging.WARNING
            and record.msg.startswith("Finished in state ")
        ):
            # a failed task run's final state repeats the error its run reports once
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if record.exc_info and not record.exc_text:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
        return True
