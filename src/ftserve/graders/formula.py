"""The multi grader's `calculate_output`: arithmetic over sub-grader scores, parsed by a small evaluator.

The grammar is the one OpenAI documents: numbers, names of sub-graders, `+ - * / ^` (power, right
associative), parentheses, unary minus, and the functions min, max, abs, floor, ceil, exp, sqrt and log.
Nothing is handed to `eval`: a formula is parsed into a tree once, checked against the grader names it may
use, and evaluated on each sample's scores.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil,
    "exp": math.exp, "sqrt": math.sqrt, "log": math.log,
}
# Functions that take exactly one argument; min and max take one or more.
UNARY = {"abs", "floor", "ceil", "exp", "sqrt", "log"}
MAX_LENGTH = 1000

_TOKEN = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+)|([A-Za-z_][A-Za-z0-9_]*)|(\*\*|[-+*/^(),]))")


class FormulaError(ValueError):
    """The formula cannot be parsed, names something it may not, or cannot be computed for these scores."""


@dataclass(frozen=True)
class Formula:
    source: str
    tree: tuple[object, ...]
    names: frozenset[str]

    def __call__(self, scores: dict[str, float]) -> float:
        try:
            return float(_evaluate(self.tree, scores))
        except (ValueError, ZeroDivisionError, OverflowError) as error:
            raise FormulaError(f"calculate_output could not be computed: {error}") from error


def parse(source: str, allowed: set[str]) -> Formula:
    """`source` parsed, every name in it one of `allowed` (the sub-graders' names) or a function."""
    if len(source) > MAX_LENGTH:
        raise FormulaError(f"calculate_output is longer than {MAX_LENGTH} characters")
    tokens = _tokens(source)
    parser = _Parser(tokens)
    tree = parser.expression()
    if parser.at < len(tokens):
        raise FormulaError(f"calculate_output: unexpected {tokens[parser.at][1]!r}")
    unknown = parser.names - allowed
    if unknown:
        raise FormulaError(f"calculate_output names {', '.join(sorted(unknown))}, which is not a grader here "
                           f"(graders: {', '.join(sorted(allowed)) or 'none'})")
    return Formula(source, tree, frozenset(parser.names))


def _tokens(source: str) -> list[tuple[str, str]]:
    tokens, at = [], 0
    while at < len(source):
        if source[at:].strip() == "":
            break
        match = _TOKEN.match(source, at)
        if match is None:
            raise FormulaError(f"calculate_output: cannot read {source[at:].strip()[:20]!r}")
        number, name, symbol = match.groups()
        tokens.append(("number", number) if number else ("name", name) if name else ("symbol", "^" if symbol == "**" else symbol))
        at = match.end()
    if not tokens:
        raise FormulaError("calculate_output is empty")
    return tokens


class _Parser:
    """Recursive descent: expression := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
    unary := ('-'|'+') unary | power; power := atom ('^' unary)?; atom := number | name | call | '(' expression ')'.
    As in Python, -b ^ 2 is -(b ^ 2), and ^ groups to the right."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.at = 0
        self.names: set[str] = set()
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, symbol: str) -> bool:
        if self.peek() == ("symbol", symbol):
            self.at += 1
            return True
        return False

    def expression(self) -> tuple[object, ...]:
        self.depth += 1
        if self.depth > 100:
            raise FormulaError("calculate_output is nested too deeply")
        left = self.term()
        while (token := self.peek()) in (("symbol", "+"), ("symbol", "-")):
            self.at += 1
            left = ("op", token[1], left, self.term())  # type: ignore[index]
        self.depth -= 1
        return left

    def term(self) -> tuple[object, ...]:
        left = self.unary()
        while (token := self.peek()) in (("symbol", "*"), ("symbol", "/")):
            self.at += 1
            left = ("op", token[1], left, self.unary())  # type: ignore[index]
        return left

    def unary(self) -> tuple[object, ...]:
        if self.take("-"):
            return ("neg", self.unary())
        if self.take("+"):
            return self.unary()
        return self.power()

    def power(self) -> tuple[object, ...]:
        base = self.atom()
        if self.take("^"):
            return ("op", "^", base, self.unary())
        return base

    def atom(self) -> tuple[object, ...]:
        token = self.peek()
        if token is None:
            raise FormulaError("calculate_output ends where a value was expected")
        kind, text = token
        self.at += 1
        if kind == "number":
            return ("number", float(text))
        if kind == "symbol" and text == "(":
            inner = self.expression()
            if not self.take(")"):
                raise FormulaError("calculate_output: a '(' is not closed")
            return inner
        if kind == "name" and self.peek() == ("symbol", "("):
            if text not in FUNCTIONS:
                raise FormulaError(f"calculate_output: {text}() is not a function here "
                                   f"(functions: {', '.join(sorted(FUNCTIONS))})")
            self.at += 1
            arguments = [self.expression()]
            while self.take(","):
                arguments.append(self.expression())
            if not self.take(")"):
                raise FormulaError(f"calculate_output: {text}( is not closed")
            if text in UNARY and len(arguments) != 1:
                raise FormulaError(f"calculate_output: {text}() takes one argument")
            return ("call", text, tuple(arguments))
        if kind == "name":
            self.names.add(text)
            return ("name", text)
        raise FormulaError(f"calculate_output: unexpected {text!r}")


def _evaluate(node: tuple[object, ...], scores: dict[str, float]) -> float:
    kind = node[0]
    if kind == "number":
        return node[1]  # type: ignore[return-value]
    if kind == "name":
        return scores[node[1]]  # type: ignore[index]
    if kind == "neg":
        return -_evaluate(node[1], scores)  # type: ignore[arg-type]
    if kind == "call":
        return float(FUNCTIONS[node[1]](*(_evaluate(a, scores) for a in node[2])))  # type: ignore[index, union-attr, attr-defined]
    _, op, left, right = node
    a, b = _evaluate(left, scores), _evaluate(right, scores)  # type: ignore[arg-type]
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    result = a ** b
    if isinstance(result, complex):
        raise ValueError(f"{a} ^ {b} is not a real number")
    return result
