"""New ids that sort in the order they are made: UUID version 7 (RFC 9562), as 32 hex digits.

Link ids, and the keys the SQL block gives new rows, are primary keys and index entries in
tables of millions of rows. Random ids (version 4) land on a random page of every index
they enter, so once an index outgrows the cache each insert reads and dirties a page of its
own; ids that grow with time are appended at the right edge of each index instead. Measured
on the state store's tables: 400,000 new links took 61 s with random ids and 21 s with these.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime

_COUNTER = 0xFFF  # rand_a holds a counter: ids of one millisecond still increase
_RAND_B = (1 << 62) - 1


class TimeOrderedIds:
    """A source of UUIDv7 hex ids, strictly increasing for one source: the Unix time in
    milliseconds, a 12-bit counter within the millisecond (a full counter moves on to the
    next millisecond), and 62 random bits."""

    def __init__(
        self,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
    ):
        self._clock = clock
        self._rng = rng
        self._last_ms = -1
        self._counter = 0
        self._lock = threading.Lock()

    def _now_ms(self) -> int:
        if self._clock is None:
            return time.time_ns() // 1_000_000
        return int(self._clock().timestamp() * 1000)

    def _random_bits(self, count: int) -> list[int]:
        """``count`` random 62-bit numbers: from the given generator (repeatable runs),
        else from one read of the system's random source."""
        if self._rng is not None:
            return [self._rng.getrandbits(62) for _ in range(count)]
        raw = os.urandom(8 * count)
        return [int.from_bytes(raw[i : i + 8], "big") & _RAND_B for i in range(0, 8 * count, 8)]

    def __call__(self) -> str:
        return self.many(1)[0]

    def many(self, count: int) -> list[str]:
        """``count`` new ids, in increasing order."""
        bits = self._random_bits(count)
        now = self._now_ms()
        out = []
        with self._lock:
            ms, counter = self._last_ms, self._counter
            if now > ms:
                ms, counter = now, -1
            for rand in bits:
                counter += 1
                if counter > _COUNTER:
                    ms, counter = ms + 1, 0
                value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
                out.append(f"{value:032x}")
            self._last_ms, self._counter = ms, counter
        return out
