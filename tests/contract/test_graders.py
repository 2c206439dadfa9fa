"""The alpha grader endpoints through the official SDK (`client.fine_tuning.alpha.graders.run` and `.validate`):
every grader type run on a sample and an item, OpenAI's RunGraderResponse in full, the error flags of a grader
that fails while it runs, and the 400s (with the path inside the grader) of one that cannot run at all. Model
graders judge with the default base model on the transformers loop, a token or two per answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Databases, LiveServer, serving, settings_for
from tests.helpers import chat_jsonl, upload, wait_for

JUDGE = "SmolLM2-135M-Instruct"
ANSWER = "{{sample.output_text}}"
EXACT = {"type": "string_check", "name": "exact", "input": ANSWER, "reference": "{{item.answer}}", "operation": "eq"}
FUZZY = {"type": "text_similarity", "name": "close", "input": ANSWER, "reference": "{{item.answer}}",
         "evaluation_metric": "fuzzy_match"}
GREEDY = {"max_completions_tokens": 2, "temperature": 0, "seed": 7}
NO_ERRORS = {
    "formula_parse_error": False, "sample_parse_error": False, "truncated_observation_error": False,
    "unresponsive_reward_error": False, "invalid_variable_error": False, "other_error": False,
    "python_grader_server_error": False, "python_grader_server_error_type": None,
    "python_grader_runtime_error": False, "python_grader_runtime_error_details": None,
    "model_grader_server_error": False, "model_grader_refusal_error": False, "model_grader_parse_error": False,
    "model_grader_server_error_details": None,
}


@pytest.fixture
def client(live: LiveServer) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def run(client: OpenAI, grader: dict[str, Any], sample: str, item: dict[str, Any] | None = None) -> dict[str, Any]:
    """The RunGraderResponse body as sent (the SDK's model renames the model_grader_* keys)."""
    response = client.fine_tuning.alpha.graders.with_raw_response.run(
        grader=grader, model_sample=sample, **({"item": item} if item is not None else {}),  # type: ignore[arg-type]
    )
    body: dict[str, Any] = response.http_response.json()
    response.parse()  # and the SDK reads it
    return body


def refusal(call: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as refused:
        call(**kwargs)
    assert refused.value.status_code == 400
    body: dict[str, Any] = refused.value.body  # type: ignore[assignment]  # the error envelope's inner object
    assert body["type"] == "invalid_request_error" and body["message"]
    return body


def test_string_check_runs_and_validate_echoes_the_grader(client: OpenAI) -> None:
    body = run(client, EXACT, "Paris", {"answer": "Paris"})
    assert body == {
        "reward": 1.0,
        "metadata": {"name": "exact", "type": "string_check", "errors": NO_ERRORS,
                     "execution_time": body["metadata"]["execution_time"], "scores": body["metadata"]["scores"],
                     "token_usage": None, "sampled_model_name": None},
        "sub_rewards": {}, "model_grader_token_usage_per_model": {},
    }
    assert body["metadata"]["execution_time"] >= 0
    assert run(client, EXACT, "Rome", {"answer": "Paris"})["reward"] == 0.0
    ilike = {**EXACT, "operation": "ilike", "reference": "paris"}
    assert run(client, ilike, "I think it is PARIS.")["reward"] == 1.0
    assert client.fine_tuning.alpha.graders.validate(grader=EXACT).grader.model_dump() == EXACT  # type: ignore[union-attr]


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "rouge_l"])
def test_text_similarity_scores_one_for_the_same_text_and_less_for_another(client: OpenAI, metric: str) -> None:
    grader = {**FUZZY, "evaluation_metric": metric}
    item = {"answer": "the cat sat on the mat"}
    same = run(client, grader, "the cat sat on the mat", item)
    other = run(client, grader, "a dog lay on the rug", item)
    assert same["reward"] == pytest.approx(1.0)
    assert 0.0 <= other["reward"] < 1.0
    assert same["metadata"]["type"] == "text_similarity" and same["metadata"]["errors"] == NO_ERRORS


def test_cosine_is_refused_without_an_embeddings_model(client: OpenAI) -> None:
    cosine = {**FUZZY, "evaluation_metric": "cosine"}
    body = refusal(client.fine_tuning.alpha.graders.validate, grader=cosine)
    assert body["param"] == "grader.evaluation_metric" and "embeddings" in body["message"]
    assert refusal(client.fine_tuning.alpha.graders.run, grader=cosine, model_sample="x")["param"] == body["param"]


def test_a_python_grader_runs_and_its_exception_sets_the_runtime_flags(client: OpenAI) -> None:
    source = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['answer'] else 0.25\n"
    grader = {"type": "python", "name": "py", "source": source}
    assert run(client, grader, "Paris", {"answer": "Paris"})["reward"] == 1.0
    assert run(client, grader, "Rome", {"answer": "Paris"})["reward"] == 0.25
    failing = {**grader, "source": "def grade(sample, item):\n    raise ValueError('no answer key')\n"}
    body = run(client, failing, "Paris", {})
    errors = body["metadata"]["errors"]
    assert body["reward"] == 0.0 and errors["python_grader_runtime_error"] is True
    assert "no answer key" in errors["python_grader_runtime_error_details"]
    assert client.fine_tuning.alpha.graders.validate(grader=grader).grader.source == source  # type: ignore[union-attr]


def test_python_that_does_not_compile_is_refused_naming_the_source(client: OpenAI) -> None:
    broken = {"type": "python", "name": "py", "source": "def grade(sample, item)\n    return 1\n"}
    body = refusal(client.fine_tuning.alpha.graders.validate, grader=broken)
    assert body["param"] == "grader.source"
    nested = {"type": "multi", "name": "m", "graders": {"donors": broken, "exact": EXACT},
              "calculate_output": "donors + exact"}
    assert refusal(client.fine_tuning.alpha.graders.validate, grader=nested)["param"] == "grader.graders.donors.source"


def test_score_model_judges_with_a_base_model_and_reports_its_tokens(client: OpenAI) -> None:
    grader = {"type": "score_model", "name": "judge", "model": JUDGE, "sampling_params": GREEDY,
              "input": [{"role": "system", "content": "Say hello."}, {"role": "user", "content": ANSWER}]}
    body = run(client, grader, "Hello there", {})
    metadata = body["metadata"]
    # The tiny judge greets back instead of scoring: an answer that is not a number scores 0 and says so.
    assert body["reward"] == 0.0 and metadata["errors"]["model_grader_parse_error"] is True
    assert metadata["sampled_model_name"] == JUDGE and metadata["token_usage"] > 0
    usage = body["model_grader_token_usage_per_model"][JUDGE]
    assert usage["completion_tokens"] <= 2 and usage["prompt_tokens"] > 0
    assert client.fine_tuning.alpha.graders.validate(grader=grader).grader.model == JUDGE  # type: ignore[union-attr]


def test_a_multi_grader_of_a_map_reports_each_sub_reward(client: OpenAI) -> None:
    label = {"type": "label_model", "name": "label", "model": JUDGE, "labels": ["yes", "no"], "passing_labels": ["yes"],
             "input": [{"role": "user", "content": "Is {{sample.output_text}} a city? Answer yes or no."}]}
    grader = {"type": "multi", "name": "combo", "graders": {"exact": EXACT, "close": FUZZY, "label": label},
              "calculate_output": "0.5 * exact + 0.5 * close + 0 * label"}
    body = run(client, grader, "Paris", {"answer": "Paris"})
    assert set(body["sub_rewards"]) == {"exact", "close", "label"}
    assert body["sub_rewards"]["exact"] == 1.0 and body["sub_rewards"]["close"] == pytest.approx(1.0)
    assert body["reward"] == pytest.approx(1.0)
    assert body["metadata"]["type"] == "multi" and body["metadata"]["name"] == "combo"
    assert JUDGE in body["model_grader_token_usage_per_model"]
    echoed = client.fine_tuning.alpha.graders.with_raw_response.validate(grader=grader).http_response.json()
    assert echoed == {"grader": grader}


def test_bad_graders_are_400s_naming_the_path_inside_the_grader(client: OpenAI) -> None:
    validate = client.fine_tuning.alpha.graders.validate
    unknown_name = {"type": "multi", "name": "m", "graders": {"exact": EXACT}, "calculate_output": "exact + close"}
    assert refusal(validate, grader=unknown_name)["param"] == "grader.calculate_output"
    unknown_judge = {"type": "score_model", "name": "j", "model": "no-such-model",
                     "input": [{"role": "user", "content": ANSWER}]}
    assert refusal(validate, grader=unknown_judge)["param"] == "grader.model"
    nested = {"type": "multi", "name": "m", "graders": {"judge": unknown_judge}, "calculate_output": "judge"}
    assert refusal(validate, grader=nested)["param"] == "grader.graders.judge.model"
    bad_template = {**EXACT, "input": "{{answer.output_text}}"}
    assert refusal(validate, grader=bad_template)["param"] == "grader.input"
    label = {"type": "label_model", "name": "l", "model": JUDGE, "labels": ["a"], "passing_labels": ["a"],
             "input": [{"role": "user", "content": ANSWER}]}
    assert refusal(validate, grader=label)["param"] == "grader.type"  # only inside a multi grader
    assert refusal(validate, grader={**EXACT, "operation": "glob"})["param"] == "grader.operation"
    missing = httpx.post(f"{client.base_url}fine_tuning/alpha/graders/run", json={"grader": EXACT})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model_sample"


def test_a_judge_is_one_of_the_calling_projects_models(alpha: OpenAI, beta: OpenAI) -> None:
    job = beta.fine_tuning.jobs.create(model=JUDGE, training_file=upload(beta, chat_jsonl(2)),
                                       hyperparameters={"n_epochs": 1})
    theirs = wait_for(beta, job.id).fine_tuned_model
    assert theirs and theirs.startswith("ft:")
    grader = {"type": "score_model", "name": "j", "model": theirs, "input": [{"role": "user", "content": ANSWER}]}
    refused = refusal(alpha.fine_tuning.alpha.graders.validate, grader=grader)
    unknown = refusal(alpha.fine_tuning.alpha.graders.validate, grader={**grader, "model": theirs + "x"})
    # Another project's model is refused exactly as one that does not exist: nothing says it is there.
    assert refused["param"] == "grader.model" and refused["message"] == unknown["message"].replace(theirs + "x", theirs)
    assert alpha.fine_tuning.alpha.graders.validate(grader={**grader, "model": JUDGE}).grader.model == JUDGE  # type: ignore[union-attr]
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=alpha.base_url, api_key="sk-wrong", max_retries=0).fine_tuning.alpha.graders.validate(
            grader=EXACT)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory, databases: Databases, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """A server with an embeddings model for cosine (the tiny stand-in model: any model embeds) and python
    graders turned off."""
    settings = settings_for(tmp_path_factory.mktemp("graders"), databases.new(),
                            grader_embeddings_model=tiny_model_dir, python_graders=False)
    with serving(settings, with_worker=False) as live:
        yield live


def test_cosine_compares_embeddings_when_a_model_is_configured(configured: LiveServer) -> None:
    client = OpenAI(base_url=configured.base_url, api_key="unused", max_retries=0)
    cosine = {**FUZZY, "evaluation_metric": "cosine"}
    item = {"answer": "the cat sat on the mat"}
    same = run(client, cosine, "the cat sat on the mat", item)
    other = run(client, cosine, "Quarterly revenue grew by 12 percent.", item)
    assert same["reward"] == pytest.approx(1.0, abs=1e-4) and same["metadata"]["errors"] == NO_ERRORS
    assert other["reward"] < same["reward"]


def test_python_graders_can_be_turned_off(configured: LiveServer) -> None:
    client = OpenAI(base_url=configured.base_url, api_key="unused", max_retries=0)
    grader = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}
    body = refusal(client.fine_tuning.alpha.graders.validate, grader=grader)
    assert body["param"] == "grader.type" and "python graders are turned off" in body["message"].lower()
