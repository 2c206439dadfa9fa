"""check_grader: what is refused before a grader runs, and where in the grader the refusal points."""

from __future__ import annotations

from typing import Any

import pytest

from ftserve.graders import GraderInvalid, PythonLimits, check_grader
from tests.unit.test_graders_multi import ACCEPTORS, DONORS
from tests.unit.test_model_graders import LABEL, SCORE, FakeJudge


def _check(grader: dict[str, Any], *, item_fields: set[str] | None = None, embed: bool = True,
           python: PythonLimits = PythonLimits(), judge: FakeJudge | None = None, top_level: bool = True) -> None:
    check_grader(grader, item_fields=item_fields, judge=judge or FakeJudge([]), embed_available=embed, python=python,
                 top_level=top_level)


def _refused(grader: dict[str, Any], **options: Any) -> GraderInvalid:
    with pytest.raises(GraderInvalid) as caught:
        _check(grader, **options)
    return caught.value


def _multi(graders: object, formula: str) -> dict[str, Any]:
    return {"type": "multi", "name": "m", "graders": graders, "calculate_output": formula}


def test_graders_that_can_run_pass() -> None:
    _check(DONORS, item_fields={"reference"})
    _check(ACCEPTORS)
    _check(SCORE, item_fields={"reference", "other"})
    _check(_multi({"donors": DONORS, "sentiment": LABEL}, "donors * sentiment"))
    _check(LABEL, top_level=False)


@pytest.mark.parametrize(("source", "message"), [
    ("def grade(sample, item)\n    return 1\n", "does not compile: expected ':' (line 1)"),
    ("def grade(sample, item):\n    return 1\nreturn 2\n", "does not compile: 'return' outside function (line 3)"),
    ("def judge(sample, item):\n    return 1\n", "defines no grade(sample, item) function"),
    ("#" * (256 * 1024 + 1), "limit is 262144 bytes"),
])
def test_python_source_that_cannot_grade_is_refused(source: str, message: str) -> None:
    error = _refused({**ACCEPTORS, "source": source})
    assert error.param == "source" and message in error.message


def test_a_grade_bound_by_assignment_or_import_counts() -> None:
    _check({**ACCEPTORS, "source": "grade = lambda sample, item: 1.0\n"})
    _check({**ACCEPTORS, "source": "from math import floor as grade\n"})


def test_python_graders_are_refused_where_the_operator_turned_them_off() -> None:
    error = _refused(ACCEPTORS, python=PythonLimits(enabled=False))
    assert error.param == "type" and "turned off" in error.message


@pytest.mark.parametrize(("graders", "param"), [
    ({"donors": DONORS, "acceptors": {**ACCEPTORS, "source": "x = ("}}, "graders.acceptors.source"),
    ([DONORS, {**SCORE, "model": "nobody"}], "graders.1.model"),
    ({**ACCEPTORS, "source": "pass"}, "graders.source"),
    ([DONORS, DONORS], "graders.1.name"),
])
def test_a_sub_graders_refusal_names_its_place(graders: object, param: str) -> None:
    assert _refused(_multi(graders, "donors")).param == param


@pytest.mark.parametrize("formula", ["donors + unknown", "donors +", "__import__('os')"])
def test_formulas_naming_unknown_graders_or_not_parsing_are_refused(formula: str) -> None:
    assert _refused(_multi({"donors": DONORS}, formula)).param == "calculate_output"


def test_judges_must_be_known_and_present() -> None:
    assert _refused({**SCORE, "model": "gpt-nowhere"}).param == "model"
    with pytest.raises(GraderInvalid) as caught:
        check_grader(SCORE, item_fields=None, judge=None, embed_available=True, python=PythonLimits())
    assert caught.value.param == "model"


def test_cosine_needs_embeddings() -> None:
    cosine = {"type": "text_similarity", "name": "c", "input": "{{sample.output_text}}", "reference": "x",
              "evaluation_metric": "cosine"}
    assert _refused(cosine, embed=False).param == "evaluation_metric"
    _check(cosine, embed=True)


def test_label_model_cannot_be_a_reinforcement_jobs_own_grader() -> None:
    error = _refused(LABEL)
    assert error.param == "type" and "inside a multi grader" in error.message


@pytest.mark.parametrize(("grader", "param", "message"), [
    (DONORS, "reference", "the items have no field 'reference'"),
    ({**DONORS, "input": "{{foo}}"}, "input", "a placeholder starts with sample. or item."),
    ({**DONORS, "input": "{{sample.text}}"}, "input", "a sample has output_text"),
    (SCORE, "input.1.content.0", "the items have no field 'reference'"),
])
def test_templates_that_can_never_be_filled_are_refused(grader: dict[str, Any], param: str, message: str) -> None:
    error = _refused(grader, item_fields={"question"})
    assert error.param == param and message in error.message


def test_tool_call_templates_and_unknown_item_fields_pass_when_fields_are_unknown() -> None:
    _check({**DONORS, "input": "{{sample.output_tools[0].function.name}}"}, item_fields={"reference"})
    _check({**DONORS, "reference": "{{item.anything}}"}, item_fields=None)


def test_images_and_bad_label_sets_are_refused() -> None:
    image = {**SCORE, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x"}]}]}
    assert _refused(image).param == "input.0.content.0"
    assert _refused({**LABEL, "passing_labels": ["ecstatic"]}, top_level=False).param == "passing_labels"
    assert _refused({**SCORE, "range": [1, 0]}).param == "range"
