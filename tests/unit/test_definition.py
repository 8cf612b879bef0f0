"""Sync definitions: the documented form loads; every kind of mistake is one clear line."""

from __future__ import annotations

import json
import textwrap

import pytest

from twoway.definition import json_schema, load_definition
from twoway.errors import DefinitionError

ISSUE_FORM = """\
name: contacts
state: sqlite:///state.db            # optional; default: a SQLite file beside the definition
systems:
  crm:
    kind: sql
    url: sqlite:///crm.db            # relative SQLite paths (here and in state) resolve against this file's folder
    table: contacts
    key: id
    modified_at: updated_at
    modified_by: updated_by
    integration_account: svc-sync
  portal:
    kind: sql
    url: sqlite:///portal.db
    table: people
    key: pid
    modified_at: modified
    modified_by: editor
    integration_account: svc-sync
fields:                              # canonical field -> column per system
  email: {crm: email, portal: mail}
  first_name: {crm: first_name, portal: fname}
  last_name: {crm: last_name, portal: lname}
  phone: {crm: phone, portal: tel, direction: crm -> portal}
match_on: [email]                    # links existing records on the first sync
conflicts: last_writer_wins          # or: prefer crm | manual
deletes: propagate                   # or: ignore
"""


def write(tmp_path, text, name="sync.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path, text) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    for line in info.value.problems:
        assert str(path) in line, line
    return info.value.problems


def test_the_documented_form_loads_and_resolves_paths(tmp_path):
    d = load_definition(write(tmp_path, ISSUE_FORM))
    assert d.name == "contacts"
    assert d.state == f"sqlite:///{tmp_path.resolve() / 'state.db'}"
    assert d.systems["crm"].url == f"sqlite:///{tmp_path.resolve() / 'crm.db'}"
    assert d.field_maps["phone"].flows("crm", "portal")
    assert not d.field_maps["phone"].flows("portal", "crm")
    assert d.field_maps["email"].flows("portal", "crm")
    assert d.fields_of("portal") == {
        "email": "mail",
        "first_name": "fname",
        "last_name": "lname",
        "phone": "tel",
    }


def test_default_state_file_sits_beside_the_definition(tmp_path):
    d = load_definition(write(tmp_path, ISSUE_FORM.replace("state: sqlite:///state.db", "")))
    assert d.state == f"sqlite:///{tmp_path.resolve() / '.twoway' / 'contacts.db'}"


def test_environment_variables_fill_values(tmp_path, monkeypatch):
    monkeypatch.setenv("CRM_DB_URL", "postgresql://u:secret@127.0.0.1/test")
    d = load_definition(
        write(tmp_path, ISSUE_FORM.replace("url: sqlite:///crm.db", "url: ${CRM_DB_URL}"))
    )
    assert d.systems["crm"].url == "postgresql://u:secret@127.0.0.1/test"


def test_missing_environment_variable_names_key_and_variable(tmp_path):
    (line,) = problems(
        tmp_path, ISSUE_FORM.replace("url: sqlite:///crm.db", "url: ${NOPE_NOT_SET}")
    )
    assert "systems.crm.url" in line and "NOPE_NOT_SET" in line


def test_block_instead_of_url(tmp_path):
    d = load_definition(
        write(tmp_path, ISSUE_FORM.replace("url: sqlite:///crm.db", "block: crm-db"))
    )
    assert d.systems["crm"].block == "crm-db" and d.systems["crm"].url is None


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            ("  phone: {crm: phone, portal: tel,", "  phone: {crm: phone, erp: tel,"),
            "fields.phone.erp: unknown system",
        ),
        (
            ("direction: crm -> portal", "direction: crm => portal"),
            "fields.phone.direction: bad direction",
        ),
        (("direction: crm -> portal", "direction: crm -> erp"), "unknown system 'erp'"),
        (
            ("conflicts: last_writer_wins", "conflicts: newest"),
            "conflicts: unknown policy 'newest'",
        ),
        (
            ("conflicts: last_writer_wins", "conflicts: prefer erp"),
            "'prefer erp' names an unknown system",
        ),
        (("deletes: propagate", "deletes: sometimes"), "deletes:"),
        (("match_on: [email]", "match_on: [mail]"), "match_on: 'mail' is not a field"),
        (
            (
                "    integration_account: svc-sync\n  portal:",
                "    integration_acount: svc-sync\n  portal:",
            ),
            "did you mean 'integration_account'",
        ),
        (
            (
                "    kind: sql\n    url: sqlite:///crm.db",
                "    kind: mongo\n    url: sqlite:///crm.db",
            ),
            "unknown kind 'mongo'",
        ),
        (("name: contacts", "name: 'bad name!'"), "name:"),
    ],
)
def test_bad_definitions_name_the_key(tmp_path, change, expected):
    old, new = change
    assert old in ISSUE_FORM
    found = problems(tmp_path, ISSUE_FORM.replace(old, new))
    assert any(expected in line for line in found), found


def test_duplicate_system_is_refused(tmp_path):
    text = ISSUE_FORM.replace("  portal:\n", "  crm:\n", 1)
    (line,) = problems(tmp_path, text)
    assert "duplicate key 'crm'" in line and "line" in line


def test_invalid_yaml_names_the_line(tmp_path):
    (line,) = problems(tmp_path, "name: x\nsystems: [unclosed\n")
    assert "invalid YAML" in line and "line" in line


def test_missing_file_and_wrong_document(tmp_path):
    with pytest.raises(DefinitionError, match="no such file"):
        load_definition(tmp_path / "nope.yaml")
    assert "mapping" in problems(tmp_path, "- just\n- a list\n")[0]


def test_json_schema_describes_the_definition():
    schema = json_schema()
    assert schema["title"] == "twoway sync definition"
    assert {"name", "systems", "fields"} <= set(schema["properties"])
    assert "sql" in json.dumps(schema)


DIRECTUS = """
name: cms
systems:
  cms:
    kind: directus
{cms}
  db:
    kind: sql
    url: sqlite:///db.db
    table: people
fields:
  email: {{cms: email, db: email}}
"""


def test_a_directus_system_needs_only_url_collection_and_token(tmp_path, monkeypatch):
    monkeypatch.setenv("DIRECTUS_TOKEN", "tok-123")
    cms = "    url: https://cms.example.com\n    collection: contacts\n    token: ${DIRECTUS_TOKEN}"
    definition = load_definition(write(tmp_path, DIRECTUS.format(cms=cms)))
    system = definition.systems["cms"]
    assert (system.key, system.modified_at, system.created_at) == (
        "id",
        "date_updated",
        "date_created",
    )
    assert (system.modified_by, system.created_by) == ("user_updated", "user_created")
    assert system.token.get_secret_value() == "tok-123"
    assert "tok-123" not in repr(definition)


@pytest.mark.parametrize(
    "cms, expected",
    [
        ("    url: https://cms.example.com\n    token: t", "systems.cms.collection: required key"),
        ("    collection: contacts\n    token: t", "systems.cms.url: required key"),
        (
            "    url: https://cms.example.com\n    collection: contacts",
            "systems.cms: needs 'token'",
        ),
        (
            "    url: u\n    collection: c\n    token: t\n    token_secret: s",
            "give one of 'token', 'token_secret' and 'block'",
        ),
    ],
)
def test_a_directus_system_missing_its_keys_is_one_line_each(tmp_path, cms, expected):
    found = problems(tmp_path, DIRECTUS.format(cms=cms))
    assert len(found) == 1 and expected in found[0], found
