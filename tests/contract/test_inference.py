"""`/v1/chat/completions` and `/v1/completions` through the official SDK, on the default base model."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.helpers import chat_jsonl, upload, wait_for

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

pytestmark = pytest.mark.engine


@pytest.fixture
def client(live: LiveServer) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def test_chat_answers_with_usage_and_streaming_gives_the_same_text(client: OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    [choice] = whole.choices
    assert whole.object == "chat.completion" and whole.model == MODEL
    assert "Paris" in (choice.message.content or "") and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage and whole.usage.prompt_tokens > 5
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_max_tokens_stop_n_and_seed(client: OpenAI) -> None:
    cut = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_completion_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage and cut.usage.completion_tokens == 3

    stopped = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stop=["Paris"])
    assert stopped.choices[0].finish_reason == "stop" and "Paris" not in (stopped.choices[0].message.content or "")

    story = [{"role": "user", "content": "Tell me a story about a dragon."}]
    first = client.chat.completions.create(model=MODEL, messages=story, n=2, seed=7, max_tokens=16, temperature=1.0)
    again = client.chat.completions.create(model=MODEL, messages=story, n=2, seed=7, max_tokens=16, temperature=1.0)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert first.choices[0].message.content != first.choices[1].message.content


def test_completions_take_text_lists_and_token_prompts(client: OpenAI) -> None:
    result = client.completions.create(model=MODEL, prompt=["The capital of France is", "1, 2, 3,"], max_tokens=4,
                                       temperature=0)
    assert result.object == "text_completion" and [c.index for c in result.choices] == [0, 1]
    assert "Paris" in result.choices[0].text
    tokens = client.completions.create(model=MODEL, prompt=[504, 3575, 282], max_tokens=2, temperature=0, echo=True)
    assert tokens.usage and tokens.usage.prompt_tokens == 3 and tokens.usage.completion_tokens == 2
    streamed = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                              temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == result.choices[0].text


def test_tools_are_rendered_into_the_prompt(client: OpenAI, live: LiveServer) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=tools, max_tokens=2, temperature=0)  # type: ignore[arg-type]
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2, temperature=0)
    assert answer.usage and plain.usage
    # The tool list is in the prompt the model reads (SmolLM2's template has no tool syntax of its own).
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 20


@pytest.mark.parametrize(("arguments", "param"), [
    ({"model": "no-such-model"}, "model"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages[0].content[0]"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias"),
])
def test_bad_requests_get_errors_that_name_the_parameter(client: OpenAI, arguments: dict, param: str) -> None:
    body = {"model": MODEL, "messages": QUESTION, **arguments}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**body)
    assert caught.value.status_code in (400, 404)
    assert caught.value.body["param"] == param  # type: ignore[index]


BIG = "word " * 220_000  # 1.1 MB of prompt text, over the default limit of 1 MiB
UNKNOWN = "no-such-model"  # the limits are checked before the model is looked up, let alone its tokenizer


@pytest.mark.parametrize(("call", "param", "code"), [
    (lambda c: c.completions.create(model=UNKNOWN, prompt=["Hi"] * 17, max_tokens=1), "prompt", "too_many_choices"),
    (lambda c: c.completions.create(model=UNKNOWN, prompt=["Hi", "Yo"], n=9, max_tokens=1), "n", "too_many_choices"),
    (lambda c: c.completions.create(model=UNKNOWN, prompt=[BIG], max_tokens=1), "prompt", "prompt_too_large"),
    (lambda c: c.chat.completions.create(model=UNKNOWN, messages=[{"role": "user", "content": BIG}], max_tokens=1),
     "messages", "prompt_too_large"),
], ids=["17 prompts", "2 prompts x n=9", "a 1.1 MB prompt", "a 1.1 MB message"])
def test_requests_over_the_limits_are_refused_before_anything_is_tokenized(client: OpenAI, call: Any, param: str,
                                                                           code: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        call(client)
    assert (caught.value.body["param"], caught.value.code) == (param, code)  # type: ignore[index]  # the error body


def test_a_prompt_longer_than_the_context_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=[42] * 9000, max_tokens=1)
    assert caught.value.code == "context_length_exceeded"


def test_a_model_without_weights_is_refused_clearly(client: OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, chat_jsonl(10)))
    job = wait_for(client, job.id)
    assert job.status == "succeeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION)
    assert caught.value.code == "model_not_servable" and "fake trainer" in caught.value.message


def test_a_long_generation_does_not_stall_the_api(client: OpenAI, live: LiveServer) -> None:
    done = threading.Event()

    def generate() -> None:
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write a long essay."}],
                                            max_tokens=150, stream=True, temperature=1.0, seed=0))
        done.set()

    thread = threading.Thread(target=generate)
    thread.start()
    time.sleep(1.0)  # the generation is under way
    started = time.monotonic()
    listing = httpx.get(f"{live.base_url}/models", timeout=10)
    waited = time.monotonic() - started
    assert listing.status_code == 200
    assert not done.is_set(), "the generation finished too soon to show anything"
    assert waited < 1.0
    thread.join(timeout=120)
    assert done.is_set()


def test_a_client_that_hangs_up_stops_its_generation(client: OpenAI, live: LiveServer) -> None:
    with httpx.stream("POST", f"{live.base_url}/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Count to one thousand."}],
        "max_tokens": 2000, "stream": True, "temperature": 0,
    }) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # The pool is free again well before 2000 tokens could have been written.
    started = time.monotonic()
    quick = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1, temperature=0)
    assert quick.choices[0].finish_reason == "length"
    assert time.monotonic() - started < 15


def test_a_client_that_hangs_up_on_a_whole_answer_stops_its_generation(client: OpenAI) -> None:
    # Not streamed: the answer would come whole at the end, so nothing is written before the client goes.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{client.base_url}chat/completions", timeout=httpx.Timeout(60, read=1.0), json={
            "model": MODEL, "messages": [{"role": "user", "content": "Count to one thousand."}],
            "max_tokens": 2000, "temperature": 0, "logit_bias": {"0": -100, "2": -100},  # no end-of-text: it runs on
        })
    # The pool is free again well before 2000 tokens could have been generated.
    started = time.monotonic()
    quick = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1, temperature=0)
    assert quick.choices[0].finish_reason == "length"
    assert time.monotonic() - started < 15


def test_another_projects_short_request_is_not_kept_behind_a_flood(alpha: OpenAI, beta: OpenAI,
                                                                    keyed: LiveServer) -> None:
    flood = {"model": MODEL, "messages": [{"role": "user", "content": "Count to one thousand."}], "max_tokens": 16,
             "temperature": 0, "logit_bias": {"0": -100, "2": -100}}  # no end-of-text: each runs its 16 tokens
    finished: list[str] = []

    def alpha_request() -> None:
        alpha.chat.completions.create(**flood)  # type: ignore[call-overload]  # the dict holds valid arguments
        finished.append("alpha")

    threads = [threading.Thread(target=alpha_request) for _ in range(6)]
    for thread in threads:
        thread.start()
    gate = keyed.runtime.inference.gate
    deadline = time.monotonic() + 60
    while gate.waiting().get("alpha", 0) < 6:  # all six in: one generating, five waiting
        assert time.monotonic() < deadline
        time.sleep(0.01)
    answer = beta.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1, temperature=0)
    finished.append("beta")
    for thread in threads:
        thread.join(120)
    assert answer.choices[0].finish_reason == "length"
    # beta's turn came right after the request alpha was running when beta asked, not after alpha's other five.
    assert finished.index("beta") <= 1, finished
    assert gate.waiting() == {}
