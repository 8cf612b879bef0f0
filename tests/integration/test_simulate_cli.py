"""``twoway simulate``: each simulator serves on 127.0.0.1 and answers its documented calls."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(*args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "twoway.cli", "simulate", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read()) from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("simulator did not start")


@pytest.fixture
def stop():
    procs = []
    yield procs.append
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_sharepoint_simulator_issues_tokens_and_lists_items(stop):
    proc, port = serve("sharepoint", "--client-id", "cid", "--client-secret", "s3cret-value")
    stop(proc)
    base = f"http://127.0.0.1:{port}"
    printed = [proc.stdout.readline() for _ in range(2)]
    token_url = next(
        line.split(": ", 1)[1].strip() for line in printed if line.startswith("Token URL")
    )
    assert token_url.startswith(base)
    token = httpx.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": "cid",
            "client_secret": "s3cret-value",
            "scope": "https://graph.microsoft.com/.default",
        },
    )
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    items = httpx.get(f"{base}/v1.0/sites/root/lists/Contacts/items?expand=fields", headers=headers)
    assert items.status_code == 200 and items.json()["value"] == []


def test_salesforce_simulator_answers_soql(stop):
    proc, port = serve("salesforce", "--client-id", "cid", "--client-secret", "pw")
    stop(proc)
    base = f"http://127.0.0.1:{port}"
    token = httpx.post(
        f"{base}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "cid", "client_secret": "pw"},
    )
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    result = httpx.get(
        f"{base}/services/data/v60.0/query", params={"q": "SELECT Id FROM Contact"}, headers=headers
    )
    assert result.status_code == 200 and result.json()["totalSize"] == 0
    assert "api-usage=" in result.headers["Sforce-Limit-Info"]


def test_rest_simulator_serves_a_collection(stop):
    proc, port = serve("rest")
    stop(proc)
    created = httpx.post(f"http://127.0.0.1:{port}/items", json={"name": "x"})
    assert created.status_code == 201
    page = httpx.get(f"http://127.0.0.1:{port}/items")
    assert [r["name"] for r in page.json()["value"]] == ["x"]


def test_bad_fault_spec_exits_2():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twoway.cli",
            "simulate",
            "rest",
            "--port",
            "1",
            "--faults",
            "meteor=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        result.returncode == 2
        and "unknown fault 'meteor'" in result.stderr
        and "Traceback" not in result.stderr
    )


TENANT = "5f1e0a52-8c1b-4d8e-9a57-0c6b1c2d3e4f"


def test_sharepoint_simulator_for_a_fixed_tenant_gives_that_tenant_tokens_only(stop):
    proc, port = serve("sharepoint", "--tenant", TENANT)
    stop(proc)
    base = f"http://127.0.0.1:{port}"
    form = {
        "grant_type": "client_credentials",
        "client_id": "twoway",
        "client_secret": "twoway-secret",
        "scope": "https://graph.microsoft.com/.default",
    }
    # a client configured for the tenant, as a Graph SDK credential is
    mine = httpx.post(f"{base}/{TENANT}/oauth2/v2.0/token", data=form)
    assert mine.status_code == 200, mine.text
    other = httpx.post(f"{base}/{TENANT[:-1]}0/oauth2/v2.0/token", data=form)
    assert other.status_code == 400 and 90002 in other.json()["error_codes"]


def test_salesforce_simulator_for_a_fixed_org_names_it_in_the_identity(stop):
    proc, port = serve("salesforce", "--org", "00D5e000000AbCdEAK")
    stop(proc)
    token = httpx.post(
        f"http://127.0.0.1:{port}/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "twoway",
            "client_secret": "twoway-secret",
        },
    )
    assert token.status_code == 200, token.text
    assert "/id/00D5e000000AbCdEAK/" in token.json()["id"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["sharepoint", "--tenant", "not a tenant!"], "--tenant"),
        (["salesforce", "--org", "001000000000001"], "--org"),
        (["rest", "--tenant", TENANT], "only the sharepoint simulator"),
    ],
)
def test_a_bad_account_id_exits_2_with_one_line(args, words):
    done = subprocess.run(
        [sys.executable, "-m", "twoway.cli", "simulate", *args, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr
