"""Shared fixtures: one Prefect API for the whole session (a real server, in a harness), and
one real Directus server for the whole session (tests/directus_server.py)."""

from __future__ import annotations

import pytest
from hypothesis import settings

# speed is measured in benchmarks, not in tests: no example of a property test fails for
# taking long (Hypothesis's default deadline of 200 ms trips on a busy machine)
settings.register_profile("twoway", deadline=None)
settings.load_profile("twoway")


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
