"""Operations against a real Prefect API: the catalog, the run's artifacts (report with
conflicts by id and record, capped change table, moving progress), typed parameters,
conflicts held for a person and resolved from the command line, and run history."""

from __future__ import annotations

import shutil

import pytest

import flows.twoway_flows as twoway_flows
from flows.twoway_flows import two_way_sync
from tests.syncrig import sync_rig
from twoway import catalog, cli
from twoway.errors import DefinitionError


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.type: a for a in found}


def _in_catalog(rig, tmp_path, monkeypatch) -> str:
    """Put the rig's definition in a catalog folder; returns the sync's name."""
    folder = tmp_path / "syncs"
    folder.mkdir(exist_ok=True)
    shutil.copy(rig.path, folder / f"{rig.doc['name']}.sync.yaml")
    monkeypatch.setenv(catalog.SYNCS_DIR_ENV, str(folder))
    return rig.doc["name"]


def test_catalog_finds_syncs_by_name_and_explains_unknown_ones(tmp_path, monkeypatch):
    folder = tmp_path / "syncs"
    folder.mkdir()
    (folder / "a.sync.yaml").write_text("name: contacts\n")
    (folder / "b.sync.yml").write_text("name: orders\n")
    (folder / "notes.yaml").write_text("name: ignored\n")
    monkeypatch.setenv(catalog.SYNCS_DIR_ENV, str(folder))
    assert catalog.sync_names() == ["contacts", "orders"]
    assert catalog.resolve("contacts") == (folder / "a.sync.yaml").resolve()
    assert catalog.resolve(str(folder / "b.sync.yml")) == (folder / "b.sync.yml").resolve()
    with pytest.raises(DefinitionError, match=r"unknown sync 'contact' \(did you mean 'contacts'"):
        catalog.resolve("contact")
    with pytest.raises(DefinitionError, match="no such file"):
        catalog.resolve("missing/x.sync.yaml")
    (folder / "c.sync.yaml").write_text("name: orders\n")
    with pytest.raises(DefinitionError, match="defined by several files"):
        catalog.resolve("orders")


@pytest.mark.usefixtures("prefect_api")
def test_held_conflicts_show_in_the_report_and_a_person_resolves_them(
    tmp_path, monkeypatch, capsys
):
    with sync_rig(tmp_path, conflicts="manual") as rig:
        name = _in_catalog(rig, tmp_path, monkeypatch)
        rig.add("s0", "h@example.com", "A", "B")
        assert two_way_sync(definition=name)["status"] == "completed"
        rig.edit("s1", "h@example.com", first_name="Left")
        rig.edit("s0", "h@example.com", first_name="Right")
        state = two_way_sync(definition=name, return_state=True)
        assert state.is_completed() and state.result()["conflicts"] == 1
        md = _artifacts(state.state_details.flow_run_id)["markdown"].data
        s0_key, s1_key = rig.key_of("s0", "h@example.com"), rig.key_of("s1", "h@example.com")
        assert "## Conflicts (1)" in md and "## Held for a person (1 open)" in md
        assert f"s0 {s0_key}, s1 {s1_key}" in md  # record ids, not only the link
        assert f"twoway conflicts resolve {name} ID --keep SYSTEM" in md
        assert "held for a person" in md

        capsys.readouterr()
        assert cli.main(["conflicts", "list", name]) == 0
        listed = capsys.readouterr().out
        assert "open" in listed and "first_name" in listed and "'Left'" in listed
        assert cli.main(["conflicts", "list", name, "--json"]) == 0
        import json

        (conflict,) = json.loads(capsys.readouterr().out)
        assert cli.main(["conflicts", "resolve", name, str(conflict["id"]), "--keep", "s1"]) == 0
        assert "decided: first_name = 'Left' (the value of s1)" in capsys.readouterr().out
        assert cli.main(["conflicts", "resolve", name, str(conflict["id"]), "--keep", "s1"]) == 1
        assert f"no open conflict #{conflict['id']}" in capsys.readouterr().err
        assert cli.main(["conflicts", "list", name]) == 0
        assert "decided (next run applies it)" in capsys.readouterr().out

        report = two_way_sync(definition=name)
        assert report["systems"]["s0"]["updated"] == 1
        assert rig.row("s0", "h@example.com")["first_name"] == "Left"
        assert cli.main(["conflicts", "list", str(rig.path)]) == 0
        assert "no conflicts wait for a person" in capsys.readouterr().out


@pytest.mark.usefixtures("prefect_api")
def test_a_person_may_keep_a_value_of_their_own(tmp_path, monkeypatch, capsys):
    with sync_rig(tmp_path, conflicts="manual") as rig:
        name = _in_catalog(rig, tmp_path, monkeypatch)
        rig.add("s0", "v@example.com", "A", "B")
        two_way_sync(definition=name)
        rig.edit("s1", "v@example.com", last_name="One")
        rig.edit("s0", "v@example.com", last_name="Two")
        two_way_sync(definition=name)
        (conflict,) = [c for c in _open(rig)]
        assert cli.main(["conflicts", "resolve", name, str(conflict["id"]), "--value", "s1"]) == 0
        two_way_sync(definition=name)
        assert rig.row("s0", "v@example.com")["last_name"] == "s1"
        assert rig.row("s1", "v@example.com")["last_name"] == "s1"


def _open(rig):
    from twoway.state import StateStore

    store = StateStore(rig.doc["state"])
    try:
        return store.open_conflicts(rig.doc["name"])
    finally:
        store.close()


@pytest.mark.usefixtures("prefect_api")
def test_progress_moves_and_the_change_table_states_its_cap(tmp_path, monkeypatch):
    seen: list[tuple[float, str]] = []
    original = twoway_flows.update_progress_artifact

    def recording(artifact_id, progress, description=None):
        seen.append((progress, description))
        return original(artifact_id, progress=progress, description=description)

    monkeypatch.setattr(twoway_flows, "update_progress_artifact", recording)
    monkeypatch.setattr(twoway_flows, "TABLE_CAP", 5)
    monkeypatch.setattr(twoway_flows._Progress, "interval", 0.0)  # every step, however quick
    with sync_rig(tmp_path) as rig:
        for i in range(40):
            rig.add("s0", f"p{i}@example.com", "A", f"L{i}")
        state = two_way_sync(definition=str(rig.path), return_state=True)
        assert state.is_completed()
        artifacts = _artifacts(state.state_details.flow_run_id)
    values = [p for p, _ in seen]
    assert values == sorted(values) and values[-1] == 100.0
    assert len(set(values)) >= 6  # reading, mapping, planning, writing, committing
    assert any("writing s1" in (d or "") for _, d in seen)
    assert artifacts["progress"].data == 100.0
    table = artifacts["table"]
    assert "first 5 of 120 rows" in table.description and "capped at 5" in table.description
    assert "lists the first 5 (the cap)" in artifacts["markdown"].data


@pytest.mark.usefixtures("prefect_api")
def test_direction_parameter_carries_changes_one_way(tmp_path):
    with sync_rig(tmp_path) as rig:
        rig.add("s0", "from0@example.com")
        rig.add("s1", "from1@example.com")
        state = two_way_sync(definition=str(rig.path), direction="s0 -> s1", return_state=True)
        assert state.is_completed()
        assert rig.data("s1") == [
            ("from0@example.com", "Ann", "Lee", None),
            ("from1@example.com", "Ann", "Lee", None),
        ]
        assert rig.row("s0", "from1@example.com") is None
        bad = two_way_sync(definition=str(rig.path), direction="s0 -> crm", return_state=True)
        assert bad.is_failed()
        assert "target 'crm' is not a system" in bad.message
        with pytest.raises(twoway_flows.SyncFailed, match="target 'crm' is not a system"):
            bad.result()


@pytest.mark.usefixtures("prefect_api")
def test_an_unknown_sync_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.SYNCS_DIR_ENV, str(tmp_path))
    state = two_way_sync(definition="no-such-sync", return_state=True)
    assert state.is_failed()
    assert "unknown sync 'no-such-sync'" in state.message


@pytest.mark.usefixtures("prefect_api")
def test_history_prints_the_last_runs_from_the_prefect_api(tmp_path, monkeypatch, capsys):
    with sync_rig(tmp_path) as rig:
        name = _in_catalog(rig, tmp_path, monkeypatch)
        rig.add("s0", "hist@example.com")
        two_way_sync(definition=name)
        two_way_sync(definition=str(rig.path), dry_run=True)
        capsys.readouterr()
        assert cli.main(["history", name]) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["STARTED", "(UTC)", "TOOK"]
        assert len(lines) == 3  # newest first: the dry run, then the run
        assert f"{name}: dry run" in lines[1] and "Completed" in lines[1] and "direct" in lines[1]
        assert f"{name} run completed: s0: 1 read" in lines[2]
        assert cli.main(["history", name, "--json"]) == 0
        import json

        runs = json.loads(capsys.readouterr().out)
        assert [r["dry_run"] for r in runs] == [True, False]


@pytest.mark.usefixtures("prefect_api")
def test_progress_updates_at_most_once_a_second_but_always_ends(tmp_path, monkeypatch):
    seen: list[float] = []
    original = twoway_flows.update_progress_artifact

    def recording(artifact_id, progress, description=None):
        seen.append(progress)
        return original(artifact_id, progress=progress, description=description)

    monkeypatch.setattr(twoway_flows, "update_progress_artifact", recording)
    monkeypatch.setattr(twoway_flows._Progress, "interval", 3600.0)
    with sync_rig(tmp_path) as rig:
        for i in range(40):
            rig.add("s0", f"p{i}@example.com", "A", f"L{i}")
        state = two_way_sync(definition=str(rig.path), return_state=True)
        assert state.is_completed()
    # each update is an API call: within the interval only the state commit and the end go out
    assert seen == [100.0, 100.0]


def test_the_run_form_offers_the_catalogs_directions_as_a_choice(tmp_path, monkeypatch):
    folder = tmp_path / "syncs"
    folder.mkdir()
    (folder / "a.sync.yaml").write_text("name: a\nsystems: {crm: {}, portal: {}}\n")
    (folder / "b.sync.yaml").write_text("name: b\nsystems: [not, a, mapping\n")  # skipped
    monkeypatch.setenv(catalog.SYNCS_DIR_ENV, str(folder))
    assert twoway_flows._catalog_directions() == ["both", "crm -> portal", "portal -> crm"]
    schema = two_way_sync.parameters.model_dump()["properties"]
    assert schema["direction"]["enum"] == twoway_flows.DIRECTIONS
    assert "accepts only these" in schema["definition"]["description"]
