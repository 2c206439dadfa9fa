"""The grader pieces that need no model: templates, string_check, and the multi grader's formula."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from ftserve.graders.formula import FormulaError, parse
from ftserve.graders.string_check import string_check
from ftserve.graders.templates import Sample, TemplateError, render

ITEM = {"answer": "Paris", "meta": {"tags": ["geo", "capital"]}}


def test_templates_fill_from_the_sample_and_the_item() -> None:
    sample = Sample('{"city": "Paris", "n": 3}')
    assert render("{{ item.answer }} / {{item.meta.tags.1}}", sample, ITEM) == "Paris / capital"
    assert render("{{sample.output_json.city}} {{sample.output_json.n}}", sample, ITEM) == "Paris 3"
    assert render("{{sample.output_text}}", sample, ITEM) == sample.output_text
    for bad in ("{{item.missing}}", "{{sample.output_json.city.x}}", "{{sample.other}}", "{{other.x}}"):
        with pytest.raises(TemplateError):
            render(bad, sample, ITEM)


@pytest.mark.parametrize(("operation", "output", "score"), [
    ("eq", "Paris", 1.0), ("eq", "paris", 0.0), ("ne", "Lyon", 1.0), ("ne", "Paris", 0.0),
    ("like", "It is Paris.", 1.0), ("like", "It is PARIS.", 0.0), ("ilike", "It is PARIS.", 1.0), ("ilike", "Rome", 0.0),
])
def test_string_check_compares_as_asked(operation: str, output: str, score: float) -> None:
    grader = {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
              "operation": operation}
    assert string_check(grader, Sample(output), ITEM) == score


def test_formulas_follow_arithmetic_precedence_and_the_documented_functions() -> None:
    scores = {"a": 0.5, "b": 2.0, "c": 9.0}
    cases = {
        "0.5 * a + 0.5 * b": 1.25, "a + b * 2": 4.5, "(a + b) * 2": 5.0, "b ^ 3 ^ 2": 2.0 ** 9, "-b ^ 2": -4.0,
        "min(a, b, c) + max(a, b)": 2.5, "sqrt(c) + abs(-a) + floor(2.7) + ceil(2.1)": 3 + 0.5 + 2 + 3,
        "log(exp(b))": 2.0, "c / b - 1": 3.5, "b ** 2": 4.0,
    }
    for source, expected in cases.items():
        assert math.isclose(parse(source, set(scores))(scores), expected), source


@pytest.mark.parametrize("source", [
    "a +", "(a + b", "a b", "unknown * 2", "__import__('os')", "a.__class__", "eval(a)", "min()", "sqrt(a, b)",
    "", "a; b", "[a]", "'a'",
])
def test_formulas_outside_the_grammar_are_refused_when_parsed(source: str) -> None:
    with pytest.raises(FormulaError):
        parse(source, {"a", "b"})


def test_a_formula_that_cannot_be_computed_says_so() -> None:
    for source, scores in (("a / b", {"a": 1.0, "b": 0.0}), ("sqrt(a)", {"a": -1.0, "b": 0.0}),
                           ("a ^ b", {"a": -8.0, "b": 0.5})):
        with pytest.raises(FormulaError):
            parse(source, {"a", "b"})(scores)


def test_tool_calls_fill_templates_with_bracketed_indices() -> None:
    sample = Sample("", [{"type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}])
    assert render("{{sample.output_tools[0].function.name}} {{ sample.output_tools.0.function.arguments }}",
                  sample, ITEM) == 'lookup {"q": "x"}'
    with pytest.raises(TemplateError):
        render("{{sample.output_tools[1].function.name}}", sample, ITEM)


def test_the_graders_package_imports_nothing_else_of_ftserve() -> None:
    """The API and the engine both import it; the engine runs alone on a GPU box."""
    package = Path(__file__).parents[2] / "src" / "ftserve" / "graders"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("ftserve.") or name.startswith("ftserve.graders"), (module.name, name)
