"""Row selection for ``--holdout``: a condition on ladder-table columns that runs no code.

    params > 3e9
    params_total > 5e8 and not (params_total < 2e9 and token_multiplier == 20)
    model in ['gpt2-xl', 'opt-1.3b']
    flops / (6 * params) >= 20 * params or `odd column` != 'x'

Grammar (Python expression syntax, parsed with :mod:`ast` in eval mode; no other node is accepted)::

    condition := condition and condition | condition or condition | not condition | ( condition )
               | condition & condition | condition | condition | ~condition    (pandas' spelling)
               | value OP value [OP value ...]       OP: == != < <= > >=   (chains: 1e6 < params < 1e9)
               | value in [literal, ...] | value not in [literal, ...]       (a list or tuple)
    value     := column | literal | value + value | value - value | value * value | value / value
               | value ** value | -value | +value | ( value )              (numbers only)
    column    := identifier | `any name in backticks`
    literal   := number | 'text' | "text" | True | False

Everything else — ``@`` names, attribute access, calls, subscripts, lambdas, comprehensions,
f-strings, ``:=``, ``is``, conditional expressions — is rejected before anything is evaluated, and
the message quotes the offending part. The mask is computed here with pandas' vectorised operators;
the text never reaches ``DataFrame.query`` or ``pandas.eval`` (whose ``@`` resolves Python names, so
a query there can run any code).
"""

from __future__ import annotations

import ast
import operator

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError

MAX_LENGTH = 10_000
COMPARISONS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
               ast.Gt: operator.gt, ast.GtE: operator.ge}
ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow}
ALLOWED = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Invert, ast.USub, ast.UAdd,
           ast.Compare, ast.In, ast.NotIn, ast.BinOp, ast.BitAnd, ast.BitOr, ast.Name, ast.Load, ast.Constant,
           ast.List, ast.Tuple, *COMPARISONS, *ARITHMETIC)
FORBIDDEN = {ast.Attribute: "attribute access", ast.Call: "a function call", ast.Subscript: "indexing",
             ast.Lambda: "a lambda", ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
             ast.DictComp: "a comprehension", ast.GeneratorExp: "a comprehension", ast.JoinedStr: "an f-string",
             ast.FormattedValue: "an f-string", ast.NamedExpr: "an assignment (:=)", ast.IfExp: "if/else",
             ast.Starred: "unpacking (*)", ast.Dict: "a dict", ast.Set: "a set", ast.Is: "'is'",
             ast.IsNot: "'is not'", ast.MatMult: "operator '@'", ast.Slice: "a slice", ast.Mod: "operator '%'",
             ast.FloorDiv: "operator '//'", ast.LShift: "operator '<<'", ast.RShift: "operator '>>'",
             ast.BitXor: "operator '^'"}


class QueryError(CapscaleError):
    """A query outside the grammar above, or one that cannot be evaluated on this table."""


def string_end(text: str, start: int) -> int:
    """Index just past the string literal opening at ``start`` (its prefix letters already passed)."""
    quote = text[start:start + 3] if text[start:start + 3] in ("'''", '"""') else text[start]
    i = start + len(quote)
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text.startswith(quote, i):
            return i + len(quote)
        else:
            i += 1
    return len(text)  # unterminated: ast.parse reports it


def replace_backticks(text: str) -> tuple[str, dict[str, str]]:
    """``text`` with each `quoted name` outside string literals replaced by a placeholder identifier,
    and the placeholders' names; an ``@`` outside strings is refused here with a clear message."""
    out, names, i = [], {}, 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            end = string_end(text, i)
            out.append(text[i:end])
            i = end
        elif c == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise QueryError(f"unclosed backtick at column {i + 1}")
            if end == i + 1:
                raise QueryError(f"empty backticked column name at column {i + 1}")
            key = f"_bq{len(names)}_"
            while key in text:
                key += "_"
            names[key] = text[i + 1:end]
            out.append(key)
            i = end + 1
        elif c == "@":
            raise QueryError(f"'@' (a reference to a Python variable) is not allowed: {text[i:i + 40]!r}")
        else:
            out.append(c)
            i += 1
    return "".join(out), names


def parse(query: str) -> tuple[ast.Expression, str, dict[str, str]]:
    """The checked syntax tree (only ALLOWED nodes and literal constants), the parsed text, backticked names."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("empty query")
    if len(query) > MAX_LENGTH:
        raise QueryError(f"query longer than {MAX_LENGTH} characters")
    text, names = replace_backticks(query)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        where = f" (column {e.offset})" if e.offset and e.offset > 0 else ""
        raise QueryError(f"not a valid expression: {e.msg}{where}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise QueryError(f"not a valid expression: {e}") from None
    text = text.strip()
    for parent in ast.walk(tree):
        for node in ast.iter_child_nodes(parent):
            if not isinstance(node, ALLOWED):
                what = FORBIDDEN.get(type(node), type(node).__name__)
                where = node if hasattr(node, "lineno") else parent  # operators carry no position: quote their use
                raise QueryError(f"{what} is not allowed: {show(where, text, names)}")
            if isinstance(node, ast.Constant) and not isinstance(node.value, (bool, int, float, str)):
                raise QueryError(f"literal {node.value!r} is not allowed (numbers, 'text', True, False)")
    return tree, text, names


def show(node: ast.AST, text: str, names: dict[str, str]) -> str:
    """The source text of ``node`` as the user wrote it (backticked names restored)."""
    segment = ast.get_source_segment(text, node) if hasattr(node, "lineno") else None
    if segment is None:
        return repr(type(node).__name__)
    for key, name in names.items():
        segment = segment.replace(key, f"`{name}`")
    return repr(segment)


def kind(value) -> str:
    """'bool', 'number', 'text' or 'other', for a column or a scalar."""
    if isinstance(value, pd.Series):
        if pd.api.types.is_bool_dtype(value):
            return "bool"
        if pd.api.types.is_numeric_dtype(value):
            return "number"
        if pd.api.types.is_string_dtype(value):
            return "text"
        inferred = pd.api.types.infer_dtype(value, skipna=True)  # object columns: text with gaps, say
        return "text" if inferred in ("string", "empty") else "other"
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, float, np.number)):
        return "number"
    return "text" if isinstance(value, str) else "other"


class Evaluator:
    """Evaluates a checked tree against one table: columns become Series, literals scalars."""

    def __init__(self, df: pd.DataFrame, text: str, names: dict[str, str]):
        self.df, self.text, self.names = df, text, names

    def show(self, node) -> str:
        return show(node, self.text, self.names)

    def literal(self, node: ast.Constant):
        if isinstance(node.value, (bool, str)):
            return node.value
        try:
            return np.float64(float(node.value))  # numpy floats overflow to inf instead of growing huge ints
        except OverflowError:
            raise QueryError(f"number too large: {self.show(node)}") from None

    def column(self, node: ast.Name) -> pd.Series:
        name = self.names.get(node.id, node.id)
        if name not in self.df.columns:
            columns = [str(c) for c in self.df.columns]
            shown = ", ".join(columns[:25]) + (", ..." if len(columns) > 25 else "")
            raise QueryError(f"unknown column {name!r} (columns: {shown}); quote text values, e.g. model == 'x'")
        return self.df[name]

    def value(self, node):
        """A column, a literal, arithmetic on numbers, or a condition (which is a boolean value)."""
        if isinstance(node, ast.Name):
            return self.column(node)
        if isinstance(node, ast.Constant):
            return self.literal(node)
        if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
            left, right = self.value(node.left), self.value(node.right)
            for side, part in ((left, node.left), (right, node.right)):
                if kind(side) != "number":
                    raise QueryError(f"arithmetic needs numbers, {self.show(part)} is {kind(side)}")
            with np.errstate(all="ignore"):
                return ARITHMETIC[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.value(node.operand)
            if kind(operand) != "number":
                raise QueryError(f"a sign needs a number, {self.show(node.operand)} is {kind(operand)}")
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, (ast.List, ast.Tuple)):
            raise QueryError(f"a list is only allowed after 'in' / 'not in': {self.show(node)}")
        return self.condition(node)

    def condition(self, node):
        """A boolean Series (or a bool) for and/or/not, &, |, ~, comparisons and membership."""
        if isinstance(node, ast.BoolOp) or (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd,
                                                                                                 ast.BitOr))):
            parts = node.values if isinstance(node, ast.BoolOp) else [node.left, node.right]
            combine = operator.and_ if isinstance(node.op, (ast.And, ast.BitAnd)) else operator.or_
            result = self.boolean(parts[0])
            for part in parts[1:]:
                result = combine(result, self.boolean(part))
            return result
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            operand = self.boolean(node.operand)
            return ~operand if isinstance(operand, pd.Series) else not operand
        if isinstance(node, ast.Compare):
            return self.compare(node)
        return self.value(node)

    def boolean(self, node):
        result = self.condition(node)
        if kind(result) != "bool":
            raise QueryError(f"{self.show(node)} is not a condition (compare it, e.g. params > 1e9)")
        return result

    def members(self, node) -> list:
        if not isinstance(node, (ast.List, ast.Tuple)):
            raise QueryError(f"'in' needs a list of literals, e.g. model in ['a', 'b']; got {self.show(node)}")
        values = []
        for element in node.elts:
            if isinstance(element, ast.UnaryOp) and isinstance(element.op, (ast.USub, ast.UAdd)):
                value = self.value(element)
            elif isinstance(element, ast.Constant):
                value = self.literal(element)
            else:
                raise QueryError(f"'in' lists hold literals only, not {self.show(element)}")
            values.append(value)
        return values

    def compare(self, node: ast.Compare):
        left, left_node, result = self.value(node.left), node.left, None
        for op, right_node in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                if len(node.ops) > 1:
                    raise QueryError(f"'in' cannot be chained with other comparisons: {self.show(node)}")
                values = self.members(right_node)
                test = left.isin(values) if isinstance(left, pd.Series) else left in values
                if isinstance(op, ast.NotIn):
                    test = ~test if isinstance(test, pd.Series) else not test
                right = None
            else:
                right = self.value(right_node)
                kinds = {kind(left), kind(right)}
                if len(kinds) > 1 or kinds & {"other"} or (kinds == {"bool"} and type(op) not in (ast.Eq, ast.NotEq)):
                    raise QueryError(f"cannot compare {self.show(left_node)} ({kind(left)}) with "
                                     f"{self.show(right_node)} ({kind(right)})")
                try:
                    test = COMPARISONS[type(op)](left, right)
                except TypeError as e:
                    raise QueryError(f"cannot compare {self.show(left_node)} with {self.show(right_node)}: {e}") from None
            result = test if result is None else result & test
            left, left_node = right, right_node
        return result


def query_mask(df: pd.DataFrame, query: str) -> pd.Series:
    """Boolean mask (aligned with ``df``) of the rows matching ``query``; QueryError outside the grammar."""
    tree, text, names = parse(query)
    try:
        result = Evaluator(df, text, names).condition(tree.body)
    except RecursionError:
        raise QueryError("query nested too deeply") from None
    if kind(result) != "bool":
        raise QueryError(f"the query is not a condition: it computes {kind(result)} values "
                         "(compare them, e.g. params > 1e9)")
    if not isinstance(result, pd.Series):
        result = pd.Series(bool(result), index=df.index)
    return result.astype(bool)
