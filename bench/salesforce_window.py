"""How long a person's edit can land unseen between the Salesforce block's version check
and its write, on the sObject Collections path (``guarded_updates`` off, or a delete).

The org simulator runs in this process; the block updates ``--records`` contacts whose
versions it holds, ``--repeat`` times. The window of one record is measured on the
server, from the moment the check's retrieve was answered to the moment that record's
write was applied: an edit landing in it would be overwritten. ``--latency-ms`` adds
that many milliseconds to every answer (a network and an org farther away than this
machine). Prints the median and the largest window of the first and of the last record
of a call, in milliseconds::

    .venv/bin/python bench/salesforce_window.py --records 200 --repeat 20 --latency-ms 0
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from pydantic import SecretStr

from blocks.credentials import IntegrationAccountCredentials
from blocks.salesforce import SalesforceObject
from twoway.contract import Update
from twoway.simulators.salesforce import SalesforceState, create_app
from twoway.simulators.server import BackgroundServer


def measure(records: int, repeat: int, latency_ms: float) -> dict[str, list[float]]:
    state = SalesforceState(latency_ms=latency_ms)
    state.add_client("sync", "secret", "Integration User")
    keys = [state.user_create("Contact", {"LastName": f"W{i}"}) for i in range(records)]
    checked: list[float] = []
    applied: list[float] = []
    answered, update = state._read_answered, state.update

    def on_read(ids: Any) -> None:
        checked.append(time.perf_counter())
        answered(ids)

    def on_update(*args: Any, **kwargs: Any) -> str:
        applied.append(time.perf_counter())
        return update(*args, **kwargs)

    state._read_answered = on_read  # type: ignore[method-assign]
    state.update = on_update  # type: ignore[method-assign]
    first: list[float] = []
    last: list[float] = []
    with BackgroundServer(create_app(state)) as server:
        block = SalesforceObject(
            instance_url=server.url,
            object="Contact",
            columns_to_sync=["LastName", "Title"],
            credentials=IntegrationAccountCredentials(
                client_id="sync", client_secret=SecretStr("secret")
            ),
            guarded_updates=False,
        )
        for n in range(repeat):
            versions = {r.key: r.version for r in block.read(keys)}
            checked.clear()
            applied.clear()
            results = block.write(
                [Update(key=k, values={"Title": f"T{n}"}, version=versions[k]) for k in keys]
            )
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            # the first retrieve is the check, the second reads the new versions back
            first.append((applied[0] - checked[0]) * 1000)
            last.append((applied[-1] - checked[0]) * 1000)
        block.close()
    return {"first": first, "last": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    found = measure(args.records, args.repeat, args.latency_ms)
    for name, values in found.items():
        print(
            f"{name} record of {args.records}: median {statistics.median(values):.1f} ms, "
            f"largest {max(values):.1f} ms (latency {args.latency_ms:g} ms, {args.repeat} calls)"
        )


if __name__ == "__main__":
    main()
