"""The benchmark's Graph-style REST collection, in its own process.

``python bench/serve.py --port P --n N`` serves N records (20 mixed-type fields, stamped
between two hours and one hour ago) on 127.0.0.1:P until killed, through the REST
simulator's app (:func:`twoway.simulators.rest.create_app`: its paging, ``modified_since``
filter, ``$batch`` of 20 and answers). The records are not loaded: each is generated from
its index when a page asks for it, and writes go to an overlay (``bench/collection.py``),
so a collection of 10,000,000 starts in about a second and stays small. ``--eager`` loads
the same records into the simulator's own :class:`twoway.simulators.rest.RestState`
instead (as before: about 49 s and 0.86 GiB per million), for comparison.

A request without a token acts as ``svc-sync`` (the sync's integration account);
``Bearer token-alice`` acts as ``alice`` (a person editing).

Two extra routes for the harness, outside the collection: ``GET /_bench/stats`` returns the
requests served since ``POST /_bench/reset`` (by kind: page reads, batch calls, other),
and the records written since start (``overlay``), so the harness can check how many API
calls a run made.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import collection  # noqa: E402

from twoway.simulators.rest import RestState, create_app  # noqa: E402

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


def records(n: int, seed: int = 6) -> Iterator[dict[str, Any]]:
    """The collection's ``n`` records as dicts, in order (``bench/collection.py``): what a
    collection started now with the same ``n`` and seed serves before anyone writes."""
    return collection.records(n, seed)


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
    parser.add_argument(
        "--eager", action="store_true", help="load every record into RestState first"
    )
    args = parser.parse_args(argv)
    if args.eager:
        state: Any = RestState()
        state.load(records(args.n, args.seed))

        def extra() -> dict[str, Any]:
            return {}
    else:
        state = collection.LazyCollection(args.n, args.seed)

        def extra() -> dict[str, Any]:
            return {"overlay": state.overlay_size()}

    app = create_app(
        state,
        tokens={"token-alice": "alice"},
        require_auth=False,
        default_user="svc-sync",
        max_batch=20,
    )
    print(json.dumps({"ready": True, "n": len(state)}), flush=True)
    sys.stdout.flush()
    try:
        uvicorn.run(
            Counting(app, ("pages", "batches", "other"), _collection_kind, extra),
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
            access_log=False,
        )
    finally:
        if not args.eager:
            state.close()


if __name__ == "__main__":
    main()
