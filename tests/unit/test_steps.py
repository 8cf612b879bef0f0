"""Steps run together (twoway/engine.py ``together``): at once, results in order."""

from __future__ import annotations

import threading

import pytest

from twoway.engine import together


def test_steps_together_run_at_once_and_return_in_order():
    barrier = threading.Barrier(2, timeout=10)  # breaks unless both calls wait at once

    def step(n):
        barrier.wait()
        return n * 10

    assert together([lambda n=n: step(n) for n in (1, 2)]) == [10, 20]


def test_a_failing_step_fails_them_once_the_others_have_ended():
    ended = []

    def slow():
        threading.Event().wait(0.2)
        ended.append("slow")
        return "done"

    def broken():
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        together([broken, slow])
    assert ended == ["slow"]
