"""The service side of graders without a server: a hosted provider's model as judge (what it is sent, what comes
back, its failures), the names a project's judge knows, and the shape-only check of a hosted job's grader."""

from __future__ import annotations

import json
import httpx
import openai
import pytest
import respx

from ftserve.domain.errors import InvalidRequest, NotFound
from ftserve.graders import JudgeError, PythonLimits
from ftserve.inference.interface import Target
from ftserve.providers.contract import HostedProvider
from ftserve.providers.openai_compatible_api import OpenAICompatibleConnection, OpenAICompatibleProvider
from ftserve.services.graders import GraderService, GraderSettings, ServedJudge

BASE = "https://lab.example/v1"
REPLY = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "judge-large-2025",
         "choices": [{"index": 0, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": "0.75", "refusal": None}}],
         "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
MESSAGES = [{"role": "user", "content": "Score: Paris"}]


class Served:
    """The inference service as far as the judge's `known` asks it: base models resolve, nothing else does."""

    def resolve(self, project: str, model: str) -> Target:
        if model != "base-model":
            raise NotFound(f"The model '{model}' does not exist", param="model")
        return Target(model, None)  # type: ignore[arg-type]  # known() only asks whether it resolves


def lab() -> dict[str, HostedProvider]:
    connection = OpenAICompatibleConnection(base_url=BASE, api_key="sk-lab")
    # The SDK's own transport is not httpx's, which respx intercepts: hand it an httpx client.
    client = openai.OpenAI(base_url=BASE, api_key="sk-lab", max_retries=0, http_client=httpx.Client())
    return {"remote-lab": OpenAICompatibleProvider("remote-lab", connection, client=client)}  # type: ignore[dict-item]


def judge() -> ServedJudge:
    return ServedJudge(Served(), "alpha", lab())  # type: ignore[arg-type]  # a stand-in for InferenceService


def test_a_configured_providers_model_judges_with_the_graders_sampling_params() -> None:
    with respx.mock(base_url=BASE, assert_all_mocked=True) as api:
        chat = api.post("/chat/completions").respond(json=REPLY)
        reply = judge()("remote-lab/judge-large", MESSAGES,
                        {"seed": 3, "temperature": 0.0, "top_p": 0.5, "max_completions_tokens": 8})
    sent = json.loads(chat.calls.last.request.content)
    assert sent == {"model": "judge-large", "messages": MESSAGES, "seed": 3, "temperature": 0.0, "top_p": 0.5,
                    "max_tokens": 8}
    assert (reply.text, reply.model, reply.prompt_tokens, reply.completion_tokens) == ("0.75", "judge-large-2025", 12, 3)


@pytest.mark.parametrize(
    ("answer", "kind", "details"),
    [
        (httpx.Response(200, json={**REPLY, "choices": [{**REPLY["choices"][0], "message": {  # type: ignore[dict-item]
            "role": "assistant", "content": None, "refusal": "I will not grade this."}}]}), "refusal",
         "I will not grade this."),
        (httpx.Response(404, json={"error": {"message": "no such model", "type": "invalid_request_error"}}), "server",
         "no such model"),
    ],
    ids=["refusal", "error"],
)
def test_a_providers_refusal_or_error_is_a_judge_error_of_that_kind(answer: httpx.Response, kind: str,
                                                                    details: str) -> None:
    with respx.mock(base_url=BASE, assert_all_mocked=True) as api:
        api.post("/chat/completions").mock(return_value=answer)
        with pytest.raises(JudgeError) as failed:
            judge()("remote-lab/judge-large", MESSAGES, {})
    assert failed.value.kind == kind and details in failed.value.details


def test_a_judge_knows_what_the_project_may_call_and_configured_providers_models() -> None:
    known = judge().known
    assert known("base-model") and known("remote-lab/anything")
    assert not known("ft:base-model:beta:theirs:abc") and not known("remote-elsewhere/model")


def test_a_hosted_jobs_grader_is_checked_for_its_shape_but_not_for_judges_or_embeddings() -> None:
    service = GraderService(Served(), {}, GraderSettings(PythonLimits(enabled=False)))  # type: ignore[arg-type]
    check = service.check
    judged = {"type": "score_model", "name": "j", "model": "gpt-4o", "input": [{"role": "user", "content": "{{item.q}}"}]}
    cosine = {"type": "text_similarity", "name": "c", "input": "{{sample.output_text}}", "reference": "{{item.q}}",
              "evaluation_metric": "cosine"}
    python = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1\n"}
    for grader in (judged, cosine, python):  # the provider judges, embeds and runs python, whatever this server allows
        check("alpha", grader, item_fields={"q"}, param="method.reinforcement.grader", hosted=True)
    with pytest.raises(InvalidRequest) as refused:
        check("alpha", cosine, item_fields={"a"}, param="method.reinforcement.grader", hosted=True)
    assert refused.value.param == "method.reinforcement.grader.reference"
    for grader, param in ((judged, "model"), (cosine, "evaluation_metric"), (python, "type")):
        with pytest.raises(InvalidRequest) as refused:
            check("alpha", grader, item_fields={"q"}, param="grader")
        assert refused.value.param == f"grader.{param}", grader
