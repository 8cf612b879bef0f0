"""Shared fixtures: one Prefect API for the whole session (a real server, in a harness), and
one real Directus server for the whole session (tests/directus_server.py)."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# speed is measured in benchmarks, not in tests: no example of a property test fails for
# taking long (Hypothesis's default deadline of 200 ms trips on a busy machine)
settings.register_profile("twoway", deadline=None)
settings.load_profile("twoway")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets databases of its own on the PostgreSQL and
    MariaDB servers (``test_gw0``, ...): tests share the state tables of a database, and
    two workers running the same sync in one database would refuse each other's lease."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    import sqlalchemy as sa

    from tests import sqlrig

    for variable, default in sqlrig.SERVERS.items():
        url = sa.make_url(os.environ.get(variable, default))
        name = f"{url.database}_{worker}"
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                if url.get_backend_name() == "postgresql":
                    exists = conn.exec_driver_sql(
                        "SELECT 1 FROM pg_database WHERE datname = %(name)s", {"name": name}
                    ).first()
                    if not exists:
                        conn.exec_driver_sql(f"CREATE DATABASE {name}")
                else:
                    conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {name}")
        except sa.exc.OperationalError:
            continue  # the server is down: its tests fail naming it (tests/sqlrig.py)
        finally:
            admin.dispose()
        os.environ[variable] = url.set(database=name).render_as_string(hide_password=False)
    # for the test modules, imported after this
    sqlrig.POSTGRES_URL = os.environ.get("TWOWAY_TEST_POSTGRES", sqlrig.POSTGRES_URL)
    sqlrig.MARIADB_URL = os.environ.get("TWOWAY_TEST_MARIADB", sqlrig.MARIADB_URL)


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (temporary server on SQLite) for tests that run flows."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=90),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session")
def directus():
    """The session's Directus 10 server (started on first use; a failure to start fails)."""
    from tests.directus_server import shared_server

    return shared_server()
