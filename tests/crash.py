"""A process dying mid-run, at a chosen point: before or after a named step of the run."""

from __future__ import annotations

from twoway.engine import Observer


class Crash(BaseException):
    """A process dying: not an error the engine may catch."""


class CrashAt(Observer):
    """Dies right before (or right after) the ``nth`` time the run reaches step ``at``
    (a step a run takes once per chunk, "commit state", is reached once per chunk)."""

    def __init__(self, at: str, after: bool = False, nth: int = 1):
        self.at, self.after, self.nth = at, after, nth
        self.seen = 0

    def step(self, name: str, ended: bool) -> None:
        if name == self.at and ended == self.after:
            self.seen += 1
            if self.seen == self.nth:
                raise Crash(name)
