"""Property: over random mixes of good and bad records, a run leaves the target holding
exactly the good records, the source untouched, and every bad record parked: nothing lost."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.badinput.rig import Pair
from twoway.state import StateStore

good = st.integers(min_value=-(2**62), max_value=2**62).map(lambda n: ("good", str(n)))
bad = st.sampled_from(["five", "1.5.2", "", "0x1G", "∞", "😀", "--1"]).map(lambda v: ("bad", v))
notes = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(good | bad, notes), min_size=1, max_size=8))
def test_good_records_arrive_bad_ones_are_parked_nothing_is_lost(mix):
    with tempfile.TemporaryDirectory() as folder:
        p = Pair(
            Path(folder),
            {"email": "TEXT", "n": "TEXT", "note": "TEXT"},
            {"email": "TEXT", "n": "INTEGER", "note": "TEXT"},
        )
        try:
            for i, ((kind, n), note) in enumerate(mix):
                p.insert("a", email=f"{kind}{i}@x", n=n, note=note)
            source_before = p.rows("a")
            report = p.run()
            assert report.status == "completed", report.error
            expected = sorted(
                (f"good{i}@x", int(n), note)
                for i, ((kind, n), note) in enumerate(mix)
                if kind == "good"
            )
            held = sorted((r["email"], r["n"], r["note"]) for r in p.rows("b"))
            assert held == expected
            assert [{k: r[k] for k in ("email", "n", "note")} for r in p.rows("a")] == [
                {k: r[k] for k in ("email", "n", "note")} for r in source_before
            ]
            store = StateStore(p.definition.state)
            try:
                parked = store.open_dead_letters(p.definition.name)
            finally:
                store.close()
            bad_count = sum(kind == "bad" for (kind, _), _ in mix)
            assert len(parked) == bad_count == report.systems["b"]["failed"]
            again = p.run()  # parked records stay parked, nothing else moves
            assert sorted((r["email"], r["n"], r["note"]) for r in p.rows("b")) == expected
            assert again.systems["b"]["created"] == 0
        finally:
            p.close()
