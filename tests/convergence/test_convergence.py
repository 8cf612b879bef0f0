"""The randomized convergence harness in CI (quick mode); TWOWAY_SOAK=N for a long soak."""

from __future__ import annotations

from tests.convergence.machine import (
    Checkpoints,
    LinkMarkers,
    MatchOnEmail,
    OneWayRuns,
    SyncMachine,
    ThreeSystems,
    TwoSystemsOnPostgres,
    profile,
)

TestTwoSystems = SyncMachine.TestCase
TestTwoSystems.settings = profile(250)

TestThreeSystems = ThreeSystems.TestCase
TestThreeSystems.settings = profile(100)

TestMatchOnEmail = MatchOnEmail.TestCase
TestMatchOnEmail.settings = profile(80)

TestOneWayRuns = OneWayRuns.TestCase
TestOneWayRuns.settings = profile(100)

TestLinkMarkers = LinkMarkers.TestCase
TestLinkMarkers.settings = profile(80)

TestTwoSystemsOnPostgres = TwoSystemsOnPostgres.TestCase
TestTwoSystemsOnPostgres.settings = profile(60)

TestCheckpoints = Checkpoints.TestCase
TestCheckpoints.settings = profile(80)
