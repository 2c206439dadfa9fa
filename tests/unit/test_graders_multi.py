"""The multi grader: sub-graders in each of the three shapes OpenAI's documents show, combined by the formula,
their failures and judge usage carried into the whole."""

from __future__ import annotations

import subprocess

import pytest

from ftserve.graders import PythonLimits, run_batch, run_grader
from ftserve.graders import sandbox as sandbox_module
from tests.unit.test_model_graders import SCORE, FakeJudge

LIMITS = PythonLimits(cpu_seconds=1.0, wall_seconds=2.0, start_seconds=5.0, memory_mb=256)
DONORS = {"type": "string_check", "name": "donors", "input": "{{sample.output_json.donors}}",
          "reference": "{{item.reference.donors}}", "operation": "eq"}
ACCEPTORS = {"type": "python", "name": "acceptors",
             "source": "def grade(sample, item):\n"
                       "    return float(sample['output_json']['acceptors'] == item['reference']['acceptors'])\n"}
ITEM = {"reference": {"donors": 5, "acceptors": 7}}


def _multi(graders: object, formula: str = "0.5 * donors + 0.5 * acceptors") -> dict[str, object]:
    return {"type": "multi", "name": "bonds", "graders": graders, "calculate_output": formula}


@pytest.mark.parametrize("graders", [
    {"donors": DONORS, "acceptors": ACCEPTORS},  # the guide's map
    [DONORS, ACCEPTORS],  # the API reference's list, named by each grader's name
])
def test_sub_graders_combine_through_the_formula(graders: object) -> None:
    outcome = run_grader(_multi(graders), '{"donors": 5, "acceptors": 6}', ITEM, python=LIMITS)
    assert outcome.reward == 0.5 and outcome.sub_rewards == {"donors": 1.0, "acceptors": 0.0}
    assert outcome.scores == outcome.sub_rewards and not outcome.errors.any
    assert outcome.type == "multi" and outcome.execution_time > 0


def test_a_single_sub_grader_is_named_by_its_name() -> None:
    assert run_grader(_multi(DONORS, "donors * 2"), '{"donors": 5}', ITEM).reward == 2.0


def test_a_formula_that_does_not_parse_runs_no_sub_grader() -> None:
    judge = FakeJudge([])
    outcome = run_grader(_multi({"donors": DONORS, "judged": SCORE}, "donors +"), "{}", ITEM, judge=judge)
    assert outcome.errors.formula_parse_error and outcome.reward == 0.0 and judge.calls == []


def test_a_formula_that_cannot_be_computed_keeps_the_sub_rewards() -> None:
    outcome = run_grader(_multi({"donors": DONORS}, "1 / (donors - 1)"), '{"donors": 5}', ITEM)
    assert outcome.errors.formula_parse_error and outcome.sub_rewards == {"donors": 1.0} and outcome.reward == 0.0


def test_sub_graders_failures_and_judge_usage_become_the_multi_graders() -> None:
    failing = {**ACCEPTORS, "source": "def grade(sample, item):\n    raise ValueError('no acceptors')\n"}
    judged = {**SCORE, "range": [0, 1]}
    grader = _multi({"acceptors": failing, "judged": judged, "again": judged}, "acceptors + judged + again")
    outcome = run_grader(grader, "{}", {"reference": "r"}, judge=FakeJudge(["0.5", "0.25"]), python=LIMITS)
    assert outcome.sub_rewards == {"acceptors": 0.0, "judged": 0.5, "again": 0.25} and outcome.reward == 0.75
    assert outcome.errors.python_grader_runtime_error
    assert outcome.errors.python_grader_runtime_error_details == "ValueError: no acceptors (line 2)"
    assert outcome.token_usage == 214 and outcome.sampled_model_name == "judge-1-2025"
    assert outcome.model_grader_token_usage_per_model["judge-1-2025"]["total_tokens"] == 214


def test_a_batch_grades_every_sample_with_one_python_process(monkeypatch: pytest.MonkeyPatch) -> None:
    started, popen = [], subprocess.Popen

    def counting(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started.append(args)
        return popen(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(sandbox_module.subprocess, "Popen", counting)
    samples = ['{"donors": 5, "acceptors": 7}', '{"donors": 1, "acceptors": 7}', '{"donors": 5, "acceptors": 0}']
    outcomes = run_batch(_multi({"donors": DONORS, "acceptors": ACCEPTORS}), samples, [ITEM] * 3, python=LIMITS)
    assert [o.reward for o in outcomes] == [1.0, 0.5, 0.5] and len(started) == 1
