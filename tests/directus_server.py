"""A real Directus 10 server for tests: installed by scripts/directus, bootstrapped on a fresh
PostgreSQL database, started on a free 127.0.0.1 port, one per test session.

Collections are made through Directus's own API with the standard accountability fields
(``date_created``, ``date_updated``, ``user_created``, ``user_updated``), and two users
with static tokens: the integration account twoway writes as, and a person editing by hand.
Anything that keeps Directus from starting fails the test with the reason; nothing skips.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.sqlrig import POSTGRES_URL

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0
PR_SET_PDEATHSIG = 1


class DirectusUnavailable(RuntimeError):
    """Directus could not be installed, bootstrapped or started; the message says why."""


@dataclass
class DirectusUser:
    """A user of the test server and its static token."""

    id: str
    email: str
    token: str


class DirectusServer:
    """One started Directus server, its admin token and its two users."""

    def __init__(self) -> None:
        self.home = _install()
        self.workdir = Path(tempfile.mkdtemp(prefix="twoway-directus-"))
        self.database = f"twoway_directus_{uuid.uuid4().hex[:10]}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_urlsafe(24)
        self.process: subprocess.Popen | None = None
        self.log = self.workdir / "directus.log"
        self.timings: dict[str, float] = {}
        self._server = sa.engine.make_url(POSTGRES_URL)
        self._create_database()
        try:
            self._bootstrap_and_start()
            self.sync_user = self._user("sync")
            self.person = self._user("person")
        except BaseException:
            self.stop()
            raise

    # -- start and stop ------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        server = self._server
        admin_password = secrets.token_urlsafe(16)
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "ADMIN_"))},
            "DB_CLIENT": "pg",
            "DB_HOST": server.host or "127.0.0.1",
            "DB_PORT": str(server.port or 5432),
            "DB_DATABASE": self.database,
            "DB_USER": server.username or "postgres",
            "DB_PASSWORD": server.password or "",
            "KEY": str(uuid.uuid4()),
            "SECRET": secrets.token_urlsafe(32),
            "ADMIN_EMAIL": "admin@example.com",
            "ADMIN_PASSWORD": admin_password,
            "ADMIN_TOKEN": self.admin_token,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "PUBLIC_URL": self.url,
            # nothing that reaches the internet, nothing that slows a test down
            "TELEMETRY": "false",
            "MARKETPLACE_TRUST": "sandbox",
            "MARKETPLACE_REGISTRY": "http://127.0.0.1:9",
            # Flows may call the webhook receiver on 127.0.0.1 (by default Directus refuses
            # requests to the machine's own addresses)
            "IMPORT_IP_DENY_LIST": "169.254.169.254",
            "CACHE_ENABLED": "false",
            "RATE_LIMITER_ENABLED": "false",
            "WEBSOCKETS_ENABLED": "false",
            "EXTENSIONS_PATH": str(self.workdir / "extensions"),
            "EXTENSIONS_AUTO_RELOAD": "false",
            "STORAGE_LOCATIONS": "local",
            "STORAGE_LOCAL_ROOT": str(self.workdir / "uploads"),
            "LOG_LEVEL": "warn",
            "LOG_STYLE": "raw",
            "NODE_ENV": "production",
        }

    def _bootstrap_and_start(self) -> None:
        env = self._env()
        cli = [str(self.home / "node_modules" / ".bin" / "directus")]
        began = time.monotonic()
        done = subprocess.run(
            [*cli, "bootstrap"],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise DirectusUnavailable(
                f"`directus bootstrap` exited {done.returncode}: {_tail(done.stderr + done.stdout)}"
            )
        self.timings["bootstrap"] = time.monotonic() - began
        began = time.monotonic()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*cli, "start"],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_stop_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DirectusUnavailable(
                    f"`directus start` exited {self.process.returncode}: "
                    f"{_tail(self.log.read_text(errors='replace'))}"
                )
            try:
                if httpx.get(f"{self.url}/server/ping", timeout=2).status_code == 200:
                    self.timings["start"] = time.monotonic() - began
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise DirectusUnavailable(
            f"Directus did not answer on {self.url} within {START_TIMEOUT:g} s: "
            f"{_tail(self.log.read_text(errors='replace'))}"
        )

    def stop(self) -> None:
        """Stop the server and drop its database."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        engine = sa.create_engine(
            self._server.set(database="postgres"), isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            engine.dispose()

    def _create_database(self) -> None:
        engine = sa.create_engine(
            self._server.set(database="postgres"), isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{self.database}"')
        except sa.exc.OperationalError as exc:
            raise DirectusUnavailable(
                f"PostgreSQL for Directus is not reachable at {self._server.host}: {exc.orig}"
            ) from None
        finally:
            engine.dispose()

    # -- the API, as the admin -----------------------------------------------------------

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        """One call to the server's API (as the admin unless ``token`` is given); the
        answer's ``data``. A refused call fails the test with Directus's own words."""
        response = httpx.request(
            method,
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=30,
            **kwargs,
        )
        if response.status_code >= 300:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json().get("data") if response.content else None

    def _user(self, name: str) -> DirectusUser:
        """A user with its own role (full access) and a static token."""
        role = self.api("POST", "/roles", json={"name": name, "admin_access": True})
        token = secrets.token_urlsafe(24)
        email = f"{name}@example.com"
        user = self.api(
            "POST",
            "/users",
            json={
                "email": email,
                "password": secrets.token_urlsafe(16),
                "role": role["id"],
                "token": token,
            },
        )
        return DirectusUser(user["id"], email, token)

    def create_collection(
        self, fields: list[str], accountability: bool = True, uuid_key: bool = False
    ) -> str:
        """A new collection with an auto-increment integer key (or, with ``uuid_key``, a
        UUID that Directus generates), the given text fields and, with ``accountability``,
        Directus's four standard accountability fields."""
        name = f"c_{uuid.uuid4().hex[:10]}"
        key: dict[str, Any] = {
            "field": "id",
            "type": "integer",
            "meta": {"hidden": True, "readonly": True, "interface": "input"},
            "schema": {"is_primary_key": True, "has_auto_increment": True},
        }
        if uuid_key:
            key["type"] = "uuid"
            key["meta"]["special"] = ["uuid"]
            key["schema"] = {"is_primary_key": True, "length": 36, "has_auto_increment": False}
        spec: list[dict[str, Any]] = [key]
        if accountability:
            for field, kind, special in (
                ("user_created", "uuid", "user-created"),
                ("date_created", "timestamp", "date-created"),
                ("user_updated", "uuid", "user-updated"),
                ("date_updated", "timestamp", "date-updated"),
            ):
                spec.append(
                    {
                        "field": field,
                        "type": kind,
                        "meta": {"special": [special], "readonly": True, "hidden": True},
                        "schema": {},
                    }
                )
        spec += [{"field": f, "type": "string", "meta": {}, "schema": {}} for f in fields]
        self.api(
            "POST",
            "/collections",
            json={"collection": name, "meta": {}, "schema": {}, "fields": spec},
        )
        if accountability:
            for field in ("user_created", "user_updated"):
                self.api(
                    "POST",
                    "/relations",
                    json={
                        "collection": name,
                        "field": field,
                        "related_collection": "directus_users",
                    },
                )
        return name

    def drop_collection(self, name: str) -> None:
        self.api("DELETE", f"/collections/{name}")


def _install() -> Path:
    """The Directus install folder (scripts/directus installs it once, then returns at once)."""
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "directus")], capture_output=True, text=True, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DirectusUnavailable(f"scripts/directus failed: {exc}") from None
    if done.returncode != 0:
        raise DirectusUnavailable(
            f"scripts/directus exited {done.returncode}: {_tail(done.stderr)}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


def _stop_with_parent() -> None:
    """In the server's process before it starts: end it when the test process dies, even
    by SIGKILL (Linux), so no Directus outlives its test session."""
    with contextlib.suppress(OSError):  # not Linux: stop() at exit still ends it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(text: str, lines: int = 15) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


_SHARED: DirectusServer | None = None
_FAILED: str | None = None


def shared_server() -> DirectusServer:
    """The session's one Directus server, started on first use and stopped at exit; a
    server that cannot start fails every test that asks for it, with the reason."""
    global _SHARED, _FAILED
    if _FAILED is not None:
        pytest.fail(_FAILED, pytrace=False)
    if _SHARED is None:
        try:
            _SHARED = DirectusServer()
        except DirectusUnavailable as exc:
            _FAILED = f"Directus could not be started: {exc}"
            pytest.fail(_FAILED, pytrace=False)
        atexit.register(_SHARED.stop)
    return _SHARED
