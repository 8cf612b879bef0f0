"""The Custom run form's ``direction``: a choice (an enum in the deployment's parameter
schema, built from the catalog's syncs at import) that the server holds runs to, while
Python callers may still name the systems of a sync given by path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import TypeAdapter, ValidationError

from tests.badinput.rig import REPO
from twoway import catalog

SCHEMA_OF_A_CATALOG = """
import json
from flows.twoway_flows import two_way_sync
from flows.sharded import sharded_sync
# what `prefect deploy` sends as each deployment's parameter_openapi_schema
print(json.dumps({
    f.name: f.to_deployment(name="form")._parameter_openapi_schema.model_dump(exclude_unset=True)
    for f in (two_way_sync, sharded_sync)
}))
"""


def test_the_run_forms_direction_is_a_choice_of_the_catalogs_directions(tmp_path):
    from prefect.utilities.schema_tools import ValidationError as Refused
    from prefect.utilities.schema_tools import validate

    folder = tmp_path / "syncs"
    folder.mkdir()
    (folder / "a.sync.yaml").write_text("name: a\nsystems: {crm: {}, portal: {}}\n")
    (folder / "b.sync.yaml").write_text("name: b\nsystems: {crm: {}, shop: {}}\n")
    done = subprocess.run(
        [sys.executable, "-c", SCHEMA_OF_A_CATALOG],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, catalog.SYNCS_DIR_ENV: str(folder)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    schemas = json.loads(done.stdout.splitlines()[-1])
    assert set(schemas) == {"twoway-sync", "twoway-sync-sharded"}
    for schema in schemas.values():
        direction = schema["properties"]["direction"]
        assert direction["enum"] == [
            "both",
            "crm -> portal",
            "crm -> shop",
            "portal -> crm",
            "shop -> crm",
        ]
        assert "pattern" not in direction  # a select, not a box to type in
        assert direction["default"] == "both"
        # what the server checks a new run's parameters with
        validate({"definition": "a", "direction": "crm -> portal"}, schema, raise_on_error=True)
        with pytest.raises(Refused):
            validate({"definition": "a", "direction": "crm->nowhere"}, schema, raise_on_error=True)


def test_python_callers_may_still_name_the_systems_of_a_sync_given_by_path():
    from flows.twoway_flows import DIRECTIONS, Direction

    check = TypeAdapter(Direction)
    for choice in DIRECTIONS:
        assert check.validate_python(choice) == choice
    assert check.validate_python("s0 -> s1") == "s0 -> s1"  # checked by the run against the sync
    assert check.validate_python(" s0->s1 ") == " s0->s1 "
    for bad in ("s0", "-> s1", "s0 -> s1 -> s2", 3, None):
        with pytest.raises(ValidationError):
            check.validate_python(bad)
