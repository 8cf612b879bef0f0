"""twoway's benchmark suite: one command, bounded in time, a table on stdout and JSON on disk.

    /tmp/venv/bin/python bench/run.py --quick        # N=20,000, one run of each: minutes
    /tmp/venv/bin/python bench/run.py                # N=100,000, 3 runs of each workload

What it does, per repetition: serve a fresh Graph-style REST collection of N records (20
mixed-type fields, pages of 1,000 by ``@odata.nextLink``, a ``modified_since`` filter) from
its own process (``bench/serve.py``), then time, each as a whole process from start to
exit (wall, user+system CPU, peak RSS from ``wait4``):

- ``initial``: twoway's two-way sync of the collection with an empty SQLite table
  (``twoway run`` against a running Prefect server, ``PREFECT_API_URL`` set, as deployed
  flows run), and the peers' one-way loads of the same collection into SQLite: the raw floor
  (httpx + sqlite3 executemany), dlt into SQLite (sqlalchemy destination, merge on the
  primary key) and dlt into DuckDB with parquet load files;
- ``incremental-1pct``: after 1% of the records changed on the API (and, for twoway, another
  1% in the SQLite table: two-way), the next run of each tool; API page reads are counted
  by the server;
- ``incremental-readback``: twoway's next run, which reads the incremental run's writes back
  from the change feeds (echoes) and must write nothing;
- ``no-change``: the next run after that with nothing changed by people or by twoway (for
  the peers, the run after their incremental one): what a scheduled run of a quiet sync
  costs.

- ``full-reconciliation``: right after the initial run and its echo read-back, ``twoway run
  --full``: both sides read whole and compared with the merge base; nothing may be written.

``--target postgres`` (or ``both``) runs the same workloads against PostgreSQL
(``--pg-url``): twoway syncs the collection with a table in a fresh schema per repetition
(dropped after), the floor upserts with psycopg2 ``execute_values`` and dlt loads through its
postgres destination. Those workloads are named with ``-pg`` (``initial-pg``, ...); every
row also carries ``target``.

``writes-sharepoint`` / ``writes-salesforce`` (``--writes-n`` records): a one-way twoway
sync (every field ``db -> sp``/``db -> sf``) from a SQLite table into an empty list of the
Graph simulator (``$batch``, 20 a call) or an empty object of the Salesforce simulator
(sObject Collections, 200 a call), each simulator in its own process (``bench/saas.py``),
against ``bench/writes.py``, a plain httpx script making the same batched calls (the
"raw batched calls" ceiling); rows report records/s and twoway's share of the raw rate.

``--issue19`` measures what issue #19 asks, in one run: every workload at N=1,000,000
(``echo-readback``, the run after the initial one, included), ``initial-10m`` (one initial
load of ``--n10m`` records, stopped and recorded as stopped over ``--rss-limit-10m`` MiB),
the memory curve (twoway's initial load at each ``--curve`` size), the initial load at
``--n-small`` against the floor and dlt-sqlite, Prefect's fixed cost
(``bench/prefect_floor.py``) beside each twoway row, and each target with pass or miss.

Once per invocation it also times ``initial-cold``: ``twoway run`` with no Prefect server
configured, which pays for Prefect's temporary server. ``--workloads`` picks among
``sync`` (initial, echo-readback, incremental-1pct, incremental-readback, no-change),
``full``, ``writes`` and ``cold``. Peers run in their own virtual environment,
``bench/.venv-peers`` (created on first use with pip; git-ignored), never in twoway's.
Results: ``bench/results/latest.json`` (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_VENV = HERE / ".venv-peers"
PEER_PACKAGES = ["dlt[duckdb,sqlalchemy,parquet,postgres]", "httpx"]
FIELDS = [f"f{i:02d}" for i in range(1, 21)]
PEERS_BY_TARGET = {
    "sqlite": ("floor", "dlt-sqlite", "dlt-duckdb-parquet"),
    "postgres": ("floor", "dlt-postgres"),
}
RAW = "raw-batched"
PREFECT_ONLY = "prefect-only"  # bench/prefect_floor.py: a run's Prefect work and nothing else
PEERS = ("floor", "dlt-sqlite", "dlt-duckdb-parquet", "dlt-postgres", RAW, PREFECT_ONLY)
TOOLS = ("twoway", *PEERS)
WORKLOADS = ("sync", "full", "writes", "cold", "initial10m", "memory-curve", "initial100k")
DEFAULT_WORKLOADS = ("sync", "full", "writes", "cold")
SUFFIX = {"sqlite": "", "postgres": "-pg"}
PG_TYPES = {"TEXT": "TEXT", "INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BOOLEAN": "BOOLEAN"}
DEFAULT_PG_URL = os.environ.get(
    "TWOWAY_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
CLIENT_SECRET = "bench-secret"  # the simulators' client secret, passed by environment
BIN = Path(sys.executable).parent


# -- measuring one process ------------------------------------------------------------------


@dataclass
class Sample:
    """One timed process: wall seconds, CPU seconds (user + system), peak RSS in MiB."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    output: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Stopped(RuntimeError):
    """A timed process was stopped before it finished: its process tree went over the
    memory limit it was given. Carries what was measured until then."""

    def __init__(self, cmd: list[str], wall_s: float, peak_rss_mb: float, limit_mb: float):
        super().__init__(
            f"{' '.join(cmd[:3])} stopped after {wall_s:.1f} s: its processes held "
            f"{peak_rss_mb:.0f} MiB, over the limit of {limit_mb:.0f} MiB"
        )
        self.wall_s = wall_s
        self.peak_rss_mb = peak_rss_mb
        self.limit_mb = limit_mb


def timed(
    cmd: list[str], env: dict[str, str], timeout: float, rss_limit_mb: float | None = None
) -> Sample:
    """Run ``cmd`` to completion and measure it whole: CPU of its waited-for children
    included, peak RSS the larger of its own and its process tree's (sampled every 0.1 s).
    With ``rss_limit_mb``, a process tree holding more than that is killed (with its
    children) and :class:`Stopped` raised: a run that would take the machine's memory
    ends as a measured miss, not as the machine's failure."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - read back after the process exits
    err = tempfile.TemporaryFile()  # noqa: SIM115
    start = time.perf_counter()
    limited = rss_limit_mb is not None  # then in a session of its own, killed whole
    proc = subprocess.Popen(
        cmd, env=env, stdout=out, stderr=err, cwd=ROOT, start_new_session=limited
    )
    deadline = start + timeout
    tree_peak = 0  # KiB: the process and its children together, sampled
    sampled = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            if limited:
                kill_group(proc.pid)
            else:
                proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            raise RuntimeError(f"{cmd[:3]} took more than {timeout:.0f} s; killed")
        if time.perf_counter() - sampled > 0.1:
            tree_peak = max(tree_peak, tree_rss_kib(proc.pid))
            sampled = time.perf_counter()
            if rss_limit_mb is not None and tree_peak / 1024 > rss_limit_mb:
                wall = time.perf_counter() - start
                kill_group(proc.pid)
                os.wait4(proc.pid, 0)
                out.close()
                err.close()
                raise Stopped(cmd, round(wall, 3), round(tree_peak / 1024, 1), rss_limit_mb)
        time.sleep(0.005)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    out.close()
    err.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} exited {proc.returncode}:\n{stderr[-3000:]}")
    return Sample(
        wall_s=round(wall, 3),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        peak_rss_mb=round(max(usage.ru_maxrss, tree_peak) / 1024, 1),
        output=stdout,
    )


def kill_group(pid: int) -> None:
    """Kill the process ``pid`` started in its own session, and every process of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, 9)


def tree_rss_kib(root: int) -> int:
    """Resident memory of a process and all its descendants now, in KiB (0 once gone): a
    run that reads in worker processes is charged for them too (``wait4`` gives only the
    largest one's peak)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        parents[int(entry)] = int(fields.get("PPid", "0"))
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(rss.get(pid, 0) for pid in tree)


# -- services ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def http_json(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read() or b"null")


class Service:
    """A background process this harness started, stopped by its own pid."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path):
        self.log = log.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_prefect(work: Path) -> tuple[Service, str]:
    """A Prefect server on 127.0.0.1 with its own home (SQLite), as deployments use one."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    service = Service(cmd, env, work / "prefect-server.log")
    url = f"http://127.0.0.1:{port}/api"
    wait_http(url + "/health", 90, service.proc)
    return service, url


def start_collection(n: int, work: Path) -> tuple[Service, str]:
    """The REST collection of ``n`` records in its own process (bench/serve.py)."""
    port = free_port()
    cmd = [sys.executable, str(HERE / "serve.py"), "--port", str(port), "--n", str(n)]
    service = Service(cmd, dict(os.environ), work / f"collection-{port}.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/_bench/stats", 120 + n / 5_000, service.proc)  # 1M loads in ~30 s
    return service, base


def start_saas(kind: str, work: Path, latency_ms: float = 0.0) -> tuple[Service, str]:
    """The Graph (``sharepoint``) or Salesforce simulator in its own process (bench/saas.py),
    every answer delayed by ``latency_ms``."""
    port = free_port()
    cmd = [sys.executable, str(HERE / "saas.py"), kind, "--port", str(port)]
    cmd += ["--latency-ms", str(latency_ms)]
    env = {**os.environ, "BENCH_CLIENT_SECRET": CLIENT_SECRET}
    service = Service(cmd, env, work / f"{kind}-{port}.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/_bench/stats", 60, service.proc)
    return service, base


def ensure_peers(log: Any) -> Path | None:
    """The peers' virtual environment, built with pip on first use; None when that fails."""
    python = PEERS_VENV / "bin" / "python"
    marker = PEERS_VENV / ".ready"
    if marker.exists() and marker.read_text() == " ".join(PEER_PACKAGES):
        return python
    log(f"building {PEERS_VENV} ({', '.join(PEER_PACKAGES)}) ...")
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES],
            check=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"peers unavailable: {exc}")
        return None
    marker.write_text(" ".join(PEER_PACKAGES))
    return python


# -- the twoway side ------------------------------------------------------------------------


def column_types() -> dict[str, str]:
    """The SQL type of each field's column (bench/serve.py's COLUMN_TYPES)."""
    sys.path.insert(0, str(HERE))
    from serve import COLUMN_TYPES

    return COLUMN_TYPES


@dataclass
class Target:
    """Where twoway's table (and the peers' loads) live for one repetition."""

    kind: str  # "sqlite" | "postgres"
    db: Path | None = None  # the SQLite file
    pg_url: str = ""  # SQLAlchemy URL of the PostgreSQL database
    schema: str = ""  # the repetition's PostgreSQL schema

    @property
    def suffix(self) -> str:
        return SUFFIX[self.kind]

    @property
    def dsn(self) -> str:
        """The libpq form of ``pg_url`` (for psycopg2 and dlt)."""
        scheme, _, rest = self.pg_url.partition("://")
        return f"{scheme.split('+')[0]}://{rest}"


def pg_execute(dsn: str, statements: list[str]) -> list[Any]:
    """Run statements in autocommit mode; the rows of the last one (if it returns any)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def drop_schemas(target: Target) -> None:
    """Drop the repetition's schema and the ones dlt made beside it (``<schema>_dlt*``)."""
    if target.kind != "postgres" or not target.schema:
        return
    found = pg_execute(
        target.dsn,
        [
            f"SELECT nspname FROM pg_namespace WHERE nspname = '{target.schema}' "
            f"OR nspname LIKE '{target.schema}\\_dlt%'"
        ],
    )
    pg_execute(target.dsn, [f'DROP SCHEMA IF EXISTS "{name}" CASCADE' for (name,) in found])


def make_table(target: Target) -> None:
    """The table twoway keeps in step with the collection (empty at first): SQLite, or
    ``<schema>.items`` in PostgreSQL (a fresh schema)."""
    types = column_types()
    if target.kind == "sqlite":
        assert target.db is not None
        cols = ", ".join(f"{f} {types[f]}" for f in FIELDS)
        with sqlite3.connect(target.db) as conn:
            conn.execute(
                f"CREATE TABLE items (id TEXT PRIMARY KEY, {cols}, updated_at TEXT, updated_by TEXT)"
            )
            conn.execute("CREATE INDEX items_updated ON items (updated_at, id)")
        return
    cols = ", ".join(f"{f} {PG_TYPES[types[f]]}" for f in FIELDS)
    table = f'"{target.schema}".items'
    pg_execute(
        target.dsn,
        [
            f'CREATE SCHEMA "{target.schema}"',
            f"CREATE TABLE {table} (id TEXT PRIMARY KEY, {cols}, "
            "updated_at TIMESTAMP(6) WITH TIME ZONE, updated_by TEXT)",
            f"CREATE INDEX items_updated ON {table} (updated_at, id)",
        ],
    )


def db_system(target: Target) -> str:
    """The definition's ``db`` system for the target table (YAML, indented)."""
    if target.kind == "sqlite":
        where = f"url: sqlite:///{target.db}"
    else:
        where = f"url: {target.pg_url}\n    schema: {target.schema}"
    return f"""  db:
    kind: sql
    {where}
    table: items
    key: id
    modified_at: updated_at
    modified_by: updated_by
    integration_account: svc-sync
    overlap_seconds: 0
"""


def write_definition(path: Path, base: str, target: Target) -> None:
    """The sync: the REST collection and the target table, every field both ways."""
    fields = "\n".join(f"  {f}: {{api: {f}, db: {f}}}" for f in FIELDS)
    path.write_text(
        f"""name: bench
state: sqlite:///{path.parent / "state.db"}
systems:
  api:
    kind: rest
    base_url: {base}
    collection: /items
    item: /items/{{id}}
    batch: /$batch
    cursor_param: modified_since
    page_size_param: $top
    page_size: 1000
    key: id
    modified_at: modified_at
    modified_by: modified_by
    integration_account: svc-sync
    overlap_seconds: 0
{db_system(target)}fields:
{fields}
conflicts: last_writer_wins
deletes: propagate
"""
    )


def written(sample: Sample) -> int:
    """Records a twoway run created, updated or deleted, over every system."""
    return sum(
        int(c.get("created", 0)) + int(c.get("updated", 0)) + int(c.get("deleted", 0))
        for c in sample.extra["systems"].values()
    )


def twoway_run(
    definition: Path,
    api_url: str | None,
    work: Path,
    timeout: float,
    full: bool = False,
    rss_limit_mb: float | None = None,
) -> Sample:
    """One ``twoway run DEFINITION --json`` (``--full`` too when asked), timed whole
    (stopped as :class:`Stopped` once its processes hold more than ``rss_limit_mb``)."""
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "BENCH_CLIENT_SECRET": CLIENT_SECRET,
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:  # the cold path: no server configured, Prefect starts a temporary one
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(work / "prefect-cold-home")
    cmd = [str(BIN / "twoway"), "run", str(definition), "--json", *(["--full"] if full else [])]
    sample = timed(cmd, env, timeout, rss_limit_mb)
    report = json.loads(sample.output.strip().splitlines()[-1])
    if report.get("status") != "completed":
        raise RuntimeError(f"twoway run did not complete: {report}")
    sample.extra["systems"] = report["systems"]
    sample.extra["written"] = written(sample)
    sample.extra["run_s"] = report.get("seconds")  # the sync itself, after start-up
    return sample


def edit_api(base: str, n: int, share: float, rng: random.Random) -> list[str]:
    """People edit ``share`` of the collection's records (two fields each) through $batch."""
    ids = [f"r{i:08d}" for i in rng.sample(range(n), max(1, int(n * share)))]
    for start in range(0, len(ids), 20):
        requests = [
            {
                "id": str(j),
                "method": "PATCH",
                "url": f"/items/{key}",
                "headers": {"Content-Type": "application/json"},
                "body": {"f03": "Edited by alice", "f05": rng.randrange(1_000_000)},
            }
            for j, key in enumerate(ids[start : start + 20])
        ]
        answer = http_json("POST", base + "/$batch", {"requests": requests}, token="token-alice")
        bad = [r for r in answer["responses"] if r["status"] != 200]
        if bad:
            raise RuntimeError(f"editing the collection failed: {bad[:2]}")
    return ids


def edit_table(target: Target, share: float, rng: random.Random, avoid_f06: set[int]) -> int:
    """People edit ``share`` of the table's rows (two other fields), not rows edited on the API."""
    if target.kind == "postgres":
        import psycopg2

        table = f'"{target.schema}".items'
        with psycopg2.connect(target.dsn) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT id, f06 FROM {table}")
            rows = [r for (r, f06) in cur.fetchall() if f06 not in avoid_f06]
            picked = rng.sample(rows, max(1, int(len(rows) * share)))
            cur.executemany(
                f"UPDATE {table} SET f13 = 'edited in db', f17 = %s, updated_at = now(), "
                "updated_by = 'alice' WHERE id = %s",
                [(rng.randrange(1000), key) for key in picked],
            )
        conn.close()
        return len(picked)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(target.db or "") as conn:
        rows = [r for (r, f06) in conn.execute("SELECT id, f06 FROM items") if f06 not in avoid_f06]
        picked = rng.sample(rows, max(1, int(len(rows) * share)))
        conn.executemany(
            "UPDATE items SET f13 = 'edited in db', f17 = ?, updated_at = ?, updated_by = 'alice' "
            "WHERE id = ?",
            [(rng.randrange(1000), stamp, key) for key in picked],
        )
    return len(picked)


def peer_command(
    tool: str, base: str, here: Path, target: Target, peers_python: Path | None
) -> list[str]:
    """The command of one peer load (bench/peers.py) of the collection at ``base``."""
    python = str(peers_python or sys.executable)
    cmd = [python, str(HERE / "peers.py"), tool, base, str(here / tool)]
    if target.kind == "postgres":
        cmd += ["--postgres", target.dsn, "--schema", target.schema]
    return cmd


# -- one repetition ---------------------------------------------------------------------------


def repetition(
    rep: int,
    n: int,
    work: Path,
    api_url: str,
    peers_python: Path | None,
    tools: list[str],
    workloads: list[str],
    target: Target,
    timeout: float,
    log: Any,
) -> list[tuple[str, str, Sample]]:
    """The sync workloads (and full reconciliation) once, on a fresh collection and a fresh
    target table; (workload, tool, sample) per timed run."""
    out: list[tuple[str, str, Sample]] = []
    suffix = target.suffix
    here = work / f"rep{rep}{suffix}"
    here.mkdir()
    if target.kind == "sqlite":
        target.db = here / "db.sqlite"
    else:
        target.schema = f"twoway_bench_{os.getpid()}_r{rep}"
    sync = "sync" in workloads
    collection, base = start_collection(n, work)
    try:
        peers = [
            t
            for t in tools
            if sync and t in PEERS_BY_TARGET[target.kind] and (t == "floor" or peers_python)
        ]

        def peer(tool: str, workload: str) -> None:
            cmd = peer_command(tool, base, here, target, peers_python)
            http_json("POST", base + "/_bench/reset")
            sample = timed(cmd, dict(os.environ), timeout)
            sample.extra["api"] = http_json("GET", base + "/_bench/stats")
            sample.extra["n"] = n
            out.append((workload + suffix, tool, sample))
            log(
                f"  {workload + suffix:22} {tool:20} {sample.wall_s:8.2f} s wall "
                f"{sample.cpu_s:8.2f} s cpu"
            )

        def ours(workload: str, definition: Path, record: bool = True, full: bool = False) -> None:
            http_json("POST", base + "/_bench/reset")
            sample = twoway_run(definition, api_url, here, timeout, full=full)
            sample.extra["api"] = http_json("GET", base + "/_bench/stats")
            sample.extra["n"] = n
            if record:
                out.append((workload + suffix, "twoway", sample))
            log(
                f"  {workload + suffix:22} {'twoway':20} {sample.wall_s:8.2f} s wall "
                f"{sample.cpu_s:8.2f} s cpu  {sample.extra['systems']}  api {sample.extra['api']}"
            )
            quiet = ("no-change", "full-reconciliation", "echo-readback", "incremental-readback")
            if workload in quiet and sample.extra["written"]:
                log(f"  WARNING: {workload + suffix} wrote {sample.extra['written']} record(s)")

        definition = here / "bench.sync.yaml"
        make_table(target)
        write_definition(definition, base, target)

        for tool in peers:
            peer(tool, "initial")
        if "twoway" in tools:
            ours("initial", definition, record=sync)
            # the run after the initial one reads twoway's own N writes back (echoes): the
            # steady state the incremental workload starts from; it must write nothing
            ours("echo-readback", definition, record=sync)
            if "full" in workloads:
                ours("full-reconciliation", definition, full=True)
        if not sync:
            return out
        rng = random.Random(rep)
        edited = edit_api(base, n, 0.01, rng)
        for tool in peers:
            peer(tool, "incremental-1pct")
        for tool in peers:
            peer(tool, "no-change")
        if "twoway" in tools:
            edit_table(target, 0.01, rng, {int(k[1:]) for k in edited})
            ours("incremental-1pct", definition)
            ours("incremental-readback", definition)
            ours("no-change", definition)
        if PREFECT_ONLY in tools and target.kind == "sqlite":
            # what the no-change run would cost if twoway did nothing but Prefect's part
            env = {**os.environ, "PREFECT_API_URL": api_url}
            env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
            sample = timed([sys.executable, str(HERE / "prefect_floor.py")], env, timeout)
            sample.extra["n"] = n
            out.append(("no-change", PREFECT_ONLY, sample))
            log(f"  {'no-change':22} {PREFECT_ONLY:20} {sample.wall_s:8.2f} s wall")
    finally:
        collection.stop()
        drop_schemas(target)
    return out


def cold(n: int, work: Path, timeout: float, log: Any) -> Sample:
    """``twoway run`` with no Prefect server configured (pays for a temporary server)."""
    here = work / "cold"
    here.mkdir()
    collection, base = start_collection(n, work)
    try:
        definition = here / "bench.sync.yaml"
        target = Target("sqlite", db=here / "db.sqlite")
        make_table(target)
        write_definition(definition, base, target)
        sample = twoway_run(definition, None, here, timeout)
        log(f"  {'initial-cold':22} {'twoway':20} {sample.wall_s:8.2f} s wall")
        return sample
    finally:
        collection.stop()


def initial_load(
    workload: str,
    n: int,
    work: Path,
    api_url: str,
    peers_python: Path | None,
    tools: list[str],
    timeout: float,
    log: Any,
    rss_limit_mb: float | None = None,
) -> list[tuple[str, str, Sample]]:
    """``workload``: each of ``tools`` loads a fresh collection of ``n`` records into an
    empty SQLite table, as ``initial`` does, and nothing else runs after. A run whose
    processes hold more than ``rss_limit_mb`` is stopped and recorded as stopped (its wall
    time until then, and the memory it had reached)."""
    out: list[tuple[str, str, Sample]] = []
    here = work / f"{workload}-{n}"
    here.mkdir()
    target = Target("sqlite", db=here / "db.sqlite")
    collection, base = start_collection(n, work)
    try:
        definition = here / "bench.sync.yaml"
        make_table(target)
        write_definition(definition, base, target)
        for tool in tools:
            http_json("POST", base + "/_bench/reset")
            try:
                if tool == "twoway":
                    sample = twoway_run(
                        definition, api_url, here, timeout, rss_limit_mb=rss_limit_mb
                    )
                else:
                    cmd = peer_command(tool, base, here, target, peers_python)
                    sample = timed(cmd, dict(os.environ), timeout, rss_limit_mb)
            except Stopped as stop:
                sample = Sample(wall_s=stop.wall_s, cpu_s=0.0, peak_rss_mb=stop.peak_rss_mb)
                sample.extra["stopped"] = str(stop)
                if tool == "twoway":
                    sample.extra |= {"systems": {}, "written": 0, "run_s": None}
                log(f"  {workload:22} {tool:20} STOPPED: {stop}")
            sample.extra["api"] = http_json("GET", base + "/_bench/stats")
            sample.extra["n"] = n
            out.append((workload, tool, sample))
            log(
                f"  {workload:22} {tool:20} {sample.wall_s:8.2f} s wall {sample.cpu_s:8.2f} s cpu"
                f"  {sample.peak_rss_mb:8.1f} MiB  n={n}  api {sample.extra['api']}"
            )
    finally:
        collection.stop()
    return out


def prefect_floor(api_url: str, repeat: int, timeout: float, log: Any) -> list[Sample]:
    """Prefect's fixed cost of a run: ``bench/prefect_floor.py`` (a flow run with a twoway
    run's task runs, logs and artifacts, and no work), a whole process against the same
    Prefect server, ``repeat`` times."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    out = []
    for _ in range(repeat):
        sample = timed([sys.executable, str(HERE / "prefect_floor.py")], env, timeout)
        out.append(sample)
        log(f"  {'prefect-floor':22} {PREFECT_ONLY:20} {sample.wall_s:8.2f} s wall")
    return out


# -- writes into the SaaS simulators -----------------------------------------------------------


def make_source(db: Path, n: int) -> None:
    """The SQLite table ``items`` a one-way sync loads from: the collection's first ``n``
    records (the same 20 fields), stamped as people's rows."""
    sys.path.insert(0, str(HERE))
    from serve import records

    make_table(Target("sqlite", db=db))
    insert = f"INSERT INTO items VALUES ({', '.join('?' for _ in range(len(FIELDS) + 3))})"
    with sqlite3.connect(db) as conn:
        conn.executemany(
            insert,
            (
                (
                    r["id"],
                    *(r[f] for f in FIELDS),
                    r["modified_at"][:26].replace("T", " "),
                    "loader",
                )
                for r in records(n)
            ),
        )


def write_saas_definition(
    path: Path, kind: str, base: str, db: Path, in_flight: int | None = None
) -> None:
    """A one-way sync: every field flows from the SQLite table into the simulator, with
    ``in_flight`` write batches on their way at once (None: the system's default)."""
    if kind == "sharepoint":
        system = f"""  sp:
    kind: sharepoint
    graph_url: {base}
    token_url: {base}/contoso.onmicrosoft.com/oauth2/v2.0/token
    client_id: bench
    client_secret: ${{BENCH_CLIENT_SECRET}}
    list: Bench
    integration_account: svc-sync
"""
        name, column = "sp", "{f}"
    else:
        system = f"""  sf:
    kind: salesforce
    instance_url: {base}
    client_id: bench
    client_secret: ${{BENCH_CLIENT_SECRET}}
    object: Bench__c
"""
        name, column = "sf", "{f}__c"
    if in_flight is not None:
        system += f"    writes_in_flight: {in_flight}\n"
    fields = "\n".join(
        f"  {f}: {{db: {f}, {name}: {column.format(f=f)}, direction: db -> {name}}}" for f in FIELDS
    )
    path.write_text(
        f"""name: bench-writes
state: sqlite:///{path.parent / "state.db"}
systems:
  db:
    kind: sql
    url: sqlite:///{db}
    table: items
    key: id
    modified_at: updated_at
    modified_by: updated_by
    integration_account: svc-sync
{system}fields:
{fields}
conflicts: last_writer_wins
deletes: propagate
"""
    )


def writes(
    rep: int,
    n: int,
    work: Path,
    api_url: str,
    tools: list[str],
    timeout: float,
    log: Any,
    latency_ms: float = 0.0,
    in_flight: int | None = None,
) -> list[tuple[str, str, Sample]]:
    """``writes-sharepoint`` and ``writes-salesforce``: each tool loads the same ``n`` rows
    into a freshly started, empty simulator answering after ``latency_ms``; the simulator
    must then hold ``n`` records. twoway keeps ``in_flight`` batches on their way (None:
    the system's default); the raw script sends one after another."""
    out: list[tuple[str, str, Sample]] = []
    here = work / f"writes{rep}"
    here.mkdir()
    source = here / "source.sqlite"
    make_source(source, n)
    for kind in ("sharepoint", "salesforce"):
        workload = f"writes-{kind}"
        for tool in [t for t in (RAW, "twoway") if t in tools]:
            run_dir = here / f"{kind}-{tool}"
            run_dir.mkdir()
            db = run_dir / "source.sqlite"
            shutil.copyfile(source, db)  # each run reads an untouched copy
            service, base = start_saas(kind, work, latency_ms)
            try:
                if tool == "twoway":
                    definition = run_dir / "writes.sync.yaml"
                    write_saas_definition(definition, kind, base, db, in_flight)
                    sample = twoway_run(definition, api_url, run_dir, timeout)
                else:
                    env = {**os.environ, "BENCH_CLIENT_SECRET": CLIENT_SECRET}
                    cmd = [sys.executable, str(HERE / "writes.py"), kind, base, str(db)]
                    sample = timed(cmd, env, timeout)
                stats = http_json("GET", base + "/_bench/stats")
            finally:
                service.stop()
            if stats["records"] != n:
                raise RuntimeError(
                    f"{workload} {tool}: the simulator holds {stats['records']} of {n}"
                )
            sample.extra["api"] = stats
            sample.extra["n"] = n
            out.append((workload, tool, sample))
            log(
                f"  {workload:22} {tool:20} {sample.wall_s:8.2f} s wall {sample.cpu_s:8.2f} s cpu"
                f"  {n / sample.wall_s:9.0f} records/s  api {stats}"
            )
    return out


# -- reporting --------------------------------------------------------------------------------


def summarise(samples: list[tuple[str, str, Sample]], n: int) -> list[dict[str, Any]]:
    """One row per (workload, tool, records): lists of per-run figures, in run order."""
    grouped: dict[tuple[str, str, int], list[Sample]] = {}
    for workload, tool, sample in samples:
        grouped.setdefault((workload, tool, sample.extra.get("n", n)), []).append(sample)
    rows = []
    for (workload, tool, size), group in grouped.items():
        row: dict[str, Any] = {
            "workload": workload,
            "tool": tool,
            "n": size,
            "target": target_of(workload),
            "wall_s": [s.wall_s for s in group],
            "cpu_s": [s.cpu_s for s in group],
            "peak_rss_mb": [s.peak_rss_mb for s in group],
            "api_calls": [s.extra.get("api") for s in group],
        }
        if any("stopped" in s.extra for s in group):
            row["stopped"] = [s.extra.get("stopped") for s in group]
        if tool == "twoway":
            row["counts"] = [s.extra["systems"] for s in group]
            row["written"] = [s.extra["written"] for s in group]
            row["run_s"] = [s.extra.get("run_s") for s in group]
        if workload.startswith("writes-"):
            row["records_per_s"] = [round(size / s.wall_s, 1) for s in group]
        rows.append(row)
    # run-by-run ratio of twoway to each peer (same repetition, same collection)
    by = {(r["workload"], r["tool"], r["n"]): r for r in rows}
    for row in rows:
        if row["tool"] != "twoway":
            continue
        ratios = {}
        for peer in PEERS:
            other = by.get((row["workload"], peer, row["n"]))
            if other and len(other["wall_s"]) == len(row["wall_s"]):
                ratios[peer] = [
                    round(a / b, 2) for a, b in zip(row["wall_s"], other["wall_s"], strict=True)
                ]
        row["ratio_to"] = ratios
        raw = by.get((row["workload"], RAW, row["n"]))
        if "records_per_s" in row and raw and len(raw["wall_s"]) == len(row["wall_s"]):
            # twoway's records/s as a share of the raw script's (the issue's target: >= 0.7)
            row["share_of_raw"] = [
                round(r / w, 3) for w, r in zip(row["wall_s"], raw["wall_s"], strict=True)
            ]
    return rows


def target_of(workload: str) -> str:
    """What the workload writes into: sqlite, postgres, sharepoint or salesforce."""
    if workload.startswith("writes-"):
        return workload.removeprefix("writes-")
    return "postgres" if workload.endswith("-pg") else "sqlite"


def fmt(values: list[float]) -> str:
    """Median, and the range when there are several values."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


ORDER = [
    "prefect-floor",
    "initial",
    "initial-cold",
    "echo-readback",
    "full-reconciliation",
    "incremental-1pct",
    "incremental-readback",
    "no-change",
]


def text_table(head: list[str], lines: list[list[str]]) -> str:
    """Columns padded to their widest cell, a rule under the head."""
    lines = [head, *lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text)


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by workload (in the order they run), size and tool."""
    rank = {
        w + suffix: i + 100 * j for j, suffix in enumerate(("", "-pg")) for i, w in enumerate(ORDER)
    }
    rank |= {"initial-10m": 150, "writes-sharepoint": 200, "writes-salesforce": 201}
    tools = {t: i for i, t in enumerate(TOOLS)}
    return sorted(
        rows, key=lambda r: (rank.get(r["workload"], 999), r["n"], tools.get(r["tool"], 99))
    )


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a text table, workloads in the order they run."""
    head = ["workload", "tool", "n", "wall s", "run s", "cpu s", "peak RSS MiB", "twoway / peer"]
    lines = []
    for r in ordered(rows):
        ratio = ", ".join(
            f"{p}: {statistics.median(v):.2f}x" for p, v in r.get("ratio_to", {}).items()
        )
        if "records_per_s" in r:
            ratio = f"{statistics.median(r['records_per_s']):.0f} rec/s" + (
                f", {statistics.median(r['share_of_raw']):.0%} of raw"
                if "share_of_raw" in r
                else ""
            )
        if any(r.get("stopped") or []):
            ratio = "STOPPED over the memory limit"  # its wall is not a load's: no ratio
        run_s = [v for v in r.get("run_s", []) if v is not None]
        lines.append(
            [
                r["workload"],
                r["tool"],
                str(r["n"]),
                fmt(r["wall_s"]),
                fmt(run_s),
                fmt(r["cpu_s"]),
                fmt(r["peak_rss_mb"]),
                ratio,
            ]
        )
    return text_table(head, lines)


# -- issue #19's figures ----------------------------------------------------------------------


def find(
    rows: list[dict[str, Any]], workload: str, tool: str, n: int | None = None
) -> dict[str, Any] | None:
    """The row of ``workload`` by ``tool`` at ``n`` records (any size when None: the
    largest)."""
    found = [
        r
        for r in rows
        if r["workload"] == workload and r["tool"] == tool and (n is None or r["n"] == n)
    ]
    return max(found, key=lambda r: r["n"]) if found else None


def med(row: dict[str, Any] | None, key: str) -> float | None:
    """The median of a row's figures (None when the row or the figures are missing)."""
    if row is None:
        return None
    values = [v for v in row.get(key, []) if v is not None]
    return statistics.median(values) if values else None


def stopped(row: dict[str, Any] | None) -> bool:
    return row is not None and any(row.get("stopped") or [])


def prefect_share(rows: list[dict[str, Any]], n: int) -> str:
    """Each twoway row split into twoway's own work (``run_s``: the ``seconds`` of its
    ``--json`` report) and the rest of the process (start-up, Prefect, exit), beside
    Prefect's fixed cost (a flow run that does nothing, as a whole process)."""
    floor = find(rows, "prefect-floor", PREFECT_ONLY)
    p = med(floor, "wall_s")
    lines = []
    for r in ordered(rows):
        if r["tool"] != "twoway":
            continue
        wall, run = med(r, "wall_s"), med(r, "run_s")
        if wall is None:
            continue
        rest = wall - run if run is not None else None
        lines.append(
            [
                r["workload"],
                str(r["n"]),
                f"{wall:.2f}",
                f"{run:.2f}" if run is not None else "-",
                f"{rest:.2f}" if rest is not None else "-",
                f"{p / wall:.0%}" if p is not None and wall else "-",
                f"{rest / wall:.0%}" if rest is not None and wall else "-",
            ]
        )
    head = ["twoway workload", "n", "wall s", "run s", "rest s", "Prefect floor / wall"]
    head.append("rest / wall")
    text = [
        f"Prefect's fixed cost (bench/prefect_floor.py, a flow run doing nothing, whole "
        f"process): {fmt(floor['wall_s']) if floor else 'not measured'} s",
        text_table(head, lines),
    ]
    main = find(rows, "initial", "twoway", n)
    if main is not None and p is not None:
        wall, run = med(main, "wall_s"), med(main, "run_s")
        assert wall is not None
        rest = (
            f"; start-up + Prefect (wall - run s): {wall - run:.2f} s ({(wall - run) / wall:.0%})"
        )
        text.append(
            f"Prefect's share of the initial run at N={n:,}: {p:.2f} s of {wall:.2f} s "
            f"({p / wall:.1%})" + (rest if run is not None else "")
        )
    return "\n".join(text)


def memory_table(rows: list[dict[str, Any]], sizes: list[int]) -> str:
    """Peak RSS of twoway's initial load at each size of the curve, and each as a
    multiple of the smallest's."""
    points = [(size, find(rows, "initial", "twoway", size)) for size in sizes]
    points = [(size, row) for size, row in points if row is not None]
    if not points:
        return "memory curve: not measured"
    base = med(points[0][1], "peak_rss_mb") or 0.0
    lines = []
    for size, row in points:
        rss = med(row, "peak_rss_mb") or 0.0
        wall, run = med(row, "wall_s"), med(row, "run_s")
        lines.append(
            [
                f"{size:,}",
                f"{wall:.2f}" if wall is not None else "-",
                f"{run:.2f}" if run is not None else "-",
                f"{rss:.1f}",
                f"{rss / base:.2f}x" if base else "-",
            ]
        )
    head = ["n", "wall s", "run s", "peak RSS MiB", f"RSS / RSS at {points[0][0]:,}"]
    text = [text_table(head, lines)]
    if len(points) > 1 and base:
        last = med(points[-1][1], "peak_rss_mb") or 0.0
        text.append(f"ratio of peak RSS {points[-1][0]:,} / {points[0][0]:,}: {last / base:.2f}x")
    return "\n".join(text)


@dataclass
class Goal:
    """One of issue #19's targets, checked against this run's figures."""

    what: str
    figure: str
    limit: str
    ok: bool | None  # None: not measured
    note: str = ""

    def verdict(self) -> str:
        return {True: "pass", False: "MISS", None: "not measured"}[self.ok]


def at(size: int, wanted: int) -> str:
    """A note when a target was checked at another size than the one it names."""
    return "" if size == wanted else f"measured at N={size:,}, the target is for {wanted:,}"


def goals(
    rows: list[dict[str, Any]], n: int, n_small: int, n10m: int, curve: list[int], writes_n: int
) -> list[Goal]:
    """Issue #19's targets next to this run's figures (medians over repetitions)."""
    out: list[Goal] = []
    mib = 1024.0

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def check(what: str, value: float | None, limit: float, shown: str, unit: str, note=""):
        figure = "-" if value is None else f"{value:.{1 if unit == ' MiB' else 2}f}{unit}"
        ok = None if value is None else value <= limit
        out.append(Goal(what, figure, shown, ok, note))

    # the initial load at N (1M)
    tw, dlt, floor = (find(rows, "initial", t, n) for t in ("twoway", "dlt-sqlite", "floor"))
    note = at(n, 1_000_000)
    check(
        "initial REST->SQLite: wall / dlt-sqlite",
        ratio(med(tw, "wall_s"), med(dlt, "wall_s")),
        0.5,
        "<= 0.5x",
        "x",
        note,
    )
    check(
        "initial REST->SQLite: wall / floor",
        ratio(med(tw, "wall_s"), med(floor, "wall_s")),
        4,
        "<= 4x",
        "x",
        note,
    )
    check(
        "initial REST->SQLite: peak RSS", med(tw, "peak_rss_mb"), mib, "<= 1024 MiB", " MiB", note
    )
    # the memory curve
    small, large = (find(rows, "initial", "twoway", size) for size in (curve[0], curve[-1]))
    check(
        f"peak RSS at {curve[-1]:,} / at {curve[0]:,}",
        ratio(med(large, "peak_rss_mb"), med(small, "peak_rss_mb")),
        1.3,
        "<= 1.3x",
        "x",
        "" if (curve[0], curve[-1]) == (100_000, 1_000_000) else "the target is 1M / 100k",
    )
    # the 10M load
    big = find(rows, "initial-10m", "twoway", n10m)
    note = at(n10m, 10_000_000)
    if big is not None and stopped(big):
        out.append(
            Goal(
                "initial 10M: completes within 1.5 GiB",
                f"stopped at {med(big, 'peak_rss_mb'):.0f} MiB after {med(big, 'wall_s'):.0f} s",
                "<= 1536 MiB",
                False,
                note,
            )
        )
    else:
        rss = med(big, "peak_rss_mb")
        figure = "-" if big is None else f"{rss:.1f} MiB in {med(big, 'wall_s'):.1f} s"
        out.append(
            Goal(
                "initial 10M: completes within 1.5 GiB (time)",
                figure,
                "<= 1536 MiB",
                None if rss is None else rss <= 1.5 * mib,
                note,
            )
        )
    # the initial load at 100k
    tw, dlt, floor = (find(rows, "initial", t, n_small) for t in ("twoway", "dlt-sqlite", "floor"))
    note = at(n_small, 100_000)
    check(
        "initial: wall / dlt-sqlite wall",
        ratio(med(tw, "wall_s"), med(dlt, "wall_s")),
        0.6,
        "<= 0.6x",
        "x",
        note,
    )
    check(
        "initial: run s / floor wall",
        ratio(med(tw, "run_s"), med(floor, "wall_s")),
        3,
        "<= 3x",
        "x",
        note,
    )
    # the run after the initial one
    echo, first = find(rows, "echo-readback", "twoway", n), find(rows, "initial", "twoway", n)
    note = at(n, 1_000_000)
    wrote = med(echo, "written")
    out.append(
        Goal(
            "echo read-back: writes nothing",
            "-" if wrote is None else f"{wrote:.0f} written",
            "0",
            None if wrote is None else wrote == 0,
            note,
        )
    )
    check(
        "echo read-back: wall / initial wall",
        ratio(med(echo, "wall_s"), med(first, "wall_s")),
        0.3,
        "<= 0.3x",
        "x",
        note,
    )
    # incremental and no-change on N linked records
    inc = find(rows, "incremental-1pct", "twoway", n)
    check(
        "incremental 1%: wall / dlt-sqlite wall",
        ratio(med(inc, "wall_s"), med(find(rows, "incremental-1pct", "dlt-sqlite", n), "wall_s")),
        1,
        "<= 1x",
        "x",
        note,
    )
    check(
        "incremental 1%: run s / dlt-duckdb wall",
        ratio(
            med(inc, "run_s"),
            med(find(rows, "incremental-1pct", "dlt-duckdb-parquet", n), "wall_s"),
        ),
        1,
        "<= 1x",
        "x",
        note,
    )
    quiet = med(find(rows, "no-change", "twoway", n), "run_s")
    out.append(
        Goal(
            "no-change: run s",
            "-" if quiet is None else f"{quiet:.2f} s",
            "< 0.3 s",
            None if quiet is None else quiet < 0.3,
            note,
        )
    )
    full = find(rows, "full-reconciliation", "twoway", n)
    wall, rss = med(full, "wall_s"), med(full, "peak_rss_mb")
    out.append(
        Goal(
            "full reconciliation: wall",
            "-" if wall is None else f"{wall:.2f} s",
            "< 30 s",
            None if wall is None else wall < 30,
            note,
        )
    )
    out.append(
        Goal(
            "full reconciliation: peak RSS",
            "-" if rss is None else f"{rss:.1f} MiB",
            "< 1024 MiB",
            None if rss is None else rss < mib,
            note,
        )
    )
    # updates into the SaaS simulators
    for kind in ("sharepoint", "salesforce"):
        share = med(find(rows, f"writes-{kind}", "twoway", writes_n), "share_of_raw")
        out.append(
            Goal(
                f"writes into {kind}: share of raw batched calls",
                "-" if share is None else f"{share:.0%}",
                ">= 70%",
                None if share is None else share >= 0.7,
                at(writes_n, 100_000),
            )
        )
    return out


def goals_table(found: list[Goal]) -> str:
    """The targets, this run's figures and pass or miss; the note says when a figure was
    measured at another size than the target names."""
    head = ["target (issue #19)", "this run", "asked", "result", "note"]
    lines = [
        [g.what, g.figure, g.limit, g.verdict(), g.note if g.ok is not None else ""] for g in found
    ]
    return text_table(head, lines)


def split_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated option as a list, every item one of ``allowed``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


ISSUE19 = {  # what --issue19 sets, unless given: every figure issue #19 asks for, in one run
    "n": 1_000_000,
    "repeat": 1,
    "workloads": "sync,full,writes,initial10m,memory-curve,initial100k",
    "writes_n": 100_000,
    "n10m": 10_000_000,
    "curve": "100000,300000,1000000",
    "n_small": 100_000,
    "timeout": 3_600.0,
    "out": HERE / "results" / "issue19.json",
}


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run every selected workload, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="twoway's benchmark suite (see BENCHMARKS.md)")
    parser.add_argument(
        "--quick", action="store_true", help="1 run of each, N=20,000, writes N=5,000"
    )
    parser.add_argument(
        "--issue19",
        action="store_true",
        help="every figure of issue #19 in one run, with its targets: N=1,000,000, one "
        "repetition, workloads sync,full,writes,initial10m,memory-curve,initial100k, "
        "writes N=100,000, no cold run (each can still be set)",
    )
    parser.add_argument("--n", type=int, default=None, help="records (default 100,000)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help="comma-separated: " + ", ".join(TOOLS)
    )
    parser.add_argument(
        "--workloads",
        default=None,
        help="comma-separated: sync (initial, echo-readback, incremental-1pct, "
        "incremental-readback, no-change), "
        "full (full-reconciliation), writes (writes-sharepoint, writes-salesforce), cold, "
        "initial10m (initial-10m: one --n10m initial load), memory-curve (twoway's initial "
        "load at each --curve size), initial100k (initial at --n-small: twoway, floor, "
        f"dlt-sqlite). Default: {','.join(DEFAULT_WORKLOADS)}",
    )
    parser.add_argument(
        "--target",
        choices=["sqlite", "postgres", "both"],
        default="sqlite",
        help="the table of the sync workloads: SQLite (default), PostgreSQL (workloads "
        "named *-pg), or both",
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL (SQLAlchemy URL)")
    parser.add_argument(
        "--writes-n", type=int, default=None, help="records of the write workloads (default: --n)"
    )
    parser.add_argument(
        "--n10m", type=int, default=None, help="records of initial10m (default 10,000,000)"
    )
    parser.add_argument(
        "--tools10m",
        default="twoway,floor",
        help="tools of initial10m (default twoway,floor; the dlt peers take long at 10M)",
    )
    parser.add_argument(
        "--rss-limit-10m",
        type=float,
        default=3_072,
        help="MiB: an initial10m run whose processes hold more is stopped and recorded as "
        "stopped (default 3,072: twice the target)",
    )
    parser.add_argument(
        "--timeout-10m", type=float, default=14_400, help="seconds allowed the initial10m runs"
    )
    parser.add_argument(
        "--curve",
        default=None,
        help="sizes of memory-curve, comma-separated (default 100000,300000,1000000); a "
        "size already loaded by twoway in this invocation is not loaded again",
    )
    parser.add_argument(
        "--n-small", type=int, default=None, help="records of initial100k (default 100,000)"
    )
    parser.add_argument(
        "--prefect-repeat",
        type=int,
        default=3,
        help="runs of bench/prefect_floor.py (Prefect's fixed cost; default 3)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay of every answer of the SaaS simulators (write workloads; default 0)",
    )
    parser.add_argument(
        "--writes-in-flight",
        type=int,
        default=None,
        help="twoway's write batches on their way at once (default: the system's, 2)",
    )
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-path run")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds allowed per run (default 600)"
    )
    parser.add_argument("--out", type=Path, default=None, help="the JSON results")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.writes_in_flight is not None and not 1 <= args.writes_in_flight <= 8:
        parser.error(f"--writes-in-flight takes 1 to 8, not {args.writes_in_flight}")
    if args.latency_ms < 0:
        parser.error(f"--latency-ms cannot be negative ({args.latency_ms})")
    if args.issue19:
        for name, value in ISSUE19.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        args.no_cold = True
    repeat = args.repeat or (1 if args.quick else 3)
    args.n = args.n or (20_000 if args.quick else 100_000)
    writes_n = args.writes_n or (min(args.n, 5_000) if args.quick else args.n)
    n10m = args.n10m or 10_000_000
    n_small = args.n_small or 100_000
    timeout = args.timeout or 600.0
    out_path = args.out or HERE / "results" / "latest.json"
    tools = split_list(args.tools, TOOLS, "tools")
    workloads = split_list(args.workloads or ",".join(DEFAULT_WORKLOADS), WORKLOADS, "workloads")
    tools10m = split_list(args.tools10m, TOOLS, "tools of initial10m")
    try:
        curve = sorted(int(v) for v in (args.curve or "100000,300000,1000000").split(",") if v)
    except ValueError:
        parser.error(f"--curve takes sizes separated by commas, not {args.curve!r}")
    targets = ["sqlite", "postgres"] if args.target == "both" else [args.target]
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    wanted_peers = {t for k in targets for t in PEERS_BY_TARGET[k]} & set(tools)
    if "initial100k" in workloads:
        wanted_peers |= {"dlt-sqlite"} & set(tools)
    if "initial10m" in workloads:
        wanted_peers |= {t for t in tools10m if t.startswith("dlt")}
    loads = {"sync", "initial100k", "initial10m"} & set(workloads)
    needs_peers = bool(loads) and any(t.startswith("dlt") for t in wanted_peers)
    peers_python = ensure_peers(log) if needs_peers else None
    work = Path(tempfile.mkdtemp(prefix="twoway-bench-"))
    prefect = None
    samples: list[tuple[str, str, Sample]] = []
    try:
        api_url = None
        if "twoway" in tools or "twoway" in tools10m:
            prefect, api_url = start_prefect(work)
            log(f"Prefect server at {api_url}")
            if args.prefect_repeat > 0:
                for sample in prefect_floor(api_url, args.prefect_repeat, timeout, log):
                    samples.append(("prefect-floor", PREFECT_ONLY, sample))
        for rep in range(repeat):
            if {"sync", "full"} & set(workloads):
                for kind in targets:
                    log(f"repetition {rep + 1} of {repeat}, N={args.n}, target {kind}")
                    target = Target(kind, pg_url=args.pg_url)
                    samples += repetition(
                        rep,
                        args.n,
                        work,
                        api_url or "",
                        peers_python,
                        tools,
                        workloads,
                        target,
                        timeout,
                        log,
                    )
            if "writes" in workloads and {"twoway", RAW} & set(tools):
                log(f"repetition {rep + 1} of {repeat}, writes, N={writes_n}")
                samples += writes(
                    rep,
                    writes_n,
                    work,
                    api_url or "",
                    tools,
                    timeout,
                    log,
                    args.latency_ms,
                    args.writes_in_flight,
                )

        def loaded(tool: str, n: int) -> bool:
            return any(
                w == "initial" and t == tool and s.extra.get("n") == n for w, t, s in samples
            )

        def available(tool: str) -> bool:
            return tool in ("twoway", "floor") or (tool.startswith("dlt") and bool(peers_python))

        if "initial100k" in workloads:
            small = [
                t
                for t in ("floor", "dlt-sqlite", "twoway")
                if t in tools and available(t) and not loaded(t, n_small)
            ]
            if small:
                log(f"initial100k: initial load at N={n_small} ({', '.join(small)})")
                samples += initial_load(
                    "initial", n_small, work, api_url or "", peers_python, small, timeout, log
                )
        if "memory-curve" in workloads and "twoway" in tools:
            for size in curve:
                if loaded("twoway", size):
                    log(f"memory-curve: N={size} already loaded by twoway in this run")
                    continue
                log(f"memory-curve: twoway's initial load at N={size}")
                samples += initial_load(
                    "initial", size, work, api_url or "", peers_python, ["twoway"], timeout, log
                )
        if "initial10m" in workloads:
            big = [t for t in tools10m if available(t)]
            log(f"initial10m: initial load at N={n10m} ({', '.join(big)})")
            samples += initial_load(
                "initial-10m",
                n10m,
                work,
                api_url or "",
                peers_python,
                big,
                args.timeout_10m,
                log,
                rss_limit_mb=args.rss_limit_10m,
            )
        if "twoway" in tools and "cold" in workloads and not args.no_cold:
            samples.append(("initial-cold", "twoway", cold(args.n, work, timeout, log)))
    finally:
        if prefect is not None:
            prefect.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    rows = summarise(samples, args.n)
    found = goals(rows, args.n, n_small, n10m, curve, writes_n)
    context = {
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cpus, Python {sys.version.split()[0]}, {sys.platform}",
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    result = [{**row, **context} for row in rows]
    checked = [
        {"target": g.what, "figure": g.figure, "asked": g.limit, "result": g.verdict()}
        | ({"note": g.note} if g.note else {})
        | context
        for g in found
    ]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out_path)
    targets_path = out_path.with_suffix(".targets.json")  # issue #19's targets, checked
    targets_path.write_text(json.dumps(checked, indent=1))
    print()
    print(table(rows))
    if "twoway" in tools or "twoway" in tools10m:
        print()
        print(prefect_share(rows, args.n))
    if "memory-curve" in workloads:
        print()
        print("Memory curve: twoway's initial load REST -> SQLite")
        print(memory_table(rows, curve))
    if args.issue19 or {"initial10m", "memory-curve", "initial100k"} & set(workloads):
        print()
        print(goals_table(found))
    print(f"\nwritten: {out_path}  ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
