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
- ``no-change``: the next run after that with nothing changed by people (twoway reads its own
  writes of the previous run back from the changes feed and must write nothing).

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

Once per invocation it also times ``initial-cold``: ``twoway run`` with no Prefect server
configured, which pays for Prefect's temporary server. ``--workloads`` picks among
``sync`` (initial, incremental-1pct, no-change), ``full``, ``writes`` and ``cold``. Peers run
in their own virtual environment, ``bench/.venv-peers`` (created on first use with pip;
git-ignored), never in twoway's. Results: ``bench/results/latest.json`` (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
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
WORKLOADS = ("sync", "full", "writes", "cold")
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


def timed(cmd: list[str], env: dict[str, str], timeout: float) -> Sample:
    """Run ``cmd`` to completion and measure it whole: CPU of its waited-for children
    included, peak RSS the larger of its own and its process tree's (sampled every 0.1 s)."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - read back after the process exits
    err = tempfile.TemporaryFile()  # noqa: SIM115
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT)
    deadline = start + timeout
    tree_peak = 0  # KiB: the process and its children together, sampled
    sampled = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            raise RuntimeError(f"{cmd[:3]} took more than {timeout:.0f} s; killed")
        if time.perf_counter() - sampled > 0.1:
            tree_peak = max(tree_peak, tree_rss_kib(proc.pid))
            sampled = time.perf_counter()
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
    definition: Path, api_url: str | None, work: Path, timeout: float, full: bool = False
) -> Sample:
    """One ``twoway run DEFINITION --json`` (``--full`` too when asked), timed whole."""
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
    sample = timed(cmd, env, timeout)
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
            python = str(peers_python or sys.executable)
            cmd = [python, str(HERE / "peers.py"), tool, base, str(here / tool)]
            if target.kind == "postgres":
                cmd += ["--postgres", target.dsn, "--schema", target.schema]
            http_json("POST", base + "/_bench/reset")
            sample = timed(cmd, dict(os.environ), timeout)
            sample.extra["api"] = http_json("GET", base + "/_bench/stats")
            out.append((workload + suffix, tool, sample))
            log(
                f"  {workload + suffix:22} {tool:20} {sample.wall_s:8.2f} s wall "
                f"{sample.cpu_s:8.2f} s cpu"
            )

        def ours(workload: str, definition: Path, record: bool = True, full: bool = False) -> None:
            http_json("POST", base + "/_bench/reset")
            sample = twoway_run(definition, api_url, here, timeout, full=full)
            sample.extra["api"] = http_json("GET", base + "/_bench/stats")
            if record:
                out.append((workload + suffix, "twoway", sample))
            log(
                f"  {workload + suffix:22} {'twoway':20} {sample.wall_s:8.2f} s wall "
                f"{sample.cpu_s:8.2f} s cpu  {sample.extra['systems']}  api {sample.extra['api']}"
            )
            if workload in ("no-change", "full-reconciliation") and sample.extra["written"]:
                log(f"  WARNING: {workload + suffix} wrote {sample.extra['written']} record(s)")

        definition = here / "bench.sync.yaml"
        make_table(target)
        write_definition(definition, base, target)

        for tool in peers:
            peer(tool, "initial")
        if "twoway" in tools:
            ours("initial", definition, record=sync)
            # the run after the initial one reads twoway's own N writes back (echoes): the
            # steady state the incremental workload starts from
            ours("echo-readback", definition, record=False)
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
            ours("no-change", definition)
        if PREFECT_ONLY in tools and target.kind == "sqlite":
            # what the no-change run would cost if twoway did nothing but Prefect's part
            env = {**os.environ, "PREFECT_API_URL": api_url}
            env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
            sample = timed([sys.executable, str(HERE / "prefect_floor.py")], env, timeout)
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
                    r["modified_at"].strftime("%Y-%m-%d %H:%M:%S.%f"),
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
    """One row per (workload, tool): lists of per-run figures, in run order."""
    grouped: dict[tuple[str, str], list[Sample]] = {}
    for workload, tool, sample in samples:
        grouped.setdefault((workload, tool), []).append(sample)
    rows = []
    for (workload, tool), group in grouped.items():
        size = group[0].extra.get("n", n)
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
        if tool == "twoway":
            row["counts"] = [s.extra["systems"] for s in group]
            row["written"] = [s.extra["written"] for s in group]
            row["run_s"] = [s.extra.get("run_s") for s in group]
        if workload.startswith("writes-"):
            row["records_per_s"] = [round(size / s.wall_s, 1) for s in group]
        rows.append(row)
    # run-by-run ratio of twoway to each peer (same repetition, same collection)
    by = {(r["workload"], r["tool"]): r for r in rows}
    for row in rows:
        if row["tool"] != "twoway":
            continue
        ratios = {}
        for peer in PEERS:
            other = by.get((row["workload"], peer))
            if other and len(other["wall_s"]) == len(row["wall_s"]):
                ratios[peer] = [
                    round(a / b, 2) for a, b in zip(row["wall_s"], other["wall_s"], strict=True)
                ]
        row["ratio_to"] = ratios
        raw = by.get((row["workload"], RAW))
        if "records_per_s" in row and raw and len(raw["wall_s"]) == len(row["wall_s"]):
            # twoway's records/s as a share of the raw script's (the target: >= 0.7)
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


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a text table, workloads in the order they run."""
    head = ["workload", "tool", "n", "wall s", "cpu s", "peak RSS MiB", "twoway / peer"]
    lines = [head]
    order = [
        "initial",
        "initial-cold",
        "full-reconciliation",
        "incremental-1pct",
        "no-change",
    ]
    rank = {
        w + suffix: i + 100 * j for j, suffix in enumerate(("", "-pg")) for i, w in enumerate(order)
    }
    rank |= {"writes-sharepoint": 200, "writes-salesforce": 201}
    tools = {t: i for i, t in enumerate(TOOLS)}
    for r in sorted(rows, key=lambda r: (rank.get(r["workload"], 999), tools.get(r["tool"], 99))):
        ratio = ", ".join(
            f"{p}: {statistics.median(v):.2f}x" for p, v in r.get("ratio_to", {}).items()
        )
        if "records_per_s" in r:
            ratio = f"{statistics.median(r['records_per_s']):.0f} rec/s" + (
                f", {statistics.median(r['share_of_raw']):.0%} of raw"
                if "share_of_raw" in r
                else ""
            )
        lines.append(
            [
                r["workload"],
                r["tool"],
                str(r["n"]),
                fmt(r["wall_s"]),
                fmt(r["cpu_s"]),
                fmt(r["peak_rss_mb"]),
                ratio,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text)


def split_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated option as a list, every item one of ``allowed``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run every selected workload, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="twoway's benchmark suite (see BENCHMARKS.md)")
    parser.add_argument(
        "--quick", action="store_true", help="1 run of each, N=20,000, writes N=5,000"
    )
    parser.add_argument("--n", type=int, default=None, help="records (default 100,000)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help="comma-separated: " + ", ".join(TOOLS)
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="comma-separated: sync (initial, incremental-1pct, no-change), full "
        "(full-reconciliation), writes (writes-sharepoint, writes-salesforce), cold",
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
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.writes_in_flight is not None and not 1 <= args.writes_in_flight <= 8:
        parser.error(f"--writes-in-flight takes 1 to 8, not {args.writes_in_flight}")
    if args.latency_ms < 0:
        parser.error(f"--latency-ms cannot be negative ({args.latency_ms})")
    repeat = args.repeat or (1 if args.quick else 3)
    args.n = args.n or (20_000 if args.quick else 100_000)
    writes_n = args.writes_n or (min(args.n, 5_000) if args.quick else args.n)
    tools = split_list(args.tools, TOOLS, "tools")
    workloads = split_list(args.workloads, WORKLOADS, "workloads")
    targets = ["sqlite", "postgres"] if args.target == "both" else [args.target]
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    wanted_peers = {t for k in targets for t in PEERS_BY_TARGET[k]} & set(tools)
    needs_peers = "sync" in workloads and any(t.startswith("dlt") for t in wanted_peers)
    peers_python = ensure_peers(log) if needs_peers else None
    work = Path(tempfile.mkdtemp(prefix="twoway-bench-"))
    prefect = None
    samples: list[tuple[str, str, Sample]] = []
    try:
        api_url = None
        if "twoway" in tools:
            prefect, api_url = start_prefect(work)
            log(f"Prefect server at {api_url}")
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
                        args.timeout,
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
                    args.timeout,
                    log,
                    args.latency_ms,
                    args.writes_in_flight,
                )
        if "twoway" in tools and "cold" in workloads and not args.no_cold:
            samples.append(("initial-cold", "twoway", cold(args.n, work, args.timeout, log)))
    finally:
        if prefect is not None:
            prefect.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    rows = summarise(samples, args.n)
    context = {
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cpus, Python {sys.version.split()[0]}, {sys.platform}",
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    result = [{**row, **context} for row in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print()
    print(table(rows))
    print(f"\nwritten: {args.out}  ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
