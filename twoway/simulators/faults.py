"""Faults on demand for the simulators: ``lock=0.05,throttle=0.05,unavailable=0.02,timeout=0.01``.

A fault is decided before a request touches any data, so a faulted write is never half
applied: it is refused whole (``lock``, ``throttle``, ``unavailable``, ``timeout``), slowed
(``slow``), or applied whole with its answer lost (``lost``: a gateway timeout after the
change was made, the case that duplicates creates sent again). ``bump`` refuses nothing:
before the request is answered, a system process touches one record without editing it
(in the Salesforce simulator: SystemModstamp moves, LastModifiedDate and LastModifiedById
stay, as after a roll-up summary's recalculation); the other simulators answer as usual.
Each simulator turns a fault kind into its own protocol's answer.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

FAULT_KINDS = ("lock", "throttle", "unavailable", "timeout", "slow", "lost", "bump")


@dataclass
class FaultPlan:
    """Rates per fault kind (0..1, summed at most 1), drawn from one seeded random source."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    timeout_seconds: float = 2.0  # how long a "timeout" fault stalls before answering 504
    slow_seconds: float = 0.5  # extra latency of a "slow" fault
    retry_after: int = 1  # Retry-After seconds sent with throttle and unavailable faults

    def __post_init__(self) -> None:
        for kind, rate in self.rates.items():
            if kind not in FAULT_KINDS:
                raise ValueError(
                    f"unknown fault {kind!r}; expected one of {', '.join(FAULT_KINDS)}"
                )
            if not 0 <= rate <= 1:
                raise ValueError(f"fault rate {kind}={rate} must be between 0 and 1")
        if sum(self.rates.values()) > 1 + 1e-9:  # rates scaled to add up to 1 may round over
            raise ValueError("fault rates add up to more than 1")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {k: 0 for k in FAULT_KINDS}

    @classmethod
    def parse(cls, spec: str | None, seed: int | None = None) -> FaultPlan:
        """Read ``kind=rate,kind=rate``; an empty spec means no faults."""
        rates: dict[str, float] = {}
        for part in (spec or "").split(","):
            part = part.strip()
            if not part:
                continue
            kind, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"fault {part!r} must be written kind=rate")
            try:
                rates[kind.strip()] = float(value)
            except ValueError:
                raise ValueError(f"fault rate {value!r} of {kind!r} is not a number") from None
        return cls(rates=rates, seed=seed)

    def set(self, **rates: float) -> None:
        """Change the rates at run time (tests turn faults on and off)."""
        new = FaultPlan(rates=rates)
        with self._lock:
            self.rates = new.rates

    def draw(self) -> str | None:
        """The fault for the next request, or None."""
        if not self.rates:
            return None
        with self._lock:
            x = self._rng.random()
            for kind, rate in self.rates.items():
                if x < rate:
                    self.counts[kind] += 1
                    return kind
                x -= rate
        return None
