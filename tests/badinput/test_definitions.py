"""Bad definitions through the command: exit code 2, one line naming the file, the key and
the problem, no traceback. Each case runs ``twoway.cli.main`` in this process with both
output streams captured at the file-descriptor level (fast); a sample of cases also runs as
real subprocesses, to prove the same holds for the installed command."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from tests.badinput.rig import no_traceback, twoway
from twoway import cli

BASE = """\
name: contacts
state: sqlite:///state.db
systems:
  crm: {kind: sql, url: "sqlite:///crm.db", table: people, key: id, modified_at: m, modified_by: b, integration_account: svc}
  portal: {kind: sql, url: "sqlite:///portal.db", table: people, key: id, modified_at: m, modified_by: b, integration_account: svc}
fields:
  email: {crm: email, portal: email}
  phone: {crm: phone, portal: phone}
match_on: [email]
"""

EDITS = {  # case -> (command, text of the definition, what the message must say)
    "invalid-yaml": ("check", "name: x\nsystems: {a: {kind: sql}\n", ["invalid YAML", "line 3"]),
    "tab-indent": ("check", "name: x\n\tsystems: {}\n", ["invalid YAML", "'\\t'"]),
    "unknown-top-key": (
        "check",
        BASE + "confilcts: manual\n",
        ["confilcts: unknown key (did you mean 'conflicts'?)"],
    ),
    "unknown-system-key": (
        "check",
        BASE.replace(
            "modified_at: m, modified_by: b, integration_account: svc}",
            "modified_at: m, modified_by: b, integration_acount: svc}",
            1,
        ),
        ["systems.crm.integration_acount: unknown key (did you mean 'integration_account'?)"],
    ),
    "missing-required-key": (
        "check",
        BASE.replace("name: contacts\n", ""),
        ["name: required key is missing"],
    ),
    "missing-table": (
        "check",
        BASE.replace("table: people, ", "", 1),
        ["systems.crm.table: required key is missing"],
    ),
    "unknown-system-in-fields": (
        "check",
        BASE.replace("{crm: email, portal: email}", "{crm: email, portl: email}"),
        ["fields.email.portl: unknown system (did you mean 'portal'?)"],
    ),
    "bad-direction": (
        "check",
        BASE.replace(
            "{crm: phone, portal: phone}", "{crm: phone, portal: phone, direction: crm => portal}"
        ),
        ["fields.phone.direction: bad direction 'crm => portal'"],
    ),
    "direction-unknown-system": (
        "check",
        BASE.replace(
            "{crm: phone, portal: phone}", "{crm: phone, portal: phone, direction: crm -> erp}"
        ),
        ["fields.phone.direction: direction names unknown system 'erp'"],
    ),
    "bad-conflict-policy": (
        "check",
        BASE + "conflicts: newest\n",
        ["conflicts: unknown policy 'newest'"],
    ),
    "prefer-unknown-system": (
        "check",
        BASE + "conflicts: prefer erp\n",
        ["'prefer erp' names an unknown system"],
    ),
    "bad-delete-policy": (
        "check",
        BASE + "deletes: sometimes\n",
        ["deletes: Input should be 'propagate' or 'ignore'"],
    ),
    "mass-change-limit-out-of-range": (
        "check",
        BASE + "mass_change_limit: 5\n",
        ["mass_change_limit:"],
    ),
    "chunk-size-zero": (
        "check",
        BASE + "chunk_size: 0\n",
        ["chunk_size: Input should be greater than or equal to 1"],
    ),
    "match-on-not-mapped": (
        "check",
        BASE.replace("match_on: [email]", "match_on: [mail]"),
        ["match_on: 'mail' is not a field in 'fields'"],
    ),
    "duplicate-system-name": (
        "check",
        BASE.replace("fields:", "  crm: {kind: sql, url: 'sqlite:///x.db', table: t}\nfields:"),
        ["duplicate key 'crm' (first at line 4)"],
    ),
    "unknown-kind": (
        "check",
        BASE.replace("kind: sql", "kind: sqll", 1),
        ["systems.crm.kind: unknown kind 'sqll'"],
    ),
    "env-var-not-set": (
        "check",
        BASE.replace('"sqlite:///crm.db"', '"${TWOWAY_TEST_UNSET_VARIABLE}"'),
        ["systems.crm.url: environment variable TWOWAY_TEST_UNSET_VARIABLE is not set"],
    ),
    "unparseable-state-url": (
        "check",
        BASE.replace("sqlite:///state.db", "not a url"),
        ["state: not a database URL"],
    ),
    "unknown-state-driver": (
        "check",
        BASE.replace("sqlite:///state.db", "oracle+nosuch://h/db"),
        ["state: unknown database kind 'oracle+nosuch'"],
    ),
    "unparseable-system-url": (
        "check",
        BASE.replace('"sqlite:///crm.db"', '"::::"'),
        ["systems.crm.url: not a database URL"],
    ),
    "not-a-mapping": (
        "check",
        "- crm\n- portal\n",
        ["the document must be a mapping of keys, not list"],
    ),
    "empty-file": ("check", "", ["the file is empty"]),
    "python-tag": (
        "check",
        "name: !!python/object/apply:os.system [id]\n",
        ["invalid YAML", "python/object"],
    ),
    "bad-sync-name": (
        "check",
        BASE.replace("name: contacts", "name: 'x; DROP TABLE y'"),
        ["name: String should match pattern"],
    ),
    "column-name-not-text": (
        "check",
        BASE.replace("{crm: email, portal: email}", "{crm: 5, portal: email}"),
        ["fields.email.crm:"],
    ),
    "column-does-not-exist": (
        "check",
        BASE.replace("{crm: phone, portal: phone}", "{crm: phone, portal: phoen}"),
        ["fields.phone.portal: column 'phoen' does not exist in portal"],
    ),
    "key-column-does-not-exist": (
        "check",
        BASE.replace("key: id,", "key: ident,", 1),
        ["systems.crm.key: column 'ident' does not exist"],
    ),
    "table-does-not-exist": (
        "check",
        BASE.replace("table: people,", "table: persons,", 1),
        ["systems.crm: table 'persons'", "does not exist"],
    ),
    "state-cannot-be-opened": (
        "check",
        BASE.replace("sqlite:///state.db", "sqlite:///crm.db/inside/state.db"),
        ["state:"],
    ),
    "table-name-injection": (
        "check",
        BASE.replace("table: people,", "table: 'people; DROP TABLE people',", 1),
        ["table 'people; DROP TABLE people'", "does not exist"],
    ),
    "column-name-injection": (
        "check",
        BASE.replace(
            "{crm: phone, portal: phone}",
            """{crm: 'phone"; DROP TABLE people; --', portal: phone}""",
        ),
        ["""column 'phone"; DROP TABLE people; --' does not exist"""],
    ),
    "plan-with-bad-definition": (
        "plan",
        BASE + "confilcts: manual\n",
        ["did you mean 'conflicts'?"],
    ),
    "run-with-bad-definition": ("run", BASE + "confilcts: manual\n", ["did you mean 'conflicts'?"]),
    "status-with-bad-definition": (
        "status",
        BASE + "confilcts: manual\n",
        ["did you mean 'conflicts'?"],
    ),
}


def _tables(folder: Path) -> None:
    for system in ("crm", "portal"):
        engine = sa.create_engine(f"sqlite:///{folder / (system + '.db')}")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, phone TEXT, m TEXT, b TEXT)"
                )
            )
            conn.execute(sa.text("INSERT INTO people (email) VALUES ('keep@example.com')"))
        engine.dispose()


def _prepare(folder: Path, case: str) -> Path:
    _tables(folder)
    path = folder / "contacts.sync.yaml"
    path.write_text(EDITS[case][1])
    return path


@pytest.fixture
def outcomes(request, tmp_path, capfd, monkeypatch):
    """The case's command run in this process: case -> (definition path, outcome)."""
    case = request.node.callspec.params["case"]
    monkeypatch.delenv("TWOWAY_DEBUG", raising=False)
    path = _prepare(tmp_path, case)
    code = cli.main([EDITS[case][0], str(path)])
    out, err = capfd.readouterr()
    return {case: (path, SimpleNamespace(returncode=code, stdout=out, stderr=err))}


@pytest.mark.parametrize("case", list(EDITS))
def test_definition_case(case, outcomes):
    path, result = outcomes[case]
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    assert no_traceback(result), result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    for fragment in EDITS[case][2]:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert str(path) in result.stderr  # the file is named
    if "injection" in case:  # the name was quoted or refused, never executed
        engine = sa.create_engine(f"sqlite:///{path.parent / 'crm.db'}")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT email FROM people")).scalars().all() == [
                "keep@example.com"
            ]
        engine.dispose()


def _main(capfd, *args: str) -> SimpleNamespace:
    code = cli.main(list(args))
    out, err = capfd.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def test_missing_file_exits_2(tmp_path, capfd):
    result = _main(capfd, "check", str(tmp_path / "nope.sync.yaml"))
    assert result.returncode == 2 and no_traceback(result)
    assert "nope.sync.yaml: no such file" in result.stderr


def test_definition_not_utf8_exits_2(tmp_path, capfd):
    path = tmp_path / "latin1.sync.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    result = _main(capfd, "check", str(path))
    assert result.returncode == 2 and no_traceback(result)
    assert "not UTF-8 text" in result.stderr


SUBPROCESS_SAMPLE = ["invalid-yaml", "table-does-not-exist"]


def test_the_installed_command_gives_the_same_answers(tmp_path):
    """A sample of the cases through ``python -m twoway.cli``, in parallel."""
    paths = {}
    for case in SUBPROCESS_SAMPLE:
        folder = tmp_path / case
        folder.mkdir()
        paths[case] = _prepare(folder, case)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip(
                SUBPROCESS_SAMPLE,
                pool.map(lambda c: twoway(EDITS[c][0], str(paths[c])), SUBPROCESS_SAMPLE),
                strict=True,
            )
        )
    for case, result in results.items():
        assert result.returncode == 2, (case, result.stderr)
        assert no_traceback(result), result.stderr
        assert all(fragment in result.stderr for fragment in EDITS[case][2]), result.stderr


def _with_block(tmp_path: Path, block: str) -> Path:
    _tables(tmp_path)
    path = tmp_path / "contacts.sync.yaml"
    path.write_text(BASE.replace('url: "sqlite:///crm.db"', f"block: {block}", 1))
    return path


def test_a_block_that_does_not_exist_exits_2(tmp_path, capfd, monkeypatch):
    from prefect.blocks.core import Block

    def missing(cls, name, *args, **kwargs):
        raise ValueError(f"Unable to find block document named {name.split('/')[-1]}")

    monkeypatch.setattr(Block, "load", classmethod(missing))
    path = _with_block(tmp_path, "twoway-sql-table/nosuch")
    result = _main(capfd, "check", str(path))
    assert result.returncode == 2 and no_traceback(result)
    assert "systems.crm.block: no saved block 'twoway-sql-table/nosuch'" in result.stderr


def test_a_block_of_the_wrong_type_exits_2(tmp_path, capfd, monkeypatch):
    from prefect.blocks.core import Block
    from prefect.blocks.system import Secret

    monkeypatch.setattr(Block, "load", classmethod(lambda cls, name, *a, **k: Secret(value="x")))
    path = _with_block(tmp_path, "secret/crm")
    result = _main(capfd, "check", str(path))
    assert result.returncode == 2 and no_traceback(result)
    assert "block 'secret/crm' is a Secret, expected SqlTable" in result.stderr
