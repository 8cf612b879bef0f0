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

KILLS = int(os.environ.get("TWOWAY_KILLS", "20"))  # each one lands mid-run


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


def _run_rows(state: str) -> dict[str, tuple[datetime, datetime | None]]:
    """Every run row of the state store: its id, when it started and when it finished
    (None: unfinished)."""
    engine = sa.create_engine(state, connect_args={"timeout": 1})
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(runs.c.id, runs.c.started_at, runs.c.finished_at))
            return {run_id: (started, finished) for run_id, started, finished in rows}
    finally:
        engine.dispose()


def _busy(exc: sa.exc.OperationalError) -> bool:
    """Whether SQLite refused a read only because another process holds its lock
    ("database is locked") or is halfway through updating the WAL index, which a reader
    cannot get past ("locking protocol"); the same read goes through a moment later."""
    return "locked" in str(exc) or "locking protocol" in str(exc)


def _new_run(proc: subprocess.Popen, state: str, known: set[str]) -> str:
    """The id of the run row ``proc`` starts, once the state store holds it."""
    while True:
        try:
            new = set(_run_rows(state)) - known
        except sa.exc.OperationalError as exc:
            if not _busy(exc):
                raise
            new = set()
        if new:
            (run_id,) = new
            return run_id
        assert proc.poll() is None, f"the run ended before its run row: {proc.stderr.read()}"
        time.sleep(0.01)


def _stopped(proc: subprocess.Popen, state: str) -> dict[str, tuple[datetime, datetime | None]]:
    """Stop ``proc`` (SIGSTOP) and read the run rows while it is stopped. A process stopped
    inside a state store write may keep a reader out (``_busy``): it goes on a moment, and
    is stopped again."""
    for _ in range(50):
        proc.send_signal(signal.SIGSTOP)
        try:
            return _run_rows(state)
        except sa.exc.OperationalError as exc:
            if not _busy(exc):
                raise
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("the state store stayed locked whenever the run was stopped")


def test_runs_killed_at_random_moments_lose_nothing_and_duplicate_nothing(tmp_path):
    """Each run is stopped at a random moment after it started its run row; when the row
    is still unfinished it is killed there (mid-run, which the row left behind shows),
    otherwise it goes on to its end. The moments are drawn from about a run's length:
    longer after each kill, the length of the last run that was not killed otherwise."""
    rng = random.Random(20261126)
    with sync_rig(tmp_path, match_on=[], batch_size=7) as rig:
        state = rig.doc["state"]
        calibrate = _start(rig.path)
        calibrate.communicate(timeout=120)
        span = 1.0  # seconds from a run's row to its end, as far as seen
        expected: set[str] = set()
        killed = i = 0
        while killed < KILLS:
            assert i < 3 * KILLS, f"only {killed} of {i} runs were stopped before their end"
            for j in range(6):  # new people on both sides, and edits of earlier ones
                email = f"k{i}-{j}@example.com"
                rig.add("s0" if j % 2 else "s1", email, f"F{i}", f"L{j}")
                expected.add(email)
            if i:
                rig.edit("s0", f"k{i - 1}-1@example.com", first_name=f"edited{i}")
            known = set(_run_rows(state))
            proc = _start(rig.path)
            run_id = _new_run(proc, state, known)
            time.sleep(rng.uniform(0, span))
            started, finished = _stopped(proc, state)[run_id]
            if finished is None:  # stopped mid-run: killed there
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=60)
                killed += 1
                span *= 1.2
            else:
                proc.send_signal(signal.SIGCONT)
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err[-2000:]
                span = (finished - started).total_seconds()
            i += 1
        print(f"\n{killed} runs killed mid-run, {i - killed} ran to their end")
        for _ in range(2):
            again = _start(rig.path)
            out, err = again.communicate(timeout=120)
            assert again.returncode == 0, err[-2000:]
        for system in ("s0", "s1"):
            emails = [r["email"] for r in rig.rows(system)]
            assert len(emails) == len(set(emails)), f"duplicates in {system}"
            assert set(emails) == expected, f"lost in {system}: {expected - set(emails)}"
        assert rig.data("s0") == rig.data("s1")
        assert rig.row("s1", f"k{i - 2}-1@example.com")["first_name"] == f"edited{i - 1}"


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
