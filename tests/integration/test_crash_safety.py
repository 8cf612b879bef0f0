"""Crashes at every step of a run: the next run creates no duplicate and loses no change."""

from __future__ import annotations

import pytest

from tests.crash import Crash, CrashAt
from tests.syncrig import sync_rig
from twoway.contract import WriteResult
from twoway.engine import Runtime
from twoway.errors import Retriable
from twoway.state import StateStore

STEPS = [
    "extract s0",
    "extract s1",
    "map IDs",
    "compute field deltas",
    "load s0",
    "load s1",
    "commit state",
]


@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("step", STEPS)
def test_crash_at_any_step_then_rerun_converges_without_duplicates(tmp_path, step, after):
    with sync_rig(
        tmp_path, match_on=[]
    ) as rig:  # no match_on: only the intent log prevents duplicates
        rig.add("s0", "old@example.com", "Old", "One")
        rig.run()
        rig.add("s0", "a@example.com", "A", "Zero")
        rig.add("s1", "b@example.com", "B", "One")
        rig.edit("s0", "old@example.com", first_name="Changed")
        rig.edit("s1", "old@example.com", last_name="Both")
        with pytest.raises(Crash):
            rig.run(runtime=Runtime(observer=CrashAt(step, after)))
        # the crash landed mid-run: its run row is left unfinished, and from the writes'
        # intents until the state commit, the intents stay open
        store = StateStore(rig.doc["state"])
        try:
            unfinished = [
                r["status"] for r in store.last_runs(rig.doc["name"]) if not r["finished_at"]
            ]
            intents = len(store.open_intents(rig.doc["name"]))
        finally:
            store.close()
        assert unfinished == ["running"]
        point = 2 * STEPS.index(step) + after  # crash points in the order a run passes them
        writing = 2 * STEPS.index("load s0") <= point < 2 * STEPS.index("commit state") + 1
        assert intents == (2 if writing else 0), intents  # the two creates
        rig.run()
        rig.run()
        assert rig.data("s0") == rig.data("s1")
        emails = [r["email"] for r in rig.rows("s0")]
        assert emails == ["a@example.com", "b@example.com", "old@example.com"], emails
        assert rig.row("s1", "old@example.com")["first_name"] == "Changed"
        assert rig.row("s0", "old@example.com")["last_name"] == "Both"
        assert (
            sum(
                sum(c[k] for k in ("created", "updated", "deleted"))
                for c in rig.run().systems.values()
            )
            == 0
        )


def test_a_create_that_timed_out_after_it_was_applied_is_not_sent_twice(tmp_path):
    with sync_rig(tmp_path, match_on=[]) as rig:
        rig.add("s0", "t@example.com", "Time", "Out")
        definition = rig.definition
        from twoway.connectors import open_endpoint

        endpoints = {s: open_endpoint(definition, s) for s in definition.systems}
        real_write = endpoints["s1"].write

        def applied_then_timeout(ops):
            real_write(ops)
            return [WriteResult(op=op, error=Retriable("read timed out")) for op in ops]

        endpoints["s1"].write = applied_then_timeout
        report = rig.run(runtime=Runtime(endpoints=endpoints))
        # read back within the run: the lost answer is found and the create confirmed
        assert report.systems["s1"]["failed"] == 0 and report.systems["s1"]["created"] == 1
        endpoints["s1"].write = real_write
        rig.run()
        rig.run()
        assert [r["email"] for r in rig.rows("s1")] == ["t@example.com"]
        assert rig.data("s0") == rig.data("s1")
