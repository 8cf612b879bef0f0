"""The randomized convergence harness over the SaaS simulators in CI (quick mode): a
SharePoint list and a Salesforce object, each kept in step with a SQL table, and all three
together, over HTTP with the simulators' own faults; TWOWAY_SOAK=N for a long soak."""

from __future__ import annotations

from tests.convergence.machine import profile
from tests.convergence.saas_world import SalesforceAndSql, SharePointAndSql, SharePointSalesforceSql

TestSharePointAndSql = SharePointAndSql.TestCase
TestSharePointAndSql.settings = profile(35)

TestSalesforceAndSql = SalesforceAndSql.TestCase
TestSalesforceAndSql.settings = profile(35)

TestSharePointSalesforceSql = SharePointSalesforceSql.TestCase
TestSharePointSalesforceSql.settings = profile(15)
