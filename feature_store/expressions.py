"""Conditions over a table's columns, such as a binary task's label (`rating >= 4`, `clicked == 1`,
`dwell_s > 30 and not bounced`), evaluated with pyarrow.compute.

The text is parsed with Python's own parser and only this subset is accepted: comparisons
(`==`, `!=`, `<`, `<=`, `>`, `>=`, chained as in `1 <= stars < 4`), `in` / `not in` a list of
literals, `and`, `or`, `not`, parentheses, column names, and number, string and boolean literals.
A column whose name is not an identifier is written in backticks (`` `Recommended IND` == 1 ``),
as in pandas' `query`. Nothing is ever executed as Python: the parsed tree is checked node by node
and mapped to compute functions.

Nulls follow SQL: a comparison with a missing value is missing, `and` / `or` use three-valued
logic (`false and null` is false), so a condition is missing only where its inputs leave it open.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

_QUOTED = re.compile(r"`([^`]*)`")
_COMPARISONS: dict[type[ast.cmpop], tuple[str, Callable[..., Any]]] = {
    ast.Eq: ("==", pc.equal), ast.NotEq: ("!=", pc.not_equal), ast.Lt: ("<", pc.less),
    ast.LtE: ("<=", pc.less_equal), ast.Gt: (">", pc.greater), ast.GtE: (">=", pc.greater_equal),
}


class ExpressionError(ValueError):
    """An expression that cannot be parsed, or that does not fit the columns it reads."""


def nearest(name: str, choices: list[str]) -> str:
    """`; did you mean 'x'?` for the closest of `choices`, or nothing when none is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Expression:
    """A parsed condition: `columns` are the column names it reads, in order of first use."""

    text: str
    tree: ast.expr
    names: dict[str, str]  # placeholder identifier -> column name written in backticks

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Name):
                seen.setdefault(self._column(node), None)
        return list(seen)

    def _column(self, node: ast.Name) -> str:
        return self.names.get(node.id, node.id)

    def show(self, node: ast.expr) -> str:
        """A part of the expression as the user wrote it (backticked names included)."""
        text = ast.unparse(node)
        for placeholder, column in self.names.items():
            text = text.replace(placeholder, f"`{column}`")
        return text

    def check(self, schema: pa.Schema) -> None:
        """Raises ExpressionError when a column is unknown (naming the nearest one) or compared
        with a value of another kind (a number with a string, ...)."""
        for column in self.columns:
            if column not in schema.names:
                raise ExpressionError(f"{self.text!r}: unknown column {column!r}{nearest(column, schema.names)} "
                                      f"(columns: {schema.names})")
        self._kind(self.tree, schema, boolean=True)

    def _kind(self, node: ast.expr, schema: pa.Schema, boolean: bool = False) -> str:
        """'number', 'string' or 'bool' of a value node; checks comparisons on the way."""
        if isinstance(node, ast.Name):
            kind = _kind_of_type(schema.field(self._column(node)).type)
            if kind is None:
                raise ExpressionError(f"{self.text!r}: column {self._column(node)!r} holds "
                                      f"{schema.field(self._column(node)).type}, which a condition cannot compare; "
                                      "expected numbers, strings or booleans")
            if boolean and kind != "bool":
                raise ExpressionError(f"{self.text!r}: column {self._column(node)!r} holds {kind}s, not a condition; "
                                      f"compare it, e.g. `{self._column(node)} == 1`")
            return kind
        if isinstance(node, ast.Constant | ast.UnaryOp) and not _is_not(node):
            return _kind_of_literal(_literal(node))
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self._kind(value, schema, boolean=True)
            return "bool"
        if _is_not(node):
            self._kind(node.operand, schema, boolean=True)
            return "bool"
        if isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators, strict=True):
                left_kind = self._kind(left, schema)
                if isinstance(op, ast.In | ast.NotIn):
                    kinds = {_kind_of_literal(v) for v in _literal(right)}
                else:
                    kinds = {self._kind(right, schema)}
                if kinds - {left_kind}:
                    raise ExpressionError(f"{self.text!r}: {self.show(left)} ({left_kind}) is compared with "
                                          f"{self.show(right)} ({', '.join(sorted(kinds))})")
                left = right
            return "bool"
        raise AssertionError(f"unchecked node {ast.dump(node)}")  # parse_expression admits no other node

    def evaluate(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        """The condition on every row of `table` (booleans; null where an input leaves it open)."""
        return self._evaluate(self.tree, table)

    def _evaluate(self, node: ast.expr, table: pa.Table):
        if isinstance(node, ast.Name):
            return table.column(self._column(node))
        if isinstance(node, ast.Constant | ast.UnaryOp) and not _is_not(node):
            return pa.scalar(_literal(node))
        if _is_not(node):
            return pc.invert(self._evaluate(node.operand, table))
        if isinstance(node, ast.BoolOp):
            combine = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
            result = self._evaluate(node.values[0], table)
            for value in node.values[1:]:
                result = combine(result, self._evaluate(value, table))
            return result
        assert isinstance(node, ast.Compare)
        result, left = None, node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            values = self._evaluate(left, table)
            if isinstance(op, ast.In | ast.NotIn):
                found = pc.is_in(values, value_set=pa.array(_literal(right)))
                found = pc.if_else(pc.is_null(values), pa.scalar(None, pa.bool_()), found)
                part = pc.invert(found) if isinstance(op, ast.NotIn) else found
            else:
                part = _COMPARISONS[type(op)][1](values, self._evaluate(right, table))
            result = part if result is None else pc.and_kleene(result, part)
            left = right
        return result


def parse_expression(text: str) -> Expression:
    """A checked parse of `text` (see the module docstring); ExpressionError says what is not allowed."""
    names: dict[str, str] = {}

    def placeholder(match: re.Match) -> str:
        names[f"__column_{len(names)}__"] = match[1]
        return f" __column_{len(names) - 1}__ "

    source = _QUOTED.sub(placeholder, text)
    if "`" in source:
        raise ExpressionError(f"{text!r}: a backtick is not closed; write a column name with spaces as `name`")
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError as err:
        raise ExpressionError(f"{text!r}: not a condition ({err.msg}); expected comparisons of columns with "
                              "values joined by and / or, e.g. `rating >= 4`") from None
    expression = Expression(text, tree, names)
    _admit(tree, expression)
    return expression


def _admit(node: ast.expr, expression: Expression, boolean: bool = True) -> None:
    """Refuses every node outside the subset, naming it. `boolean`: a condition is expected here
    (else a value: a column or a literal)."""
    text = expression.text
    if isinstance(node, ast.BoolOp) and boolean:
        for value in node.values:
            _admit(value, expression)
    elif _is_not(node) and boolean:
        _admit(node.operand, expression)
    elif isinstance(node, ast.Compare) and boolean:
        memberships = [isinstance(op, ast.In | ast.NotIn) for op in node.ops]
        if any(memberships) and len(node.ops) > 1:
            raise ExpressionError(f"{text!r}: `in` cannot be chained with another comparison; join them with `and`")
        _admit(node.left, expression, boolean=False)
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(right, ast.List | ast.Tuple | ast.Set) or not right.elts:
                    raise ExpressionError(f"{text!r}: `in` takes a list of values, e.g. `country in ['FR', 'DE']`")
                for element in right.elts:
                    _literal_or_error(element, expression)
            elif type(op) in _COMPARISONS:
                _admit(right, expression, boolean=False)
            else:
                raise ExpressionError(f"{text!r}: {expression.show(node)!r} uses a comparison that is not supported; "
                                      f"use {', '.join(symbol for symbol, _ in _COMPARISONS.values())}, in, not in")
        operands = [node.left] + ([] if any(memberships) else node.comparators)
        if not any(isinstance(v, ast.Name) for v in operands):
            raise ExpressionError(f"{text!r}: {expression.show(node)!r} compares no column")
    elif isinstance(node, ast.Name):
        pass  # a column: a boolean one stands alone, any other is compared (checked against the schema)
    elif not boolean:
        _literal_or_error(node, expression)
    else:
        raise ExpressionError(f"{text!r}: {expression.show(node)!r} is not a condition; expected comparisons of columns "
                              "with values (==, !=, <, <=, >, >=, in), joined by and / or / not")


def _is_not(node: ast.expr) -> bool:
    return isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)


def _literal(node: ast.expr) -> Any:
    return ast.literal_eval(node)


def _literal_or_error(node: ast.expr, expression: Expression) -> None:
    signed = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd)
    if isinstance(node, ast.Constant) or signed and isinstance(node.operand, ast.Constant):
        try:
            value = _literal(node)
        except (ValueError, TypeError):
            value = None
        if isinstance(value, bool | int | float | str) and not (signed and isinstance(value, bool)):
            return
    raise ExpressionError(f"{expression.text!r}: {expression.show(node)!r} is neither a column nor a number, string or boolean "
                          "literal (write a column name with spaces in backticks: `my column`)")


def _kind_of_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else "string"


def _kind_of_type(dtype: pa.DataType) -> str | None:
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return "number"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or (
            pa.types.is_dictionary(dtype) and pa.types.is_string(dtype.value_type)):
        return "string"
    return None
