"""The randomized convergence harness over the SaaS simulators in CI (quick mode): a
SharePoint list and a Salesforce object, each kept in step with a SQL table, and all three
together, over HTTP with the simulators' own faults; TWOWAY_SOAK=N for a long soak.

The last test says how often each of the services' own faults (purges, commit lag, long
Retry-After, both 410 codes) reached a connector in the sequences above, and fails when
one of them never did: a rule that stops firing tests nothing."""

from __future__ import annotations

import pytest

from tests.convergence.machine import profile
from tests.convergence.saas_world import (
    FIRED,
    SalesforceAndSql,
    SharePointAndSql,
    SharePointSalesforceSql,
)

TestSharePointAndSql = SharePointAndSql.TestCase
TestSharePointAndSql.settings = profile(35)

TestSalesforceAndSql = SalesforceAndSql.TestCase
TestSalesforceAndSql.settings = profile(35)

TestSharePointSalesforceSql = SharePointSalesforceSql.TestCase
TestSharePointSalesforceSql.settings = profile(15)

SERVICE_FAULTS = (
    "recycle bin purged",
    "getDeleted refused after a purge",
    "commit lag: an edit in a long transaction",
    "commit lag: latestDateCovered held back",
    "commit lag: a change committed late",
    "long Retry-After waited out",
    "410 resyncChangesApplyDifferences",
    "410 resyncChangesUploadDifferences",
)


def test_every_service_fault_fired(capsys):
    if not FIRED:
        pytest.skip("no machine of this module ran before this test")
    with capsys.disabled():
        print("\nservice faults fired:", ", ".join(f"{k} {FIRED[k]}" for k in SERVICE_FAULTS))
    assert all(FIRED[k] for k in SERVICE_FAULTS), dict(FIRED)
