"""The benchmark's REST collection, generated from each record's index instead of held.

:class:`LazyCollection` has the operations :class:`twoway.simulators.rest.RestState` gives
the HTTP face of the simulator (``create``, ``get_raw``, ``update``, ``delete``, ``page``),
so :func:`twoway.simulators.rest.create_app` serves it with the simulator's own routing,
paging tokens, ``modified_since`` filter, ``$batch`` and errors: the wire is the
simulator's. What differs is where the records come from:

- record ``i`` of the ``n`` the collection starts with (id ``r%08d``) is a pure function of
  the seed and ``i``: 20 mixed-type fields from 64 bytes of a generator seeded with
  ``(seed, i // BLOCK)``, stamped ``start + i * span / n``, version 1, written by
  ``loader``. Nothing is generated at start-up; pages are built when asked for, a block of
  ``BLOCK`` records at a time, and the block after the one just served is built ahead in a
  thread while the client reads;
- every write (people's edits, a sync's updates, deletes, creates) goes into an overlay: a
  dict of the records written since start, with an index sorted by ``(modified_at, id)``,
  each kept as the simulator keeps its records (its ``_Item``: the JSON text). A base
  record that was written is skipped where its index would put it; its overlay entry
  comes in its place.

Start-up takes milliseconds for any ``n``; memory is the overlay plus a few blocks. A page
is the same bytes the simulator would serve had it been loaded with :func:`records`
(``bench/test_collection.py`` checks that, byte for byte, edits and deletes included).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import secrets
import struct
import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from twoway.simulators.rest import NotFound, Stale, _check_fields, _Item, format_stamp

BLOCK = 1_000  # records generated together (one seeded generator, 64 bytes a record)
CACHED_BLOCKS = 8  # blocks kept once built (about 0.5 MB each)
SPAN_US = 3_600 * 1_000_000  # the base records' stamps spread over an hour...
AGE = timedelta(hours=2)  # ...starting two hours before the collection starts
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CITIES = ["Lyon", "Oslo", "Kyiv", "Porto", "Gdańsk", "Zürich", "Malmö", "Cork", "Bari", "Riga"]
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]
_QUADS = [f"{a} {b} {c} {d}" for a in WORDS for b in WORDS for c in WORDS for d in WORDS]
_UNPACK = struct.Struct("<8Q").unpack_from
_TWO53 = float(1 << 53)
# the record as the simulator's encoder writes it (compact, keys in this order; no text
# below needs escaping), the server's fields last
_TEMPLATE = (
    '{"id":"r%08d","f01":"Name %d","f02":"person%d@example.org","f03":"%s","f04":"%s %s",'
    '"f05":%d,"f06":%d,"f07":%r,"f08":%r,"f09":%s,"f10":%s,"f11":"20%d-%02d-%02d",'
    '"f12":"2024-0%d-1%d 12:00:00.000000","f13":"%s","f14":%s,"f15":%s,"f16":"C-%06x",'
    '"f17":%d,"f18":%s,"f19":%s,"f20":"tag%d","modified_at":"%s","modified_by":"loader",'
    '"version":1}'
)
_BOOL = ("false", "true")


def _draws(seed: int, block: int) -> bytes:
    """The random bytes of one block: 64 for each of its records."""
    return random.Random(seed * 1_000_003 + block).randbytes(64 * BLOCK)


def _text(i: int, draws: bytes, offset: int, stamp: str) -> str:
    """Record ``i``'s JSON text from its 64 bytes at ``offset`` of ``draws``: text, whole
    numbers, decimals, flags, date and timestamp text, nulls."""
    a, b, c, d, e, f, g, _ = _UNPACK(draws, offset)
    return _TEMPLATE % (
        i,
        i,
        i,
        CITIES[a % 10],
        _QUADS[(a >> 8) % 20_736],
        _QUADS[(a >> 24) % 20_736],
        b % 1_000_000,
        i,
        round((c >> 11) / _TWO53 * 10_000, 2),
        (d >> 11) / _TWO53,
        _BOOL[e & 1],
        _BOOL[i % 3 == 0],
        10 + (e >> 1) % 15,
        1 + (e >> 8) % 12,
        1 + (e >> 16) % 28,
        1 + (e >> 24) % 9,
        (e >> 32) % 10,
        WORDS[(e >> 40) % 12],
        str(f % 100) if i % 4 else "null",
        repr((g >> 11) / _TWO53 * 2 - 1) if i % 5 else "null",
        (f >> 8) % 16_777_216,
        (f >> 32) % 2_000 - 1_000,
        "null" if i % 7 == 0 else f'"note {i % 97}"',
        _BOOL[i % 2 == 0],
        i % 13,
        stamp,
    )


class Stamps:
    """The base records' ``modified_at``: ``start + i * SPAN_US // n`` microseconds, as the
    simulator formats stamps; strictly increasing in ``i`` while ``n`` <= 3.6e9. Not
    thread-safe (it remembers the last second it formatted): one per thread."""

    def __init__(self, n: int, start_us: int):
        self.n = n
        self._start_us = start_us
        self._second = -1
        self._prefix = ""

    def __call__(self, i: int) -> str:
        us = self._start_us + i * SPAN_US // max(self.n, 1)
        second, frac = divmod(us, 1_000_000)
        if second != self._second:  # one datetime per second of stamps, not per record
            self._prefix = format_stamp(datetime.fromtimestamp(second, UTC))[:20]
            self._second = second
        return f"{self._prefix}{frac:06d}Z"


def record_text(seed: int, i: int, stamp: str) -> str:
    """Base record ``i`` on its own."""
    block, k = divmod(i, BLOCK)
    return _text(i, _draws(seed, block), 64 * k, stamp)


def block_texts(seed: int, block: int, n: int, stamps: Stamps) -> list[bytes]:
    """The JSON texts of base records ``block * BLOCK`` to ``n`` (at most ``BLOCK``)."""
    draws = _draws(seed, block)
    first = block * BLOCK
    return [
        _text(i, draws, 64 * (i - first), stamps(i)).encode("utf-8")
        for i in range(first, min(n, first + BLOCK))
    ]


def micros(moment: datetime) -> int:
    """``moment`` in whole microseconds since the epoch."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def build_block(seed: int, block: int, n: int, start_us: int) -> list[bytes]:
    """:func:`block_texts` from plain arguments (what the read-ahead process is sent)."""
    return block_texts(seed, block, n, Stamps(n, start_us))


def _exit_with(parent: int) -> None:
    """In the read-ahead process: exit once ``parent`` is gone (a server stopped by a
    signal does not shut its pool down, and the worker would wait for work forever)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def records(n: int, seed: int = 6, start: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The ``n`` base records as dicts (``modified_at`` as the API's text), in index order:
    what a :class:`LazyCollection` of the same ``n``, ``seed`` and ``start`` starts with."""
    stamps = Stamps(n, micros(start or datetime.now(UTC) - AGE))
    for block in range((n + BLOCK - 1) // BLOCK):
        for text in block_texts(seed, block, n, stamps):
            yield json.loads(text)


class _BaseKeys:
    """The base records' ``(modified_at, id)`` as a sorted sequence computed per index:
    what :mod:`bisect` needs to find a position without a list of them."""

    def __init__(self, n: int, stamps: Stamps):
        self.n = n
        self.stamps = stamps

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[str, str]:
        return self.stamps(i), f"r{i:08d}"


class LazyCollection:
    """``n`` generated records plus an overlay of writes, with RestState's operations.

    Thread-safe as RestState is (one lock around every operation). With ``read_ahead``, the
    block after the one a page ends in is built by a worker process while the client
    reads the page (a thread would share the server's one interpreter lock with the
    requests); the server only joins ready texts. ``clock`` gives write times (tests pass
    a virtual one).
    """

    def __init__(
        self,
        n: int,
        seed: int = 6,
        start: datetime | None = None,
        clock: Callable[[], datetime] | None = None,
        read_ahead: bool = True,
    ):
        self.n = n
        self.seed = seed
        self._clock = clock or (lambda: datetime.now(UTC))
        self.start_us = micros(start or self._clock() - AGE)
        self._keys = _BaseKeys(n, Stamps(n, self.start_us))
        self._lock = threading.RLock()
        self._over: dict[str, _Item] = {}  # every record written since start, by id
        self._shadowed: set[int] = set()  # base indexes whose record is in the overlay
        self._index: list[tuple[str, str]] = []  # the overlay's (modified_at, id), sorted
        self._stale = 0
        self._last_stamp = self._keys[n - 1][0] if n else ""
        self._idempotency: dict[str, str] = {}
        self._blocks: OrderedDict[int, Future[list[bytes]]] = OrderedDict()
        self._blocks_lock = threading.Lock()
        self._builder: Executor | None = None
        if read_ahead:
            spawn = multiprocessing.get_context("spawn")  # nothing of the server's state
            self._builder = ProcessPoolExecutor(
                1, mp_context=spawn, initializer=_exit_with, initargs=(os.getpid(),)
            )
            self._builder.submit(build_block, seed, 0, min(n, 1), 0).result()  # started
        self.built = 0  # blocks built so far (paging once through builds each once)

    # -- the base records -------------------------------------------------------------

    def _build(self, block: int) -> list[bytes]:
        self.built += 1
        return build_block(self.seed, block, self.n, self.start_us)

    def _block(self, block: int) -> list[bytes]:
        """Block ``block``'s texts: cached, on its way from the worker, or built now."""
        with self._blocks_lock:
            future = self._blocks.get(block)
            if future is None:
                future = Future()
                future.set_result(self._build(block))
                self._remember(block, future)
            else:
                self._blocks.move_to_end(block)
        return future.result()

    def _ahead(self, block: int) -> None:
        """Have the worker process build ``block`` unless it is cached or on its way."""
        if self._builder is None or block * BLOCK >= self.n:
            return
        with self._blocks_lock:
            if block not in self._blocks:
                self.built += 1
                future = self._builder.submit(build_block, self.seed, block, self.n, self.start_us)
                self._remember(block, future)

    def _remember(self, block: int, future: Future[list[bytes]]) -> None:
        self._blocks[block] = future
        while len(self._blocks) > CACHED_BLOCKS:
            self._blocks.popitem(last=False)

    def _base_index(self, id: str) -> int | None:
        """The base index of id ``r%08d``; None for any other id."""
        if len(id) != 9 or id[0] != "r" or not id[1:].isdigit():
            return None
        i = int(id[1:])
        return i if i < self.n else None

    def _item(self, id: str) -> _Item | None:
        """Record ``id`` (the overlay's, else the base's, materialised), or None."""
        item = self._over.get(id)
        if item is not None:
            return item
        i = self._base_index(id)
        if i is None or i in self._shadowed:
            return None
        raw = record_text(self.seed, i, self._keys[i][0])
        fields = json.loads(raw)
        for name in ("id", "modified_at", "modified_by", "version"):
            fields.pop(name)
        item = _Item(id, fields, self._keys[i][0], "loader", 1)
        item.raw = raw.encode("utf-8")  # the base text exactly
        return item

    # -- bookkeeping (as RestState's) -------------------------------------------------

    def _stamp(self) -> str:
        stamp = format_stamp(self._clock())
        if stamp <= self._last_stamp:
            last = datetime.fromisoformat(self._last_stamp.replace("Z", "+00:00"))
            stamp = format_stamp(last + timedelta(microseconds=1))
        self._last_stamp = stamp
        return stamp

    def _index_add(self, item: _Item) -> None:
        entry = (item.modified_at, item.id)
        if not self._index or entry > self._index[-1]:
            self._index.append(entry)
        else:
            insort(self._index, entry)

    def _write(
        self, item: _Item, fields: dict[str, Any], user: str, deleted: bool = False
    ) -> dict[str, Any]:
        """Stamp a write and (re-)index the record in the overlay."""
        if item.id in self._over:
            self._stale += 1  # its previous overlay entry no longer matches
        else:  # a base record's first write: from now on it lives in the overlay
            i = self._base_index(item.id)
            if i is not None:
                self._shadowed.add(i)
            self._over[item.id] = item
        record = item.rewrite(fields, self._stamp(), user, deleted)
        self._index_add(item)
        if self._stale > 1024 and self._stale * 2 > len(self._index):
            self._compact()
        return record

    def _compact(self) -> None:
        over, kept = self._over, []
        for entry in self._index:
            if over[entry[1]].modified_at == entry[0] and (not kept or kept[-1] != entry):
                kept.append(entry)
        self._index = kept
        self._stale = 0

    def _live(self, id: str) -> _Item:
        item = self._item(id)
        if item is None or item.deleted:
            raise NotFound(id)
        return item

    @staticmethod
    def _check_version(item: _Item, if_match: str | None) -> None:
        if if_match is None:
            return
        for tag in if_match.split(","):
            tag = tag.strip()
            if tag == "*":
                return
            if tag.startswith("W/"):
                tag = tag[2:]
            if tag.strip('"') == str(item.version):
                return
        raise Stale(item.id)

    # -- RestState's operations -------------------------------------------------------

    def create(
        self, values: Mapping[str, Any], user: str, idempotency_key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Create a record; returns it and whether it is new (False: an idempotent replay)."""
        fields = _check_fields(values)
        with self._lock:
            if idempotency_key is not None and idempotency_key in self._idempotency:
                return self._over[self._idempotency[idempotency_key]].public(), False
            item = _Item(secrets.token_hex(16), fields, self._stamp(), user, 1)
            self._over[item.id] = item
            self._index_add(item)
            if idempotency_key is not None:
                self._idempotency[idempotency_key] = item.id
            return item.public(), True

    def get(self, id: str) -> dict[str, Any]:
        with self._lock:
            return self._live(id).public()

    def get_raw(self, id: str) -> tuple[bytes, str]:
        with self._lock:
            item = self._live(id)
            return item.raw, item.etag

    def update(
        self, id: str, values: Mapping[str, Any], user: str, if_match: str | None = None
    ) -> dict[str, Any]:
        fields = _check_fields(values)
        with self._lock:
            item = self._live(id)
            self._check_version(item, if_match)
            merged = item.fields()
            merged.update(fields)
            return self._write(item, merged, user)

    def delete(self, id: str, user: str, if_match: str | None = None) -> None:
        with self._lock:
            item = self._live(id)
            self._check_version(item, if_match)
            self._write(item, {}, user, deleted=True)

    def page(
        self, since: str | None, after: tuple[str, str] | None, top: int
    ) -> tuple[list[bytes], tuple[str, str] | None]:
        """As :meth:`RestState.page`: base and overlay records merged in ``(modified_at,
        id)`` order, a base record left out once it is in the overlay."""
        with self._lock:
            keys, index, over, shadowed = self._keys, self._index, self._over, self._shadowed
            if after is not None:
                b, o = bisect_right(keys, after), bisect_right(index, after)
            elif since is not None:
                b, o = bisect_left(keys, (since,)), bisect_left(index, (since,))
            else:
                b = o = 0
            n, end = self.n, len(index)
            base_last = keys[n - 1] if n else ("", "")
            found: list[bytes] = []
            where: list[int | tuple[str, str]] = []  # a base index, or an overlay key
            block_no, texts = -1, []
            while len(found) <= top and (b < n or o < end):
                # writes are stamped after every base record, so an overlay entry rarely
                # sorts before the next base record and no base key needs computing
                if o < end and (b >= n or (index[o] <= base_last and index[o] < keys[b])):
                    key = index[o]
                    o += 1
                    item = over[key[1]]
                    if item.modified_at != key[0] or (item.deleted and since is None):
                        continue
                    found.append(item.raw)
                    where.append(key)
                    continue
                i = b
                b += 1
                if i in shadowed:
                    continue
                if i // BLOCK != block_no:
                    block_no = i // BLOCK
                    texts = self._block(block_no)
                    self._ahead(block_no + 1)
                    self._ahead(block_no + 2)
                found.append(texts[i - block_no * BLOCK])
                where.append(i)
            if len(found) <= top:
                return found, None
            at = where[top - 1]
            return found[:top], keys[at] if isinstance(at, int) else at

    def __len__(self) -> int:
        with self._lock:
            live = sum(1 for item in self._over.values() if not item.deleted)
            return self.n - len(self._shadowed) + live

    def overlay_size(self) -> int:
        """Records written since start: the part of the collection held in memory."""
        with self._lock:
            return len(self._over)

    def close(self) -> None:
        """Stop the read-ahead process."""
        if self._builder is not None:
            self._builder.shutdown(wait=True, cancel_futures=True)
            self._builder = None
