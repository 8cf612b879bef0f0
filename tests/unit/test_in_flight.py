"""``in_flight``: calls run at once up to a width, answers come in order, errors stop it."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from twoway.contract import in_flight

WHO = contextvars.ContextVar("who", default="nobody")


class Calls:
    """A call that sleeps a little and keeps the most calls seen running at once."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.started: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, item: int) -> tuple[int, str]:
        with self.lock:
            self.started.append(item)
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(0.02 if item % 2 else 0.05)  # later items may end first
            if item == self.fail_on:
                raise ValueError(f"item {item} refused")
            return item * 10, WHO.get()
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.parametrize("width", [2, 3])
def test_answers_come_in_order_with_up_to_width_calls_at_once(width):
    calls = Calls()
    WHO.set("the run")
    assert list(in_flight(calls, range(9), width)) == [(i * 10, "the run") for i in range(9)]
    assert calls.most == width and sorted(calls.started) == list(range(9))


def test_a_width_of_one_runs_on_the_callers_thread_one_after_another():
    calls = Calls()
    assert [a for a, _ in in_flight(calls, range(4), 1)] == [0, 10, 20, 30]
    assert calls.most == 1 and calls.threads == {threading.current_thread().name}


def test_an_error_comes_where_its_answer_is_due_and_no_call_starts_after_it():
    calls = Calls(fail_on=2)
    answers = []
    with pytest.raises(ValueError, match="item 2 refused"):
        for answer, _ in in_flight(calls, range(10), 2):
            answers.append(answer)
    assert answers == [0, 10]
    # item 3 may have started beside item 2 before the error was seen; nothing later did
    assert set(calls.started) <= {0, 1, 2, 3} and calls.running == 0
