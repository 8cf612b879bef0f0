"""The harness's own checks: a run over its memory limit is stopped and measured, rows are
kept apart by size, and issue #19's targets are read from the right rows.

``python -m pytest bench/test_run.py -q``
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402


def test_a_process_over_the_memory_limit_is_stopped_with_its_figures() -> None:
    hog = "x = b'\\x01' * (300 << 20); import time; time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(run.Stopped) as stop:
        run.timed([sys.executable, "-c", hog], dict(os.environ), 120, rss_limit_mb=100)
    assert time.monotonic() - started < 30
    assert stop.value.peak_rss_mb > 100 and stop.value.limit_mb == 100
    assert 0 < stop.value.wall_s < 30


def test_a_process_under_the_limit_is_measured_whole() -> None:
    sample = run.timed([sys.executable, "-c", "print('done')"], dict(os.environ), 60, 500)
    assert sample.output.strip() == "done"
    assert 0 < sample.peak_rss_mb < 500


def sample(wall: float, rss: float, n: int, run_s: float | None = None, **extra) -> run.Sample:
    s = run.Sample(wall_s=wall, cpu_s=wall, peak_rss_mb=rss)
    s.extra |= {"n": n, **extra}
    if run_s is not None:
        s.extra |= {"run_s": run_s, "systems": {}, "written": 0}
    return s


def test_rows_of_one_workload_at_two_sizes_stay_apart() -> None:
    samples = [
        ("initial", "twoway", sample(10, 900, 1_000_000, 8)),
        ("initial", "floor", sample(4, 80, 1_000_000)),
        ("initial", "twoway", sample(2, 300, 100_000, 1)),
        ("initial", "floor", sample(0.5, 60, 100_000)),
    ]
    rows = run.summarise(samples, 1_000_000)
    assert [(r["tool"], r["n"]) for r in rows] == [
        ("twoway", 1_000_000),
        ("floor", 1_000_000),
        ("twoway", 100_000),
        ("floor", 100_000),
    ]
    assert rows[0]["ratio_to"] == {"floor": [2.5]}
    assert rows[2]["ratio_to"] == {"floor": [4.0]}


def test_targets_are_read_from_this_runs_rows() -> None:
    m, k = 1_000_000, 100_000
    samples = [
        ("prefect-floor", "prefect-only", sample(2.0, 90, m)),
        ("initial", "twoway", sample(30, 900, m, 27)),
        ("initial", "dlt-sqlite", sample(100, 200, m)),
        ("initial", "floor", sample(10, 80, m)),
        ("initial", "twoway", sample(4, 800, k, 2)),
        ("initial", "dlt-sqlite", sample(10, 150, k)),
        ("initial", "floor", sample(1, 60, k)),
        ("initial", "twoway", sample(8, 850, 300_000, 6)),
        ("echo-readback", "twoway", sample(12, 300, m, 10)),
        (
            "initial-10m",
            "twoway",
            sample(50, 3100, 10 * m, stopped="over", systems={}, written=0, run_s=None),
        ),
        ("no-change", "twoway", sample(2.5, 150, m, 0.2)),
    ]
    rows = run.summarise(samples, m)
    found = {g.what: g for g in run.goals(rows, m, k, 10 * m, [k, 300_000, m], k)}
    assert found["initial REST->SQLite: wall / dlt-sqlite"].ok is True  # 0.3x
    assert found["initial REST->SQLite: wall / floor"].ok is True  # 3x, of 4x allowed
    assert found["initial REST->SQLite: wall / floor"].figure == "3.00x"
    assert found["initial REST->SQLite: peak RSS"].ok is True
    assert found["peak RSS at 1,000,000 / at 100,000"].figure == "1.12x"
    assert found["peak RSS at 1,000,000 / at 100,000"].ok is True
    ten = found["initial 10M: completes within 1.5 GiB"]
    assert ten.ok is False and ten.figure.startswith("stopped at 3100 MiB")
    assert found["initial: wall / dlt-sqlite wall"].ok is True  # 0.4x
    assert found["initial: run s / floor wall"].ok is True  # 2x
    assert found["echo read-back: writes nothing"].ok is True
    assert found["echo read-back: wall / initial wall"].ok is False  # 0.4x
    assert found["no-change: run s"].ok is True
    assert found["incremental 1%: wall / dlt-sqlite wall"].ok is None  # not measured
    assert found["full reconciliation: wall"].ok is None
    share = run.prefect_share(rows, m)
    assert "Prefect's share of the initial run at N=1,000,000: 2.00 s of 30.00 s (6.7%)" in share
    assert "start-up + Prefect (wall - run s): 3.00 s (10%)" in share
    curve = run.memory_table(rows, [k, 300_000, m])
    assert "ratio of peak RSS 1,000,000 / 100,000: 1.12x" in curve
