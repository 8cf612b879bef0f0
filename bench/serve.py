"""The benchmark's Graph-style REST collection, in its own process.

``python bench/serve.py --port P --n N`` loads N generated records (20 mixed-type fields,
stamped an hour ago) into :class:`twoway.simulators.rest.RestState` and serves them on
127.0.0.1:P until killed. A request without a token acts as ``svc-sync`` (the sync's
integration account); ``Bearer token-alice`` acts as ``alice`` (a person editing).

Two extra routes for the harness, outside the collection: ``GET /_bench/stats`` returns the
requests served since ``POST /_bench/reset`` (by kind: page reads, batch calls, other),
so the harness can check how many API calls a run made.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn

from twoway.simulators.rest import RestState, create_app

FIELDS = 20
COLUMN_TYPES = {  # field -> SQL type of its column (SQLite and PostgreSQL spellings)
    "f01": "TEXT",
    "f02": "TEXT",
    "f03": "TEXT",
    "f04": "TEXT",
    "f05": "INTEGER",
    "f06": "INTEGER",
    "f07": "REAL",
    "f08": "REAL",
    "f09": "BOOLEAN",
    "f10": "BOOLEAN",
    "f11": "TEXT",
    "f12": "TEXT",
    "f13": "TEXT",
    "f14": "INTEGER",
    "f15": "REAL",
    "f16": "TEXT",
    "f17": "INTEGER",
    "f18": "TEXT",
    "f19": "BOOLEAN",
    "f20": "TEXT",
}
CITIES = ["Lyon", "Oslo", "Kyiv", "Porto", "Gdańsk", "Zürich", "Malmö", "Cork", "Bari", "Riga"]
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def make_record(i: int, rng: random.Random) -> dict[str, Any]:
    """Record ``i``: 20 fields of text, whole numbers, decimals, flags, dates and nulls."""
    return {
        "id": f"r{i:08d}",
        "f01": f"Name {i}",
        "f02": f"person{i}@example.org",
        "f03": rng.choice(CITIES),
        "f04": " ".join(rng.choice(WORDS) for _ in range(8)),
        "f05": rng.randrange(1_000_000),
        "f06": i,
        "f07": round(rng.uniform(0, 10_000), 2),
        "f08": rng.random(),
        "f09": rng.random() < 0.5,
        "f10": i % 3 == 0,
        "f11": f"20{rng.randrange(10, 25)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        "f12": f"2024-0{rng.randrange(1, 10)}-1{rng.randrange(10)} 12:00:00.000000",
        "f13": rng.choice(WORDS),
        "f14": rng.randrange(100) if i % 4 else None,
        "f15": rng.uniform(-1, 1) if i % 5 else None,
        "f16": f"C-{rng.randrange(16**6):06x}",
        "f17": rng.randrange(-1000, 1000),
        "f18": None if i % 7 == 0 else f"note {i % 97}",
        "f19": i % 2 == 0,
        "f20": f"tag{i % 13}",
    }


def records(n: int, seed: int = 6) -> Iterator[dict[str, Any]]:
    """The collection the benchmark starts from, its changes spread over the past two hours.

    A generator: the server loads the records one by one, so a million of them never sit
    in memory as dicts, only as the simulator's JSON texts (about 0.9 GB resident for 1M;
    generating and loading them takes under a minute).
    """
    rng = random.Random(seed)
    when = datetime.now(UTC) - timedelta(hours=2)
    step = timedelta(seconds=3600) / max(n, 1)
    for i in range(n):
        record = make_record(i, rng)
        record["modified_at"] = when + i * step
        record["modified_by"] = "loader"
        yield record


class Counting:
    """ASGI wrapper counting the requests a benchmark server serves, by the kind
    ``kind_of(scope)`` names, and answering the ``/_bench`` routes: ``GET /_bench/stats``
    (the counts since ``POST /_bench/reset``, plus what ``extra()`` adds)."""

    def __init__(
        self,
        app: Any,
        kinds: tuple[str, ...],
        kind_of: Callable[[dict[str, Any]], str],
        extra: Callable[[], dict[str, Any]] | None = None,
    ):
        self.app = app
        self.kind_of = kind_of
        self.extra = extra
        self.stats = dict.fromkeys(kinds, 0)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Count the request by kind and pass it on; answer ``/_bench/*`` here."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.startswith("/_bench/"):
            if path == "/_bench/reset":
                self.stats = dict.fromkeys(self.stats, 0)
            body = json.dumps({**self.stats, **(self.extra() if self.extra else {})}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return None
        self.stats[self.kind_of(scope)] += 1
        return await self.app(scope, receive, send)


def _collection_kind(scope: dict[str, Any]) -> str:
    if scope["path"] == "/items" and scope["method"] == "GET":
        return "pages"
    return "batches" if scope["path"] == "/$batch" else "other"


def main(argv: list[str] | None = None) -> None:
    """Load the records and serve them (blocking)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args(argv)
    state = RestState()
    state.load(records(args.n, args.seed))
    app = create_app(
        state,
        tokens={"token-alice": "alice"},
        require_auth=False,
        default_user="svc-sync",
        max_batch=20,
    )
    print(json.dumps({"ready": True, "n": len(state)}), flush=True)
    sys.stdout.flush()
    uvicorn.run(
        Counting(app, ("pages", "batches", "other"), _collection_kind),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
