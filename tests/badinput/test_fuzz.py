"""Fuzz tests: the definition loader, the record canonicaliser, the SOQL subset parser and
the webhook parser take any input and answer cleanly, never with a traceback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from twoway.definition import Definition, load_definition, parse_definition
from twoway.errors import DefinitionError
from twoway.simulators.soql import SoqlError, parse
from twoway.values import canonical, values_hash
from twoway.webhooks import CachedSecrets, Debouncer, Receiver, signed_headers

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = [
    "name",
    "state",
    "systems",
    "fields",
    "match_on",
    "conflicts",
    "deletes",
    "kind",
    "url",
    "table",
    "key",
    "direction",
    "a",
    "b",
    "mass_change_limit",
    "block",
]
definition_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=12)
    | st.sampled_from(["sql", "sqlite:///x.db", "a -> b", "prefer a", "manual", "${NOPE_X}"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)


@FAST
@given(definition_like)
def test_any_yaml_document_is_a_definition_or_a_clean_error(doc):
    try:
        result = parse_definition(doc, Path("/fuzz/sync.yaml"))
    except DefinitionError as exc:
        assert exc.problems and all(p.startswith("/fuzz/sync.yaml: ") for p in exc.problems)
    else:
        assert isinstance(result, Definition)


@FAST
@given(st.text(max_size=200))
def test_any_text_file_is_a_definition_or_a_clean_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "sync.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_definition(path)
    except DefinitionError as exc:
        assert exc.problems


@FAST
@given(json_values)
def test_the_canonical_form_of_any_json_value_is_stable_and_hashable(value):
    once = canonical(value)
    assert canonical(once) == once  # idempotent: NaN and infinities became text
    json.dumps(once, allow_nan=False)  # JSON-safe
    assert values_hash({"f": once}) == values_hash({"f": canonical(value)})


@FAST
@given(
    st.text(max_size=120)
    | st.builds(
        lambda w: " ".join(w),
        st.lists(
            st.sampled_from(
                [
                    "SELECT",
                    "Id",
                    ",",
                    "Name",
                    "FROM",
                    "Contact",
                    "WHERE",
                    "(",
                    ")",
                    "=",
                    "'x'",
                    "AND",
                    "OR",
                    "NOT",
                    "IN",
                    "LIKE",
                    "ORDER",
                    "BY",
                    "LIMIT",
                    "5",
                    "2024-01-01T00:00:00Z",
                    "null",
                    "'",
                    "\\",
                ]
            ),
            max_size=14,
        ),
    )
)
def test_any_soql_text_parses_or_raises_a_soql_error(text):
    try:
        parse(text)
    except SoqlError as exc:
        assert exc.args


SECRET = SecretStr("fuzz-secret")


async def _no_runs(sync):
    return []


@FAST
@given(
    st.binary(max_size=300),
    st.sampled_from(["graph", "notify"]),
    st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
    st.booleans(),
)
def test_any_webhook_body_gets_a_clean_answer(body, route, content_type, signed):
    receiver = Receiver(
        secrets=CachedSecrets(lambda sync, system: SECRET),
        debouncer=Debouncer(_no_runs, settle=0),
        emit=lambda sync, payload: None,
        known_sync=lambda sync: True,
        clock=lambda: 1_800_000_000.0,
    )
    headers = signed_headers(body, SECRET, 1_800_000_000) if signed else {}
    if content_type:
        headers["Content-Type"] = content_type
    else:
        headers.pop("Content-Type", None)

    async def go():
        transport = httpx.ASGITransport(app=receiver.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
            answer = await c.post(f"/{route}/c/s", content=body, headers=headers)
            await receiver.drain()
            return answer

    answer = asyncio.run(go())
    assert answer.status_code in (202, 400, 401, 413, 415)
    assert receiver.stats.errors == 0
