"""The randomized convergence harness in CI (quick mode); TWOWAY_SOAK=N for a long soak."""

from __future__ import annotations

from tests.convergence.machine import MatchOnEmail, SyncMachine, ThreeSystems, profile

TestTwoSystems = SyncMachine.TestCase
TestTwoSystems.settings = profile(250)

TestThreeSystems = ThreeSystems.TestCase
TestThreeSystems.settings = profile(100)

TestMatchOnEmail = MatchOnEmail.TestCase
TestMatchOnEmail.settings = profile(80)
