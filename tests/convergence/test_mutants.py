"""The harness has teeth: every deliberately broken engine is caught on some seed."""

from __future__ import annotations

import logging

import pytest

from tests.convergence.mutants import MUTANTS, caught


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_is_caught(mutant, caplog):
    caplog.set_level(logging.CRITICAL)
    reasons = []
    for seed_value in range(3):
        reason = caught(mutant, seed_value, examples=40)
        if reason:
            reasons.append(reason)
            break
    assert reasons, f"the harness let '{mutant}' through on seeds 0-2"
