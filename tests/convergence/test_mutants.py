"""The harness has teeth: every deliberately broken engine is caught, on every one of three
seeds, by the invariant that its bug breaks; the unmutated engine passes the same seeds."""

from __future__ import annotations

import logging

import pytest

from tests.convergence.mutants import MACHINES, MUTANTS, caught, names_its_invariant

SEEDS = range(3)


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_is_caught_by_its_invariant(mutant, caplog):
    caplog.set_level(logging.CRITICAL)
    for seed_value in SEEDS:
        reason = caught(mutant, seed_value)
        assert reason is not None, f"the harness let '{mutant}' through on seed {seed_value}"
        assert names_its_invariant(MUTANTS[mutant], reason), (
            f"'{mutant}' on seed {seed_value} was caught by another invariant than "
            f"{MUTANTS[mutant].breaks}: {reason}"
        )


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
def test_unmutated_engine_passes_the_same_seeds(machine, caplog):
    caplog.set_level(logging.CRITICAL)
    for seed_value in SEEDS:
        assert caught(None, seed_value, 40, machine) is None
