"""Every ``rig_<kind>.py`` beside this file provides ``make_rig(tmp_path)``, a context
manager yielding a :class:`tests.contract.rig.Rig`; the contract suite runs against each."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

RIGS = sorted(p.stem[len("rig_") :] for p in Path(__file__).parent.glob("rig_*.py"))


@pytest.fixture(params=RIGS)
def rig(request, tmp_path):
    module = importlib.import_module(f"tests.contract.rig_{request.param}")
    with module.make_rig(tmp_path) as made:
        yield made
        made.endpoint.close()
