"""``twoway run`` as real processes: killed with SIGKILL at random moments, and started
twice at once. The Prefect API is the session's test server, so each run starts quickly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
import sqlalchemy as sa

from tests.syncrig import sync_rig
from twoway.state import runs

pytestmark = pytest.mark.usefixtures("prefect_api")

KILLS = int(os.environ.get("TWOWAY_KILLS", "50"))


def _env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    return env


def _start(path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "twoway.cli", "run", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def test_runs_killed_at_random_moments_lose_nothing_and_duplicate_nothing(tmp_path):
    rng = random.Random(20261126)
    with sync_rig(tmp_path, match_on=[], batch_size=7) as rig:
        calibrate = _start(rig.path)
        started = time.monotonic()
        calibrate.communicate(timeout=120)
        full = max(1.0, time.monotonic() - started)
        expected: set[str] = set()
        for i in range(KILLS):
            for j in range(6):  # new people on both sides, and edits of earlier ones
                email = f"k{i}-{j}@example.com"
                rig.add("s0" if j % 2 else "s1", email, f"F{i}", f"L{j}")
                expected.add(email)
            if i:
                rig.edit("s0", f"k{i - 1}-1@example.com", first_name=f"edited{i}")
            proc = _start(rig.path)
            time.sleep(rng.uniform(0.3, full))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        for _ in range(2):
            again = _start(rig.path)
            out, err = again.communicate(timeout=120)
            assert again.returncode == 0, err[-2000:]
        for system in ("s0", "s1"):
            emails = [r["email"] for r in rig.rows(system)]
            assert len(emails) == len(set(emails)), f"duplicates in {system}"
            assert set(emails) == expected, f"lost in {system}: {expected - set(emails)}"
        assert rig.data("s0") == rig.data("s1")
        assert rig.row("s1", f"k{KILLS - 2}-1@example.com")["first_name"] == f"edited{KILLS - 1}"


def test_two_runs_started_together_never_overlap(tmp_path):
    with sync_rig(tmp_path, match_on=[], batch_size=5) as rig:
        for i in range(400):
            rig.add("s0" if i % 2 else "s1", f"r{i}@example.com")
        procs = [_start(rig.path) for _ in range(2)]
        outcomes = [p.communicate(timeout=180) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes in ([0, 0], [0, 3]), [o[1][-1500:] for o in outcomes]
        if codes == [0, 3]:
            loser = outcomes[[p.returncode for p in procs].index(3)][0]
            assert '"already_running"' in loser
        engine = sa.create_engine(rig.doc["state"])
        with engine.connect() as conn:
            spans = conn.execute(
                sa.select(runs.c.started_at, runs.c.finished_at)
                .where(runs.c.dry_run.is_(False))
                .order_by(runs.c.started_at)
            ).all()
        engine.dispose()
        for (_, first_end), (second_start, _) in zip(spans, spans[1:], strict=False):
            assert isinstance(first_end, datetime) and first_end <= second_start, spans
        for system in ("s0", "s1"):
            emails = [r["email"] for r in rig.rows(system)]
            assert len(emails) == len(set(emails)) == 400
