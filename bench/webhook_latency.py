"""How fast the webhook path answers: Graph's validation handshake, and a change made in
SharePoint until the CRM holds it (notification, event, deployment run, sync).

``python bench/webhook_latency.py`` serves the receiver on 127.0.0.1 and times
``--handshakes`` validation handshakes over real HTTP (Graph drops a subscription whose
handshake takes over 10 s). ``--deployed`` also runs the end-to-end tests of a deployed
stack (Prefect server, process worker, receiver, Graph simulator; all but the UI test),
whose notification test records ``notification_to_converged_seconds``, and prints it. Tests assert the
order and outcome of these paths; the times are measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import SecretStr

from twoway.simulators.server import BackgroundServer
from twoway.webhooks import CachedSecrets, Debouncer, Receiver

REPO = Path(__file__).resolve().parents[1]


def handshake_ms(count: int) -> list[float]:
    """Milliseconds of each of ``count`` handshakes against a served receiver."""

    async def no_runs(sync: str) -> list:
        return []

    receiver = Receiver(
        secrets=CachedSecrets(lambda sync, system: SecretStr("bench")),
        debouncer=Debouncer(no_runs),
        emit=lambda sync, payload: None,
        known_sync=lambda sync: sync == "contacts",
    )
    took = []
    with (
        BackgroundServer(receiver.app()) as server,
        httpx.Client(base_url=server.url, trust_env=False) as client,
    ):
        for i in range(count):
            started = time.perf_counter()
            answer = client.post("/graph/contacts/sharepoint", params={"validationToken": f"t{i}"})
            took.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200 and answer.text == f"t{i}", answer.text
    return took


def deployed_seconds() -> float:
    """The end-to-end notification test's change-to-converged time, in seconds."""
    with tempfile.TemporaryDirectory() as base:
        # the notification test builds on the module's earlier ones: run them in order
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pytest", "tests/e2e/test_deployed.py", "-x", "-q"),
                *("-k", "not test_the_ui_shows", "-p", "no:cacheprovider", f"--basetemp={base}"),
            ],
            cwd=REPO,
        )
        if done.returncode != 0:
            raise SystemExit(f"the end-to-end test failed (exit {done.returncode})")
        (found,) = Path(base).glob("**/latency.json")
        return json.loads(found.read_text())["notification_to_converged_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=500, help="how many (default 500)")
    parser.add_argument("--deployed", action="store_true", help="also time a deployed stack")
    args = parser.parse_args()
    took = sorted(handshake_ms(args.handshakes))
    p95 = took[int(len(took) * 0.95) - 1]
    print(
        f"graph validation handshake, {len(took)} requests: median {statistics.median(took):.2f} ms, "
        f"p95 {p95:.2f} ms, max {took[-1]:.2f} ms"
    )
    if args.deployed:
        print(f"change-notification-to-converged (deployed): {deployed_seconds():.2f} s")


if __name__ == "__main__":
    main()
