"""``--where`` (config ``input.where``): a SQL WHERE subset that selects the rows a run scores.

The text is parsed here into a small tree (no dependency of the core has a SQL parser: pyiceberg's
is in the iceberg extra, and its grammar has no ``DATE '...'``/``TIMESTAMP '...'`` literals),
which is then:

- bound to the input's schema as a pyarrow compute ``Expression`` (``Where.bind``) that filters
  each record batch before scoring; an unknown column or a literal of the wrong type is a
  ``ConfigError`` before anything is read;
- evaluated on partition values (``Where.may_match``) so that files of hive folders and Delta
  tables whose partitions cannot match are never read;
- evaluated on column statistics (``prune_by_statistics``, ``apply_where``): Delta files by their
  add actions' min/max/null counts, any Parquet row group by its footer's; SQL's three truth
  values, with NaN (left out of statistics) failing comparisons and passing their negations;
- translated to a pyiceberg expression (``Where.to_iceberg``) so an Iceberg scan prunes manifests
  and files itself.

Comparisons follow SQL: a comparison with NULL is unknown and unknown rows are not selected.
Supported: ``= != <> < <= > >=``, ``AND OR NOT``, parentheses, ``[NOT] IN (...)``,
``IS [NOT] NULL``, ``[NOT] BETWEEN a AND b``, strings ``'...'``, numbers, ``TRUE``/``FALSE``,
``DATE 'YYYY-MM-DD'``, ``TIMESTAMP 'YYYY-MM-DD HH:MM:SS[+HH:MM]'``; a quoted string compared with
a date or timestamp column is read as one. Column names are bare or ``"double quoted"``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
from dataclasses import dataclass
from itertools import product
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ..errors import ConfigError
from .base import InputFile

T = TypeVar("T")
FIX = "write a SQL condition such as \"event_date = '2026-01-05' AND score > 0.5\" (docs: Running jobs)"

# ----------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Column:
    name: str
    pos: int


@dataclass(frozen=True)
class Literal:
    value: Any  # str, int, float, bool, None, dt.date or dt.datetime
    kind: str  # "string", "number", "bool", "null", "date", "timestamp"
    pos: int


@dataclass(frozen=True)
class Compare:
    op: str  # = != < <= > >=
    left: Column | Literal
    right: Column | Literal


@dataclass(frozen=True)
class InList:
    column: Column
    values: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull:
    column: Column
    negated: bool


@dataclass(frozen=True)
class Between:
    column: Column
    low: Literal
    high: Literal
    negated: bool


@dataclass(frozen=True)
class BoolColumn:
    column: Column


@dataclass(frozen=True)
class Const:
    value: bool


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Compare | InList | IsNull | Between | BoolColumn | Const | And | Or | Not
Leaf = Compare | InList | IsNull | Between | BoolColumn

# ----------------------------------------------------------------------------- parsing

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")+")
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<op><>|!=|<=|>=|=|<|>)
    | (?P<punct>[(),-])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "BETWEEN",
    "TRUE",
    "FALSE",
    "DATE",
    "TIMESTAMP",
}


@dataclass(frozen=True)
class _Token:
    kind: str  # string, quoted, number, op, punct, word, keyword, end
    text: str
    pos: int


def _tokens(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return [*tokens, _Token("end", "", pos)]
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos] in "'\"":
                raise _syntax(text, pos, f"unclosed quote {text[pos]}")
            raise _syntax(text, pos, f"unexpected character {text[pos]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        start = match.start(kind)
        if kind == "word" and value.upper() in _KEYWORDS:
            kind, value = "keyword", value.upper()
        tokens.append(_Token(kind, value, start))
        pos = match.end()


def _syntax(text: str, pos: int, what: str) -> ConfigError:
    near = f" ({text[pos : pos + 20]!r})" if pos < len(text) else ""
    return ConfigError(f"--where {text!r}: {what} at position {pos + 1}{near}", FIX)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.i]

    def take(self, kind: str, text: str | None = None) -> _Token | None:
        token = self.token
        if token.kind == kind and (text is None or token.text == text):
            self.i += 1
            return token
        return None

    def expect(self, kind: str, text: str, what: str) -> _Token:
        token = self.take(kind, text)
        if token is None:
            raise self.error(f"expected {what}")
        return token

    def error(self, what: str) -> ConfigError:
        token = self.token
        found = "the end of the text" if token.kind == "end" else repr(token.text)
        return _syntax(self.text, token.pos, f"{what}, found {found}")

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise self.error("expected a condition")
        node = self.disjunction()
        if self.token.kind != "end":
            raise self.error("expected AND, OR or the end")
        return node

    def disjunction(self) -> Node:
        items = [self.conjunction()]
        while self.take("keyword", "OR"):
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conjunction(self) -> Node:
        items = [self.negation()]
        while self.take("keyword", "AND"):
            items.append(self.negation())
        return items[0] if len(items) == 1 else And(tuple(items))

    def negation(self) -> Node:
        if self.take("keyword", "NOT"):
            return Not(self.negation())
        return self.predicate()

    def predicate(self) -> Node:
        if self.take("punct", "("):
            node = self.disjunction()
            self.expect("punct", ")", "')'")
            return node
        left = self.operand()
        token = self.token
        if token.kind == "op":
            self.i += 1
            right = self.operand()
            op = "!=" if token.text == "<>" else token.text
            if isinstance(left, Literal) and isinstance(right, Literal):
                raise _syntax(self.text, left.pos, "a comparison needs a column")
            for side in (left, right):
                if isinstance(side, Literal) and side.kind == "null":
                    raise _syntax(
                        self.text, side.pos, "a comparison with NULL is never true: use IS NULL"
                    )
            return Compare(op, left, right)
        if token.kind == "keyword" and token.text in ("IS", "IN", "NOT", "BETWEEN"):
            column = self.column_of(left, token.text)
            if self.take("keyword", "IS"):
                negated = self.take("keyword", "NOT") is not None
                self.expect("keyword", "NULL", "NULL after IS")
                return IsNull(column, negated)
            negated = self.take("keyword", "NOT") is not None
            if self.take("keyword", "IN"):
                self.expect("punct", "(", "'(' after IN")
                values = [self.literal()]
                while self.take("punct", ","):
                    values.append(self.literal())
                self.expect("punct", ")", "')' or ','")
                return InList(column, tuple(values), negated)
            if self.take("keyword", "BETWEEN"):
                low = self.literal()
                self.expect("keyword", "AND", "AND in BETWEEN ... AND ...")
                return Between(column, low, self.literal(), negated)
            raise self.error("expected IN or BETWEEN after NOT")
        if isinstance(left, Column):
            return BoolColumn(left)
        if left.kind == "bool":
            return Const(bool(left.value))
        raise _syntax(self.text, left.pos, "expected a condition, not a lone value")

    def column_of(self, operand: Column | Literal, keyword: str) -> Column:
        if not isinstance(operand, Column):
            raise _syntax(self.text, operand.pos, f"{keyword} needs a column on its left")
        return operand

    def operand(self) -> Column | Literal:
        token = self.token
        if token.kind == "word":
            self.i += 1
            return Column(token.text, token.pos)
        if token.kind == "quoted":
            self.i += 1
            return Column(token.text[1:-1].replace('""', '"'), token.pos)
        return self.literal()

    def literal(self) -> Literal:
        token = self.token
        self.i += 1
        if token.kind == "string":
            return Literal(token.text[1:-1].replace("''", "'"), "string", token.pos)
        if token.kind == "punct" and token.text == "-" and self.token.kind == "number":
            number = self.literal()
            return Literal(-number.value, "number", token.pos)
        if token.kind == "number":
            text = token.text
            is_int = re.fullmatch(r"\d+", text) is not None
            return Literal(int(text) if is_int else float(text), "number", token.pos)
        if token.kind == "keyword" and token.text in ("TRUE", "FALSE"):
            return Literal(token.text == "TRUE", "bool", token.pos)
        if token.kind == "keyword" and token.text == "NULL":
            return Literal(None, "null", token.pos)
        if token.kind == "keyword" and token.text in ("DATE", "TIMESTAMP"):
            quoted = self.token
            if quoted.kind != "string":
                raise self.error(
                    f"expected a quoted value after {token.text} (a column of that name: "
                    f'write "{token.text.lower()}")'
                )
            self.i += 1
            value = quoted.text[1:-1]
            parsed = _date(value) if token.text == "DATE" else _timestamp(value)
            if parsed is None:
                raise _syntax(
                    self.text, quoted.pos, f"{value!r} is not a {token.text.lower()} (ISO 8601)"
                )
            return Literal(parsed, token.text.lower(), token.pos)
        self.i -= 1
        raise self.error("expected a column or a value")


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        return None


def _timestamp(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None


# ----------------------------------------------------------------------------- binding


@dataclass(frozen=True)
class Where:
    """A parsed ``--where``: its text (part of the run key) and its tree."""

    text: str
    node: Node

    def bind(self, schema: pa.Schema) -> pc.Expression:
        """The row filter on ``schema``; an unknown column or a mistyped literal is refused."""
        return _Binder(self.text, schema).node(self.node)

    def may_match(self, partitions: list[dict[str, str | None]], schema: pa.Schema) -> list[bool]:
        """Per file, whether rows of its partition values can be selected (False: skip it).

        Conditions on partition columns only are evaluated on the values (by Arrow, as the rows
        would be); any other may be true, false or unknown. A file is skipped when no outcome
        of those selects a row.
        """
        if not partitions:
            return []
        names = set(schema.names)
        binder = _Binder(self.text, schema)
        try:
            table = pa.table(
                {
                    f.name: pa.array([p.get(f.name) for p in partitions], pa.string()).cast(f.type)
                    for f in schema
                },
                schema=schema,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a value the reader would refuse
            return [True] * len(partitions)  # reading says which; pruning never hides it
        leaves = [
            leaf for leaf in _leaves(self.node) if {c.name for c in _leaf_columns(leaf)} <= names
        ]
        values: dict[str, list[bool | None]] = {}
        if leaves:
            values = (
                ds.dataset(table)
                .to_table(columns={f"l{i}": binder.node(leaf) for i, leaf in enumerate(leaves)})
                .to_pydict()
            )
        return [
            True
            in _outcomes(
                self.node,
                {id(leaf): frozenset({values[f"l{i}"][row]}) for i, leaf in enumerate(leaves)},
            )
            for row in range(len(partitions))
        ]

    def to_iceberg(self, schema: pa.Schema) -> Any:
        """A pyiceberg expression selecting at least the rows this one selects (for pruning);
        parts it cannot say (column against column) are left to the row filter."""
        from pyiceberg.expressions import AlwaysTrue  # the [iceberg] extra

        self.bind(schema)  # refuse unknown columns and mistyped literals first
        return _iceberg(self.node, _Binder(self.text, schema)) or AlwaysTrue()


def parse_where(text: str | None) -> Where | None:
    """Parse ``--where``; None or blank text selects every row."""
    if text is None or not text.strip():
        return None
    return Where(text.strip(), _Parser(text.strip()).parse())


def _leaves(node: Node) -> list[Leaf]:
    if isinstance(node, And | Or):
        return [leaf for item in node.items for leaf in _leaves(item)]
    if isinstance(node, Not):
        return _leaves(node.item)
    if isinstance(node, Const):
        return []
    return [node]


def _leaf_columns(leaf: Leaf) -> list[Column]:
    if isinstance(leaf, Compare):
        return [side for side in (leaf.left, leaf.right) if isinstance(side, Column)]
    return [leaf.column]


_ALL = frozenset({True, False, None})


def _outcomes(node: Node, known: dict[int, frozenset]) -> frozenset:
    """The SQL truth values (True, False, None: unknown) ``node`` can take on some rows, given
    what ``known`` says of some leaves (by ``id``); any other leaf can take any value."""
    if isinstance(node, Const):
        return frozenset({node.value})
    if isinstance(node, Not):
        return frozenset(None if v is None else not v for v in _outcomes(node.item, known))
    if isinstance(node, And | Or):
        combine = _and if isinstance(node, And) else _or
        result = _outcomes(node.items[0], known)
        for item in node.items[1:]:
            other = _outcomes(item, known)
            result = frozenset(combine(a, b) for a, b in product(result, other))
        return result
    return known.get(id(node), _ALL)


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


class _Binder:
    """Build Arrow expressions from the tree, checking columns and literal types on a schema."""

    def __init__(self, text: str, schema: pa.Schema):
        self.text = text
        self.schema = schema

    def node(self, node: Node) -> pc.Expression:
        if isinstance(node, Const):
            return pc.scalar(node.value)
        if isinstance(node, Not):
            return ~self.node(node.item)
        if isinstance(node, And | Or):
            parts = [self.node(item) for item in node.items]
            result = parts[0]
            for part in parts[1:]:
                result = result & part if isinstance(node, And) else result | part
            return result
        if isinstance(node, BoolColumn):
            field = self.field(node.column)
            if not pa.types.is_boolean(field.type):
                raise self.error(
                    node.column,
                    f"column {field.name!r} is {field.type}, not a condition",
                    f"compare it, e.g. {field.name} = ...",
                )
            return pc.field(field.name)
        if isinstance(node, IsNull):
            self.field(node.column)
            expr = pc.field(node.column.name).is_null()
            return ~expr if node.negated else expr
        if isinstance(node, InList):
            field = self.field(node.column)
            values = pa.array([self.value(field, v) for v in node.values], _plain(field.type))
            isin = pc.field(field.name).isin(values)
            # SQL: NULL IN (...) is unknown, so NOT IN does not select it either
            expr = pc.if_else(pc.field(field.name).is_valid(), isin, pa.scalar(None, pa.bool_()))
            return ~expr if node.negated else expr
        if isinstance(node, Between):
            field = self.field(node.column)
            low, high = self.scalar(field, node.low), self.scalar(field, node.high)
            expr = (pc.field(field.name) >= low) & (pc.field(field.name) <= high)
            return ~expr if node.negated else expr
        return self.compare(node)

    def compare(self, node: Compare) -> pc.Expression:
        left, right, op = node.left, node.right, node.op
        if isinstance(left, Literal):  # 5 < x  ->  x > 5
            left, right = right, left
            op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        assert isinstance(left, Column)
        field = self.field(left)
        if isinstance(right, Column):
            other = self.field(right)
            if _kind(field.type) != _kind(other.type) or _kind(field.type) is None:
                raise self.error(
                    right,
                    f"column {field.name!r} is {field.type} and column {other.name!r} is "
                    f"{other.type}: they cannot be compared",
                    "compare columns of the same kind (numbers, strings, dates)",
                )
            rhs: Any = pc.field(other.name)
        else:
            rhs = self.scalar(field, right)
        lhs = pc.field(field.name)
        return {
            "=": lhs == rhs,
            "!=": lhs != rhs,
            "<": lhs < rhs,
            "<=": lhs <= rhs,
            ">": lhs > rhs,
            ">=": lhs >= rhs,
        }[op]

    def field(self, column: Column) -> pa.Field:
        if column.name not in self.schema.names:
            near = [n for n in self.schema.names if n.lower() == column.name.lower()]
            hint = f"did you mean {near[0]!r}?" if near else ""
            raise self.error(
                column,
                f"no column {column.name!r} in the input",
                f"{hint + ' ' if hint else ''}columns: {', '.join(self.schema.names)}",
            )
        return self.schema.field(column.name)

    def scalar(self, field: pa.Field, literal: Literal) -> pa.Scalar:
        return pa.scalar(self.value(field, literal), _plain(field.type))

    def value(self, field: pa.Field, literal: Literal) -> Any:
        """The literal as a value of the column's type, or a ConfigError naming both."""
        kind, value = _kind(field.type), literal.value
        accepted: Any = None
        if literal.kind == "null":
            raise self.error(literal, "NULL is not a value to compare with", "use IS [NOT] NULL")
        if kind == "string" and literal.kind == "string":
            accepted = value
        elif kind == "string" and literal.kind == "date":
            accepted = value.isoformat()  # a hive key such as event_date=2026-01-05 is text
        elif kind == "number" and literal.kind == "number":
            typ = _plain(field.type)
            if pa.types.is_decimal(typ):
                accepted = decimal.Decimal(str(value))
            elif pa.types.is_integer(typ) and isinstance(value, float):
                if not value.is_integer():
                    raise self.error(
                        literal,
                        f"column {field.name!r} is {field.type} but {value} is not an integer",
                        "compare it with an integer",
                    )
                accepted = int(value)
            else:
                accepted = value
        elif kind == "bool" and literal.kind == "bool":
            accepted = value
        elif kind == "date" and literal.kind in ("string", "date"):
            accepted = _date(value) if literal.kind == "string" else value
        elif kind == "timestamp" and literal.kind in ("string", "date", "timestamp"):
            accepted = _timestamp(value) if literal.kind == "string" else value
            if isinstance(accepted, dt.date) and not isinstance(accepted, dt.datetime):
                accepted = dt.datetime.combine(accepted, dt.time())
            typ = _plain(field.type)
            if accepted is not None and typ.tz is not None and accepted.tzinfo is None:
                accepted = accepted.replace(tzinfo=dt.UTC)  # naive text in a zoned column: UTC
            if accepted is not None and typ.tz is None and accepted.tzinfo is not None:
                accepted = accepted.astimezone(dt.UTC).replace(tzinfo=None)
        if accepted is None:
            shown = _shown(literal)
            if kind is None:
                what, fix = (
                    f"column {field.name!r} is {field.type}, which --where cannot compare",
                    "filter on columns of numbers, strings, booleans, dates or timestamps",
                )
            elif kind in ("date", "timestamp") and literal.kind == "string":
                what, fix = (
                    f"column {field.name!r} is {field.type} but {shown} is not a {kind}",
                    f"write it as {'2026-01-05' if kind == 'date' else '2026-01-05 12:00:00'}",
                )
            else:
                example = {
                    "string": "'text'",
                    "number": "42",
                    "bool": "TRUE",
                    "date": "DATE '2026-01-05'",
                    "timestamp": "TIMESTAMP '2026-01-05 12:00:00'",
                }[kind]
                what = (
                    f"column {field.name!r} is {field.type} but {shown} is a "
                    f"{literal.kind if literal.kind != 'bool' else 'boolean'}"
                )
                fix = f"compare it with a {kind} value, e.g. {field.name} = {example}"
            raise self.error(literal, what, fix)
        try:
            pa.scalar(accepted, _plain(field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError) as exc:
            raise self.error(
                literal,
                f"{_shown(literal)} does not fit column {field.name!r} ({field.type}): {exc}",
                "compare it with a value the column's type holds",
            ) from None
        return accepted

    def error(self, at: Column | Literal, what: str, fix: str) -> ConfigError:
        return ConfigError(f"--where {self.text!r}: {what} (position {at.pos + 1})", fix)


def _shown(literal: Literal) -> str:
    if literal.kind == "string":
        return "'" + str(literal.value).replace("'", "''") + "'"
    if literal.kind in ("date", "timestamp"):
        return f"{literal.kind.upper()} '{literal.value.isoformat()}'"
    return str(literal.value).upper() if literal.kind == "bool" else str(literal.value)


def _plain(typ: pa.DataType) -> pa.DataType:
    return typ.value_type if pa.types.is_dictionary(typ) else typ


def _kind(typ: pa.DataType) -> str | None:
    typ = _plain(typ)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        return "string"
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "number"
    if pa.types.is_boolean(typ):
        return "bool"
    if pa.types.is_date(typ):
        return "date"
    if pa.types.is_timestamp(typ):
        return "timestamp"
    return None


def _iceberg(node: Node, binder: _Binder) -> Any:
    """The pyiceberg form of ``node``, or None where it has none (then: every row may match)."""
    from pyiceberg import expressions as ice  # the [iceberg] extra

    if isinstance(node, Const):
        return ice.AlwaysTrue() if node.value else ice.AlwaysFalse()
    if isinstance(node, Not):
        # pyiceberg rewrites NOT (x < 5) as x >= 5, which NaN fails but the negation passes
        floats = [
            leaf
            for leaf in _leaves(node.item)
            for column in _leaf_columns(leaf)
            if pa.types.is_floating(_plain(binder.field(column).type))
        ]
        inner = None if floats else _iceberg(node.item, binder)
        return None if inner is None else ice.Not(inner)
    if isinstance(node, And):
        parts = [p for p in (_iceberg(i, binder) for i in node.items) if p is not None]
        return None if not parts else parts[0] if len(parts) == 1 else ice.And(*parts)
    if isinstance(node, Or):
        parts = [_iceberg(i, binder) for i in node.items]
        if any(p is None for p in parts):
            return None
        return parts[0] if len(parts) == 1 else ice.Or(*parts)
    if isinstance(node, IsNull):
        return (ice.NotNull if node.negated else ice.IsNull)(node.column.name)
    if isinstance(node, BoolColumn):
        return ice.EqualTo(node.column.name, True)

    def value(column: Column, literal: Literal) -> Any:
        v = binder.value(binder.field(column), literal)
        return v.isoformat() if isinstance(v, dt.date) else v  # pyiceberg parses ISO text

    if isinstance(node, InList):
        values = {value(node.column, v) for v in node.values}
        return (ice.NotIn if node.negated else ice.In)(node.column.name, values)
    if isinstance(node, Between):
        name = node.column.name
        if node.negated and pa.types.is_floating(_plain(binder.field(node.column).type)):
            return None  # as for NOT above: NaN is NOT BETWEEN anything
        inside = ice.And(
            ice.GreaterThanOrEqual(name, value(node.column, node.low)),
            ice.LessThanOrEqual(name, value(node.column, node.high)),
        )
        return ice.Not(inside) if node.negated else inside
    left, right, op = node.left, node.right, node.op
    if isinstance(left, Literal):
        left, right = right, left
        op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
    if isinstance(right, Column):
        return None
    assert isinstance(left, Column)
    build = {
        "=": ice.EqualTo,
        "!=": ice.NotEqualTo,
        "<": ice.LessThan,
        "<=": ice.LessThanOrEqual,
        ">": ice.GreaterThan,
        ">=": ice.GreaterThanOrEqual,
    }[op]
    return build(left.name, value(left, right))


def prune(
    where: Where, entries: list[T], partitions: list[dict[str, str | None]], schema: pa.Schema
) -> list[T]:
    """The entries (data files) whose partition values may hold selected rows, in order.

    When none may, the first is kept: its schema is the output's, and its rows are all filtered
    out as they are read, so the run commits an empty output as for an empty input.
    """
    if not schema.names or not entries:
        return entries
    keep = where.may_match(partitions, schema)
    kept = [entry for entry, ok in zip(entries, keep, strict=True) if ok]
    return kept or entries[:1]


def apply_where(
    where: Where | None,
    files: list[InputFile],
    schema: pa.Schema,
    partition_schema: pa.Schema,
    pruned: int,
) -> tuple[list[InputFile], dict[str, Any]]:
    """The files with the row groups their statistics cannot rule out, and ``InputPlan``'s
    --where fields: the text, the row filter bound to the plan's schema (an unknown column or a
    mistyped literal is refused here, before any row is read), the files and row groups pruned.
    """
    if where is None:
        return files, {}
    row_filter = where.bind(schema)
    files, groups = _prune_row_groups(where, files, schema, set(partition_schema.names))
    fields = {
        "where": where.text,
        "row_filter": row_filter,
        "files_pruned": pruned,
        "row_groups_pruned": groups,
    }
    return files, fields


def _prune_row_groups(
    where: Where, files: list[InputFile], schema: pa.Schema, partitions: set[str]
) -> tuple[list[InputFile], int]:
    """Drop row groups whose Parquet statistics (min, max, null count) prove no row matches."""
    binder = _Binder(where.text, schema)
    leaves = _statistics_leaves(where, schema, partitions)
    if not leaves:
        return files, 0
    names = {_leaf_columns(leaf)[0].name for leaf in leaves}
    result, pruned = [], 0
    for file in files:
        own = file.schema
        usable = {
            n
            for n in names
            if n in own.names
            and not pa.types.is_nested(own.field(n).type)
            and not (pa.types.is_timestamp(own.field(n).type) and own.field(n).type.unit == "ns")
        }
        kept = []
        for index in file.row_group_indices:
            group = file.metadata.row_group(index)
            stats: dict[str, Any] = {}
            for j in range(group.num_columns):
                column = group.column(j)
                if column.path_in_schema in usable and column.is_stats_set:
                    stats[column.path_in_schema] = column.statistics
            if _may_match(where, binder, leaves, stats, group.num_rows):
                kept.append(index)
        if len(kept) < file.num_row_groups:
            pruned += file.num_row_groups - len(kept)
            file = dataclasses.replace(file, row_groups=tuple(kept))
        result.append(file)
    return result, pruned


@dataclass(frozen=True)
class Statistics:
    """A data file's column statistics as a table's log gives them (Delta's add actions), read
    as a Parquet column chunk's are (``pyarrow.parquet.Statistics``)."""

    min: Any
    max: Any
    null_count: int | None

    @property
    def has_min_max(self) -> bool:
        return self.min is not None and self.max is not None

    @property
    def has_null_count(self) -> bool:
        return self.null_count is not None


def prune_by_statistics(
    where: Where,
    entries: list[T],
    statistics: list[dict[str, Statistics]],
    rows: list[int | None],
    schema: pa.Schema,
    partitions: set[str],
) -> list[T]:
    """The entries whose statistics do not prove that no row matches (at least the first one,
    as in ``prune``)."""
    binder = _Binder(where.text, schema)
    leaves = _statistics_leaves(where, schema, partitions)
    if not leaves or not entries:
        return entries
    kept = [
        entry
        for entry, stats, count in zip(entries, statistics, rows, strict=True)
        if _may_match(where, binder, leaves, stats, count)
    ]
    return kept or entries[:1]


def _statistics_leaves(where: Where, schema: pa.Schema, partitions: set[str]) -> list[Leaf]:
    """Conditions on one data column: what column statistics can speak for."""
    return [
        leaf
        for leaf in _leaves(where.node)
        if len(columns := _leaf_columns(leaf)) == 1
        and columns[0].name in schema.names
        and columns[0].name not in partitions
    ]


def _may_match(
    where: Where, binder: _Binder, leaves: list[Leaf], stats: dict[str, Any], rows: int | None
) -> bool:
    """Whether some row described by these statistics (column name -> statistics) may match."""
    known = {}
    for leaf in leaves:
        name = _leaf_columns(leaf)[0].name
        if name in stats:
            floating = pa.types.is_floating(_plain(binder.schema.field(name).type))
            known[id(leaf)] = _possible(leaf, binder, stats[name], rows, floating)
    return True in _outcomes(where.node, known)


def _possible(
    leaf: Leaf, binder: _Binder, stats: Any, rows: int | None, floating: bool
) -> frozenset:
    """The truth values ``leaf`` may take on rows with these statistics."""
    nulls = stats.null_count if stats.has_null_count else None
    has_null = nulls is None or nulls > 0
    if nulls is not None and rows is not None and nulls >= rows:  # all null
        if isinstance(leaf, IsNull):
            return frozenset({not leaf.negated})
        return frozenset({None})
    if isinstance(leaf, IsNull):
        values = {True, False} if has_null else {False}
        return frozenset(v != leaf.negated for v in values)
    if not stats.has_min_max:
        return _ALL
    lo, hi = stats.min, stats.max
    negated = False
    try:
        if lo != lo or hi != hi:  # NaN statistics: say nothing
            return _ALL
        if isinstance(leaf, BoolColumn):
            t, f = lo <= True <= hi, lo <= False <= hi
        elif isinstance(leaf, Compare):
            column, literal, op = leaf.left, leaf.right, leaf.op
            if isinstance(column, Literal):
                column, literal = literal, column
                op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
            assert isinstance(column, Column) and isinstance(literal, Literal)
            v = binder.value(binder.field(column), literal)
            t, f = _compare_possible(op, lo, hi, v)
            negated = op == "!="
        elif isinstance(leaf, InList):
            field = binder.field(leaf.column)
            values = [binder.value(field, v) for v in leaf.values]
            t = any(lo <= v <= hi for v in values)
            f = not (lo == hi and lo in values)
            if leaf.negated:
                t, f = f, t
            negated = leaf.negated
        else:
            assert isinstance(leaf, Between)
            field = binder.field(leaf.column)
            low, high = binder.value(field, leaf.low), binder.value(field, leaf.high)
            t = hi >= low and lo <= high
            f = not (lo >= low and hi <= high)
            if leaf.negated:
                t, f = f, t
            negated = leaf.negated
    except TypeError:  # statistics of another kind than the literal: say nothing
        return _ALL
    if floating:  # NaN is left out of statistics: it fails comparisons, passes their negations
        t, f = t or negated, f or not negated
    possible = {v for v, ok in ((True, t), (False, f), (None, has_null)) if ok}
    return frozenset(possible) or _ALL


def _compare_possible(op: str, lo: Any, hi: Any, v: Any) -> tuple[bool, bool]:
    """Whether some value in [lo, hi] makes ``x op v`` true, and whether some makes it false."""
    return {
        "=": (lo <= v <= hi, not lo == v == hi),
        "!=": (not lo == v == hi, lo <= v <= hi),
        "<": (lo < v, hi >= v),
        "<=": (lo <= v, hi > v),
        ">": (hi > v, lo <= v),
        ">=": (hi >= v, lo < v),
    }[op]
