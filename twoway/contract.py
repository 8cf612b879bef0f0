"""The endpoint contract every connector (SQL table, SharePoint list, Salesforce object,
REST collection) implements, and the small types that cross it.

Glossary:
- *key*: a record's id in its own system, always a string (``external_id`` in the state).
- *values*: a record's data keyed by the system's own column or field names, plain Python
  values (str, int, float, Decimal, bool, datetime, date, None).
- *version*: an opaque token that changes on every write (eTag, SystemModstamp,
  modified_at as stored). Writes carry the version they read; a mismatch raises
  :class:`~twoway.errors.PreconditionFailed` for that record instead of overwriting it.
- *cursor*: an opaque string the endpoint returns from :meth:`Endpoint.read_changes` and
  gets back next run; ``None`` means "read everything".
"""

from __future__ import annotations

import abc
import contextvars
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from twoway.errors import SyncError


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as a system holds it."""

    key: str
    values: dict[str, Any]
    modified_at: datetime | None = None  # timezone-aware UTC
    modified_by: str | None = None
    version: str | None = None
    link: str | None = None  # the link id twoway stamped on a record it created (link marker)


@dataclass(slots=True)
class ChangeSet:
    """What changed in a system since a cursor: one page of a read, or a whole read.

    ``deleted`` holds keys the system itself reported as deleted (delta feeds); within one
    change set a key is either among the records or deleted, never both.
    ``cursor`` is what to pass next time, stored only after the run commits.
    ``full`` is True when every live record was returned (a read with no cursor), so a
    key of ours that is absent is known to be deleted. ``absent_lost`` is True when every
    live record was returned but the system says it may have lost records (Graph's
    ``resyncChangesUploadDifferences``): a key of ours that is absent is created there again.
    """

    records: list[RawRecord]
    deleted: list[str] = field(default_factory=list)
    cursor: str | None = None
    full: bool = False
    absent_lost: bool = False
    requests: int = 0  # calls made to the system for this read (benchmarks, reports)


def later_page_wins(
    said: dict[str, Any], deleted: dict[str, None], fresh: dict[str, Any], gone: Iterable[str]
) -> None:
    """Fold one page into what a read has said so far (``said``: key -> what earlier pages
    held for it; ``deleted``: keys deleted): what a later page says of a key replaces what
    an earlier one said (a record edited or deleted while the read paged comes again)."""
    for key in gone:
        said.pop(key, None)
        deleted[key] = None
    for key, value in fresh.items():
        said.pop(key, None)
        said[key] = value
        deleted.pop(key, None)


def fold_pages(pages: Iterable[ChangeSet]) -> ChangeSet:
    """A paged read as one change set (:func:`later_page_wins`); records of one page that
    share a key stay side by side (the run parks them as ambiguous)."""
    records: dict[str, list[RawRecord]] = {}
    deleted: dict[str, None] = {}
    last = ChangeSet(records=[])
    requests = 0
    for page in pages:
        fresh: dict[str, list[RawRecord]] = {}
        for record in page.records:
            fresh.setdefault(record.key, []).append(record)
        later_page_wins(records, deleted, fresh, page.deleted)
        requests += page.requests
        last = page
    return ChangeSet(
        records=[r for same in records.values() for r in same],
        deleted=list(deleted),
        cursor=last.cursor,
        full=last.full,
        absent_lost=last.absent_lost,
        requests=requests,
    )


T = TypeVar("T")
A = TypeVar("A")
_END = object()


def read_ahead(pages: Iterator[T]) -> Iterator[T]:
    """The items of ``pages``, each next one fetched on a thread of its own while the caller
    works on the one it has: the time a system takes to serve a page overlaps the time the
    run takes to process the last one. At most two pages are held; an error raised
    fetching a page is raised where the caller asks for it, as it would be without."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twoway-read-ahead")
    context = contextvars.copy_context()  # the run's logger and settings, on the thread too
    try:
        pending = pool.submit(context.run, next, pages, _END)
        while (page := pending.result()) is not _END:
            pending = pool.submit(context.run, next, pages, _END)
            yield page
    finally:
        pool.shutdown(wait=True)  # a page still on its way arrives and is dropped
        close = getattr(pages, "close", None)
        if close is not None:
            close()


def in_flight(fn: Callable[[A], T], items: Iterable[A], width: int) -> Iterator[T]:
    """``fn`` of each item, in the items' order, with up to ``width`` calls running at once,
    each on a thread of its own with the caller's context: a service's time to answer one
    call overlaps the next call's sending and the caller's work on the last answer. An error
    is raised where its result is due, after the calls already started have ended; no call
    starts after it. A ``width`` of 1 calls ``fn`` on the caller's thread, one after another.
    """
    if width <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="twoway-in-flight")
    running: deque = deque()
    try:
        for item in items:
            if len(running) == width:
                yield running.popleft().result()
            running.append(pool.submit(contextvars.copy_context().run, fn, item))
        while running:
            yield running.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class Create:
    """Create a record; ``ref`` is the link id, usable as an idempotency key."""

    ref: str
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Update:
    """Change only the given fields of ``key``, if its version is still ``version``."""

    key: str
    values: dict[str, Any]
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key``, if its version is still ``version`` (None: unconditionally)."""

    key: str
    version: str | None = None


Op = Create | Update | Delete


def write_kind(op: Op) -> str:
    """The report's column for a write: ``created``, ``updated`` or ``deleted``."""
    return (
        "created" if isinstance(op, Create) else "updated" if isinstance(op, Update) else "deleted"
    )


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of one operation of a batch, in the batch's order."""

    op: Op
    key: str | None = None  # the record's key (the new key for a create)
    version: str | None = None  # the record's version after the write
    values: dict[str, Any] | None = None  # values as stored, when the system rewrote them
    error: SyncError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Endpoint(abc.ABC):
    """A collection of records in one system, seen through a handful of verbs.

    Implementations own their client (engine, HTTP client), open it lazily and release it
    in :meth:`close`. Writes stamp the system's integration account as the modifier.
    """

    #: name of the integration account this endpoint writes as (set by each implementation)
    integration_account: str | None

    @abc.abstractmethod
    def columns(self) -> set[str]:
        """The column or field names the collection has (for ``twoway check``)."""

    @abc.abstractmethod
    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        """Records changed since ``cursor`` (all records when None) and deletions if
        reported, one page at a time as the system serves them, so a run holds a page and
        not the whole read. A key in a later page replaces what an earlier page said of it.
        Every page carries the read's ``full``; the last page's ``cursor`` is the one to
        store. At least one page comes, empty when nothing changed."""

    def reads_ahead(self) -> bool:
        """Whether :meth:`read_pages` may fetch its next page on another thread while the
        run works on a page (:func:`read_ahead`): the endpoint's client serves any thread."""
        return False

    def read_changes(self, cursor: str | None) -> ChangeSet:
        """The whole read as one change set (:func:`fold_pages` of :meth:`read_pages`)."""
        return fold_pages(self.read_pages(cursor))

    @abc.abstractmethod
    def read(self, keys: Sequence[str]) -> list[RawRecord]:
        """The current state of the given records; missing keys are left out."""

    @abc.abstractmethod
    def list_keys(self) -> set[str] | None:
        """Every live key, to find hard deletes; None when the change feed reports deletions."""

    def count_keys(self) -> int | None:
        """How many distinct keys the collection holds, when the system counts them cheaply
        (a SQL ``COUNT``); None otherwise. A count that matches the ID map spares listing
        every key to look for hard deletes."""
        return None

    @abc.abstractmethod
    def write(self, ops: Sequence[Op]) -> list[WriteResult]:
        """Apply a batch; per-record failures come back in the results, never raised.

        Raises only when nothing of the batch was applied (retriable or fatal): once any
        operation may have taken effect, every operation's outcome must come back.
        """

    def max_batch(self) -> int:
        """The most operations one :meth:`write` call should carry."""
        return 1000

    def max_writes_in_flight(self) -> int:
        """How many :meth:`write` calls of one load may run at once (:func:`in_flight`):
        more than one only where the endpoint's client serves any thread and the service
        takes concurrent calls. The batches of a load touch different records."""
        return 1

    def close(self) -> None:
        """Release the client; the endpoint reopens it when used again."""

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
