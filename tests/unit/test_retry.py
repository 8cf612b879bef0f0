"""The one retry policy: transient errors retried with backoff, Retry-After honoured."""

from __future__ import annotations

import random

import httpx
import pytest

from twoway.errors import Fatal, Retriable
from twoway.retry import RetryPolicy, retry_after_seconds


def test_retries_transient_errors_and_honours_retry_after():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise Retriable("throttled", retry_after=7)
        if len(calls) == 2:
            raise httpx.ConnectTimeout("slow")
        return "ok"

    policy = RetryPolicy(attempts=5, base_delay=1, jitter=0)
    assert policy.call(flaky, sleep=waits.append, rng=random.Random(1)) == "ok"
    assert waits == [7, 2]


def test_fatal_errors_are_not_retried():
    waits = []
    with pytest.raises(Fatal):
        RetryPolicy().call(lambda: (_ for _ in ()).throw(Fatal("no")), sleep=waits.append)
    assert waits == []


def test_gives_up_after_the_attempts():
    waits = []

    def always():
        raise Retriable("locked")

    with pytest.raises(Retriable):
        RetryPolicy(attempts=3, base_delay=0.5, jitter=0.5).call(
            always, sleep=waits.append, rng=random.Random(3)
        )
    assert len(waits) == 2
    assert 0.25 <= waits[0] <= 0.75 and 0.5 <= waits[1] <= 1.5


def test_retry_after_header_parsing():
    assert retry_after_seconds("3") == 3
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
