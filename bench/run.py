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

Once per invocation it also times ``initial-cold``: ``twoway run`` with no Prefect server
configured, which pays for Prefect's temporary server. Peers run in their own virtual
environment, ``bench/.venv-peers`` (created on first use with pip; git-ignored), never in
twoway's. Results: ``bench/results/latest.json`` (see BENCHMARKS.md).
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
PEER_PACKAGES = ["dlt[duckdb,sqlalchemy,parquet]", "httpx"]
FIELDS = [f"f{i:02d}" for i in range(1, 21)]
PEERS = ("floor", "dlt-sqlite", "dlt-duckdb-parquet")
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
    """Run ``cmd`` to completion and measure it whole (its waited-for children included)."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - read back after the process exits
    err = tempfile.TemporaryFile()  # noqa: SIM115
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            raise RuntimeError(f"{cmd[:3]} took more than {timeout:.0f} s; killed")
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
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
        output=stdout,
    )


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
    port = free_port()
    cmd = [sys.executable, str(HERE / "serve.py"), "--port", str(port), "--n", str(n)]
    service = Service(cmd, dict(os.environ), work / f"collection-{port}.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/_bench/stats", 120, service.proc)
    return service, base


def ensure_peers(log: Any) -> Path | None:
    """The peers' virtual environment, built with pip on first use; None when that fails."""
    python = PEERS_VENV / "bin" / "python"
    marker = PEERS_VENV / ".ready"
    if marker.exists():
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
    sys.path.insert(0, str(HERE))
    from serve import COLUMN_TYPES

    return COLUMN_TYPES


def make_table(db: Path) -> None:
    """The SQLite table twoway keeps in step with the collection (empty at first)."""
    types = column_types()
    cols = ", ".join(f"{f} {types[f]}" for f in FIELDS)
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"CREATE TABLE items (id TEXT PRIMARY KEY, {cols}, updated_at TEXT, updated_by TEXT)"
        )
        conn.execute("CREATE INDEX items_updated ON items (updated_at, id)")


def write_definition(path: Path, base: str, db: Path) -> None:
    """The sync: the REST collection and the SQLite table, every field both ways."""
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
  db:
    kind: sql
    url: sqlite:///{db}
    table: items
    key: id
    modified_at: updated_at
    modified_by: updated_by
    integration_account: svc-sync
    overlap_seconds: 0
fields:
{fields}
conflicts: last_writer_wins
deletes: propagate
"""
    )


def twoway_run(definition: Path, api_url: str | None, work: Path, timeout: float) -> Sample:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:  # the cold path: no server configured, Prefect starts a temporary one
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(work / "prefect-cold-home")
    sample = timed([str(BIN / "twoway"), "run", str(definition), "--json"], env, timeout)
    report = json.loads(sample.output.strip().splitlines()[-1])
    if report.get("status") != "completed":
        raise RuntimeError(f"twoway run did not complete: {report}")
    sample.extra["systems"] = report["systems"]
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


def edit_table(db: Path, share: float, rng: random.Random, avoid_f06: set[int]) -> int:
    """People edit ``share`` of the table's rows (two other fields), not rows edited on the API."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(db) as conn:
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
    timeout: float,
    log: Any,
) -> list[tuple[str, str, Sample]]:
    """All workloads once, on a fresh collection; (workload, tool, sample) per timed run."""
    out: list[tuple[str, str, Sample]] = []
    here = work / f"rep{rep}"
    here.mkdir()
    collection, base = start_collection(n, work)
    try:
        peers = [t for t in tools if t in PEERS and (t == "floor" or peers_python)]

        def peer(tool: str, workload: str) -> None:
            python = str(peers_python or sys.executable)
            cmd = [python, str(HERE / "peers.py"), tool, base, str(here / tool)]
            http_json("POST", base + "/_bench/reset")
            sample = timed(cmd, dict(os.environ), timeout)
            sample.extra["api"] = http_json("GET", base + "/_bench/stats")
            out.append((workload, tool, sample))
            log(f"  {workload:18} {tool:20} {sample.wall_s:8.2f} s wall {sample.cpu_s:8.2f} s cpu")

        def ours(workload: str, definition: Path, record: bool = True) -> Sample:
            http_json("POST", base + "/_bench/reset")
            sample = twoway_run(definition, api_url, here, timeout)
            sample.extra["api"] = http_json("GET", base + "/_bench/stats")
            if record:
                out.append((workload, "twoway", sample))
            log(
                f"  {workload:18} {'twoway':20} {sample.wall_s:8.2f} s wall "
                f"{sample.cpu_s:8.2f} s cpu  {sample.extra['systems']}  api {sample.extra['api']}"
            )
            return sample

        definition = here / "bench.sync.yaml"
        db = here / "db.sqlite"
        make_table(db)
        write_definition(definition, base, db)

        for tool in peers:
            peer(tool, "initial")
        if "twoway" in tools:
            ours("initial", definition)
            # the run after the initial one reads twoway's own N writes back (echoes): the
            # steady state the incremental workload starts from
            ours("echo-readback", definition, record=False)
        rng = random.Random(rep)
        edited = edit_api(base, n, 0.01, rng)
        for tool in peers:
            peer(tool, "incremental-1pct")
        for tool in peers:
            peer(tool, "no-change")
        if "twoway" in tools:
            edit_table(db, 0.01, rng, {int(k[1:]) for k in edited})
            ours("incremental-1pct", definition)
            ours("no-change", definition)
    finally:
        collection.stop()
    return out


def cold(n: int, work: Path, timeout: float, log: Any) -> Sample:
    """``twoway run`` with no Prefect server configured (pays for a temporary server)."""
    here = work / "cold"
    here.mkdir()
    collection, base = start_collection(n, work)
    try:
        definition = here / "bench.sync.yaml"
        db = here / "db.sqlite"
        make_table(db)
        write_definition(definition, base, db)
        sample = twoway_run(definition, None, here, timeout)
        log(f"  {'initial-cold':18} {'twoway':20} {sample.wall_s:8.2f} s wall")
        return sample
    finally:
        collection.stop()


# -- reporting --------------------------------------------------------------------------------


def summarise(samples: list[tuple[str, str, Sample]], n: int) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, str], list[Sample]] = {}
    for workload, tool, sample in samples:
        grouped.setdefault((workload, tool), []).append(sample)
    rows = []
    for (workload, tool), group in grouped.items():
        rows.append(
            {
                "workload": workload,
                "tool": tool,
                "n": n,
                "wall_s": [s.wall_s for s in group],
                "cpu_s": [s.cpu_s for s in group],
                "peak_rss_mb": [s.peak_rss_mb for s in group],
                "api_calls": [s.extra.get("api") for s in group],
                **({"counts": [s.extra["systems"] for s in group]} if tool == "twoway" else {}),
            }
        )
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
    return rows


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def table(rows: list[dict[str, Any]]) -> str:
    head = ["workload", "tool", "n", "wall s", "cpu s", "peak RSS MiB", "twoway / peer"]
    lines = [head]
    order = {"initial": 0, "initial-cold": 1, "incremental-1pct": 2, "no-change": 3}
    tools = {"twoway": 0, "floor": 1, "dlt-sqlite": 2, "dlt-duckdb-parquet": 3}
    for r in sorted(rows, key=lambda r: (order.get(r["workload"], 9), tools.get(r["tool"], 9))):
        ratio = ", ".join(
            f"{p}: {statistics.median(v):.2f}x" for p, v in r.get("ratio_to", {}).items()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="twoway's benchmark suite (see BENCHMARKS.md)")
    parser.add_argument("--quick", action="store_true", help="1 run of each, N=20,000")
    parser.add_argument("--n", type=int, default=None, help="records (default 100,000)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument(
        "--tools",
        default="twoway,floor,dlt-sqlite,dlt-duckdb-parquet",
        help="comma-separated: twoway, floor, dlt-sqlite, dlt-duckdb-parquet",
    )
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-path run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    args.n = args.n or (20_000 if args.quick else 100_000)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    peers_python = ensure_peers(log) if any(t.startswith("dlt") for t in tools) else None
    work = Path(tempfile.mkdtemp(prefix="twoway-bench-"))
    prefect = None
    samples: list[tuple[str, str, Sample]] = []
    try:
        api_url = None
        if "twoway" in tools:
            prefect, api_url = start_prefect(work)
            log(f"Prefect server at {api_url}")
        for rep in range(repeat):
            log(f"repetition {rep + 1} of {repeat}, N={args.n}")
            samples += repetition(
                rep, args.n, work, api_url or "", peers_python, tools, args.timeout, log
            )
        if "twoway" in tools and not args.no_cold:
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
