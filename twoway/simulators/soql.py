"""The SOQL subset a sync needs, parsed and evaluated for the Salesforce simulator.

Supported: ``SELECT f, g FROM Object [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST],
...] [LIMIT n] [OFFSET n]``. Conditions compare a field with a literal (``= != <> < <= > >=``),
``LIKE 'pat%'``, ``[NOT] IN (a, b)``, combined with ``AND``/``OR``/``NOT`` and parentheses
(mixing AND and OR needs parentheses, as in Salesforce). Literals: quoted strings with
backslash escapes, numbers, ``true``/``false``, ``null``, unquoted dates (2024-01-31) and
datetimes (2024-01-31T10:00:00Z, with fraction or offset). Keywords and field names are
case-insensitive. Errors are :class:`SoqlError` with Salesforce's error code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

KEYWORDS = frozenset(
    [
        "SELECT",
        "FROM",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "LIKE",
        "IN",
        "ORDER",
        "BY",
        "ASC",
        "DESC",
        "NULLS",
        "FIRST",
        "LAST",
        "LIMIT",
        "OFFSET",
        "TRUE",
        "FALSE",
        "NULL",
    ]
)
COMPARISONS = ("=", "!=", "<>", "<", "<=", ">", ">=")

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})(?![\dT])
  | (?P<number>[+-]?\d+(?:\.\d+)?)(?![\w.])
  | (?P<string>')
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


class SoqlError(ValueError):
    """A query Salesforce would refuse: ``code`` is its errorCode (MALFORMED_QUERY, ...)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


@dataclass
class Token:
    kind: str  # name, keyword, string, number, date, datetime, op, punct, end
    value: Any
    text: str
    pos: int


@dataclass(frozen=True)
class LikePattern:
    """A LIKE pattern: ``%`` any run, ``_`` one character, ``\\%``/``\\_`` literal."""

    pattern: str

    def regex(self) -> re.Pattern[str]:
        out, i = [], 0
        text = self.pattern
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text) and text[i + 1] in "%_\\":
                out.append(re.escape(text[i + 1]))
                i += 2
                continue
            out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
            i += 1
        return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


@dataclass
class Comparison:
    field: str
    op: str  # one of COMPARISONS, with <> folded into !=
    value: Any


@dataclass
class InList:
    field: str
    values: list[Any]
    negate: bool = False


@dataclass
class Like:
    field: str
    pattern: LikePattern


@dataclass
class BoolOp:
    op: str  # AND | OR
    items: list[Any]


@dataclass
class Not:
    item: Any


@dataclass
class OrderKey:
    field: str
    descending: bool = False
    nulls_first: bool | None = None  # None: Salesforce's default (first when ascending)

    @property
    def nulls_go_first(self) -> bool:
        return (not self.descending) if self.nulls_first is None else self.nulls_first


@dataclass
class Query:
    """A parsed SELECT."""

    fields: list[str]
    sobject: str
    where: Any = None
    order_by: list[OrderKey] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None

    def field_refs(self) -> list[str]:
        """Every field name the query mentions, in order (select list, filter, order)."""
        names = list(self.fields)
        _walk(self.where, lambda node: names.append(node.field))
        names += [key.field for key in self.order_by]
        return names

    def bind(self, resolve: Callable[[str], str], coerce: Callable[[str, Any], Any]) -> None:
        """Replace field names by ``resolve(name)`` (canonical names; raises SoqlError for
        unknown ones) and literals by ``coerce(field, value)`` (typed per field)."""
        self.fields = [resolve(f) for f in self.fields]

        def visit(node: Any) -> None:
            node.field = resolve(node.field)
            if isinstance(node, Comparison):
                node.value = coerce(node.field, node.value)
            elif isinstance(node, InList):
                node.values = [coerce(node.field, v) for v in node.values]

        _walk(self.where, visit)
        for key in self.order_by:
            key.field = resolve(key.field)


def _walk(node: Any, fn: Callable[[Any], None]) -> None:
    if node is None:
        return
    if isinstance(node, BoolOp):
        for item in node.items:
            _walk(item, fn)
    elif isinstance(node, Not):
        _walk(node.item, fn)
    else:
        fn(node)


# -- tokenizer --------------------------------------------------------------------------


def tokenize(text: str) -> list[Token]:
    """The tokens of a query; a MALFORMED_QUERY error at the first character that fits none."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise SoqlError("MALFORMED_QUERY", f"unexpected character {text[pos]!r} at {pos}")
        kind = match.lastgroup
        raw = match.group(0)
        if kind == "ws":
            pos = match.end()
            continue
        if kind == "string":
            value, end = _read_string(text, pos)
            tokens.append(Token("string", value, text[pos:end], pos))
            pos = end
            continue
        if kind == "name" and raw.upper() in KEYWORDS:
            tokens.append(Token("keyword", raw.upper(), raw, pos))
        elif kind == "number":
            value: Any = Decimal(raw) if "." in raw else int(raw)
            tokens.append(Token("number", value, raw, pos))
        elif kind == "date":
            try:
                tokens.append(Token("date", date.fromisoformat(raw), raw, pos))
            except ValueError:
                raise SoqlError("MALFORMED_QUERY", f"invalid date {raw!r}") from None
        elif kind == "datetime":
            tokens.append(Token("datetime", parse_datetime_literal(raw), raw, pos))
        else:
            tokens.append(Token(kind or "", raw, raw, pos))
        pos = match.end()
    tokens.append(Token("end", None, "", len(text)))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    """A quoted string from ``text[start] == "'"``; LIKE escapes (\\% \\_) stay escaped."""
    out = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "'":
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= len(text):
                break
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
            elif nxt in "%_":
                out.append("\\" + nxt)
            elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 4
            else:
                raise SoqlError("MALFORMED_QUERY", f"invalid escape sequence \\{nxt} at {i}")
            i += 2
            continue
        out.append(c)
        i += 1
    raise SoqlError("MALFORMED_QUERY", f"unterminated string starting at {start}")


def parse_datetime_literal(raw: str) -> datetime:
    """An aware UTC datetime from SOQL's literal form (``Z`` or ``+hh:mm``/``+hhmm``)."""
    text = raw[:-1] + "+00:00" if raw.endswith("Z") else raw
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        raise SoqlError("MALFORMED_QUERY", f"invalid datetime {raw!r}") from None


# -- parser -----------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, expected: str) -> SoqlError:
        tok = self.tok
        shown = "end of query" if tok.kind == "end" else repr(tok.text)
        return SoqlError(
            "MALFORMED_QUERY", f"unexpected token {shown} at {tok.pos}; expected {expected}"
        )

    def keyword(self, *words: str) -> bool:
        if self.tok.kind == "keyword" and self.tok.value in words:
            self.i += 1
            return True
        return False

    def expect_keyword(self, word: str) -> None:
        if not self.keyword(word):
            raise self.fail(word)

    def name(self, what: str = "a field name") -> str:
        if self.tok.kind != "name":
            raise self.fail(what)
        return self.take().value

    def punct(self, char: str) -> bool:
        if self.tok.kind == "punct" and self.tok.value == char:
            self.i += 1
            return True
        return False

    def integer(self, what: str) -> int:
        tok = self.tok
        if tok.kind != "number" or not isinstance(tok.value, int) or tok.value < 0:
            raise self.fail(f"a whole number after {what}")
        self.i += 1
        return tok.value

    def query(self) -> Query:
        self.expect_keyword("SELECT")
        fields = [self.name()]
        while self.punct(","):
            fields.append(self.name())
        self.expect_keyword("FROM")
        query = Query(fields=fields, sobject=self.name("an object name"))
        if self.keyword("WHERE"):
            query.where = self.condition()
        if self.keyword("ORDER"):
            self.expect_keyword("BY")
            query.order_by.append(self.order_key())
            while self.punct(","):
                query.order_by.append(self.order_key())
        if self.keyword("LIMIT"):
            query.limit = self.integer("LIMIT")
        if self.keyword("OFFSET"):
            query.offset = self.integer("OFFSET")
        if self.tok.kind != "end":
            raise self.fail("end of query")
        return query

    def order_key(self) -> OrderKey:
        key = OrderKey(self.name())
        if self.keyword("DESC"):
            key.descending = True
        else:
            self.keyword("ASC")
        if self.keyword("NULLS"):
            if self.keyword("FIRST"):
                key.nulls_first = True
            elif self.keyword("LAST"):
                key.nulls_first = False
            else:
                raise self.fail("FIRST or LAST")
        return key

    def condition(self) -> Any:
        items = [self.unary()]
        op = None
        while self.tok.kind == "keyword" and self.tok.value in ("AND", "OR"):
            word = self.take().value
            if op is not None and word != op:
                raise SoqlError(
                    "MALFORMED_QUERY",
                    f"unexpected token {word!r} at {self.tokens[self.i - 1].pos}; "
                    "use parentheses when mixing AND and OR",
                )
            op = word
            items.append(self.unary())
        return items[0] if op is None else BoolOp(op, items)

    def unary(self) -> Any:
        if self.keyword("NOT"):
            return Not(self.unary())
        if self.punct("("):
            inner = self.condition()
            if not self.punct(")"):
                raise self.fail("')'")
            return inner
        return self.predicate()

    def predicate(self) -> Any:
        name = self.name()
        if self.keyword("LIKE"):
            tok = self.take()
            if tok.kind != "string":
                self.i -= 1
                raise self.fail("a quoted pattern after LIKE")
            return Like(name, LikePattern(tok.value))
        negate = False
        if self.keyword("NOT"):
            negate = True
            if not (self.tok.kind == "keyword" and self.tok.value == "IN"):
                raise self.fail("IN after NOT")
        if self.keyword("IN"):
            if not self.punct("("):
                raise self.fail("'(' after IN")
            values = [self.literal()]
            while self.punct(","):
                values.append(self.literal())
            if not self.punct(")"):
                raise self.fail("')'")
            return InList(name, values, negate)
        if self.tok.kind != "op":
            raise self.fail("an operator")
        op = self.take().value
        value = self.literal()
        return Comparison(name, "!=" if op == "<>" else op, value)

    def literal(self) -> Any:
        tok = self.tok
        if tok.kind in ("string", "number", "date", "datetime"):
            self.i += 1
            return tok.value
        if tok.kind == "keyword" and tok.value in ("TRUE", "FALSE", "NULL"):
            self.i += 1
            return {"TRUE": True, "FALSE": False, "NULL": None}[tok.value]
        raise self.fail("a value")


def parse(text: str) -> Query:
    """Parse one SELECT statement; SoqlError(MALFORMED_QUERY) when it is not valid SOQL."""
    if not text or not text.strip():
        raise SoqlError("MALFORMED_QUERY", "the query is empty")
    return _Parser(text).query()


# -- evaluation -------------------------------------------------------------------------


def _fold(value: Any) -> Any:
    """Strings compare case-insensitively in SOQL filters and sorts."""
    return value.casefold() if isinstance(value, str) else value


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "=":
        return _fold(left) == _fold(right)
    if op == "!=":
        return _fold(left) != _fold(right)
    if left is None or right is None:
        return False
    left, right = _fold(left), _fold(right)
    try:
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
        if op == ">":
            return left > right
        return left >= right
    except TypeError:
        return False


def matches(node: Any, record: Mapping[str, Any]) -> bool:
    """True when ``record`` (canonical field name -> typed value) satisfies the condition."""
    if node is None:
        return True
    if isinstance(node, BoolOp):
        if node.op == "AND":
            return all(matches(item, record) for item in node.items)
        return any(matches(item, record) for item in node.items)
    if isinstance(node, Not):
        return not matches(node.item, record)
    value = record.get(node.field)
    if isinstance(node, Comparison):
        return _compare(value, node.op, node.value)
    if isinstance(node, InList):
        found = any(_compare(value, "=", v) for v in node.values)
        if node.negate:
            return value is not None and not found
        return found
    if isinstance(node, Like):
        return isinstance(value, str) and node.pattern.regex().fullmatch(value) is not None
    raise TypeError(f"unknown condition node {node!r}")


class _Desc:
    """Wraps a sort key to reverse its order."""

    __slots__ = ("key",)

    def __init__(self, key: Any):
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return other.key < self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and other.key == self.key


def sort_key(order_by: list[OrderKey]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A key function ordering records as ``ORDER BY`` says (nulls per NULLS FIRST/LAST)."""

    def key(record: Mapping[str, Any]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for order in order_by:
            value = _fold(record.get(order.field))
            is_null = value is None
            # nulls sort before values when they go first, whatever the direction
            null_rank = 0 if is_null == order.nulls_go_first else 1
            inner = (0, "") if is_null else (1, value)
            parts.append(null_rank)
            parts.append(_Desc(inner) if order.descending else inner)
        return tuple(parts)

    return key
