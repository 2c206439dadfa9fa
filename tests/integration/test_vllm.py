"""Generation through vLLM, the default engine wherever it is installed: the session's fine-tuned model and its
base answer through a vLLM server that ftserve starts and watches, with the OpenAI semantics the transformers
loop has and what vLLM adds (logprobs, structured output); projects share it fairly; a client that hangs up
stops its generation on vLLM's side; a vLLM process killed mid-request gives a 503, then comes back.

The server here shares the `learned` server's database and data directory (so the shared fine-tuned model is
there to serve) and runs no worker; only its engine differs."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from ftserve.config import Settings
from ftserve.inference.interface import Target, sample
from ftserve.inference.vllm_engine import VllmEngine
from ftserve.inference.vllm_server import VllmServer
from tests.conftest import Learned, LiveServer, serving, settings_for
from tests.tasks import chat_examples, follows_format

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(Settings().resolved_vllm_python is None,
                       reason="vLLM is not installed (make installs it into .venv-vllm)"),
]

BASE = "SmolLM2-135M-Instruct"
# Keys: the open `learned` server's models belong to the default project, which the first key reaches.
KEYS = "sk-one-000000000000,sk-beta-00000000000=beta"


@pytest.fixture(scope="module")
def served(learned: Learned) -> Iterator[LiveServer]:
    shared = learned.server.runtime.settings
    settings = settings_for(shared.data_dir, shared.database_url, inference_engine="vllm", api_keys=KEYS,
                            vllm_max_batch=32, inference_max_per_project=24, vllm_idle_seconds=3600)
    with serving(settings, with_worker=False) as live:
        yield live


@pytest.fixture(scope="module")
def one(served: LiveServer) -> OpenAI:
    return OpenAI(base_url=served.base_url, api_key="sk-one-000000000000", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def beta(served: LiveServer) -> OpenAI:
    return OpenAI(base_url=served.base_url, api_key="sk-beta-00000000000", max_retries=0, timeout=600)


def engine_of(server: LiveServer) -> VllmEngine:
    engine = server.runtime.inference.engine
    assert isinstance(engine, VllmEngine)
    return engine


def vllm_of(server: LiveServer) -> VllmServer:
    return engine_of(server).servers()[BASE]


def generated_tokens(server: LiveServer) -> float:
    """Tokens vLLM has generated since it started, from its own metrics."""
    text = httpx.get(f"{vllm_of(server).url()}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:generation_tokens_total{"))


def ask(client: OpenAI, model: str, prompt: str, **extra: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          **{"temperature": 0, "max_tokens": 40, **extra})


def test_the_base_and_the_fine_tuned_model_answer_through_vllm(one: OpenAI, learned: Learned, served: LiveServer) -> None:
    tuned_name = learned.job.fine_tuned_model
    prompts = [e["messages"][0]["content"] for e in chat_examples(6, offset=20_000)]
    tuned = [ask(one, tuned_name, p).choices[0].message.content or "" for p in prompts]
    base = [ask(one, BASE, p).choices[0].message.content or "" for p in prompts]
    assert sum(map(follows_format, tuned)) >= 4, tuned
    assert sum(map(follows_format, base)) <= 1, base
    # Both came from one vLLM server for the base, with the adapter loaded into it; no weights in ftserve's process.
    engine = engine_of(served)
    assert list(engine.servers()) == [BASE] and tuned_name in vllm_of(served).adapters
    assert served.runtime.inference.pool.loaded()["bases"] == []
    # vLLM's port is on loopback, and its routes want the key ftserve gave it: other users of the machine get 401.
    bare = httpx.post(f"{vllm_of(served).url()}/v1/completions", json={"model": tuned_name, "prompt": "Hi"}, timeout=30)
    assert bare.status_code == 401

    stream = one.chat.completions.create(model=tuned_name, messages=[{"role": "user", "content": prompts[0]}],
                                         temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == tuned[0]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0 and not chunks[-1].choices

    sampled = one.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "Name a colour."}],
                                          n=3, temperature=1.0, seed=7, max_tokens=12)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    again = one.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "Name a colour."}],
                                        n=3, temperature=1.0, seed=7, max_tokens=12)
    assert [c.message.content for c in again.choices] == [c.message.content for c in sampled.choices]
    greedy = one.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "Name a colour."}],
                                         n=2, temperature=0, max_tokens=12)  # vLLM itself takes n > 1 only when sampling
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    assert sampled.usage and sampled.usage.completion_tokens > 12

    stopped = one.completions.create(model=BASE, prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0, stop=[" 8"])
    assert stopped.choices[0].finish_reason == "stop" and "8" not in stopped.choices[0].text


def test_logprobs_come_with_the_most_likely_alternatives(one: OpenAI) -> None:
    answer = ask(one, BASE, "What is the capital of France?", logprobs=True, top_logprobs=3, max_tokens=8)
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    for token in content:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        assert 1 <= len(token.top_logprobs) <= 3
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert token.top_logprobs[0].token == token.token  # greedy: the chosen token is the most likely one

    text = one.completions.create(model=BASE, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2)
    legacy = text.choices[0].logprobs
    assert legacy is not None and legacy.tokens and "".join(legacy.tokens) == text.choices[0].text
    assert legacy.text_offset == [sum(len(t) for t in legacy.tokens[:i]) for i in range(len(legacy.tokens))]
    with pytest.raises(openai.BadRequestError) as refused:
        ask(one, BASE, "Hi", top_logprobs=2)  # without logprobs: true
    assert refused.value.body["param"] == "top_logprobs"  # type: ignore[index]


def test_structured_output_follows_the_schema(one: OpenAI) -> None:
    # Fields with few possible values, so that the whole object fits in max_tokens.
    schema = {"type": "object", "properties": {"continent": {"enum": ["Africa", "America", "Asia", "Europe"]},
                                               "capital": {"type": "boolean"}},
              "required": ["continent", "capital"], "additionalProperties": False}
    answer = ask(one, BASE, "Where is Paris?", max_tokens=60,
                 response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    place = json.loads(answer.choices[0].message.content or "")
    assert set(place) == {"continent", "capital"} and place["continent"] in schema["properties"]["continent"]["enum"]  # type: ignore[index]
    assert isinstance(place["capital"], bool)

    loose = ask(one, BASE, "Give me a JSON object about cats.", max_tokens=60, response_format={"type": "json_object"})
    if loose.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(one, BASE, "Hi", response_format={"type": "json_schema"})
    assert refused.value.body["param"] == "response_format.json_schema"  # type: ignore[index]


def test_a_tool_call_in_the_answer_comes_back_as_tool_calls(one: OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    # The base model has no tool syntax of its own; three earlier turns that called the tool (rendered as training
    # renders them) show it how, as fine-tuning on tool calls would.
    messages: list[Any] = []
    for i, city in enumerate(["Rome", "Berlin", "Madrid"]):
        messages += [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": f"call_{i}", "type": "function", "function": {
                "name": "get_weather", "arguments": json.dumps({"city": city})}}]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "sunny"},
            {"role": "assistant", "content": f"It is sunny in {city}."},
        ]
    messages.append({"role": "user", "content": "What is the weather in Paris?"})
    answer = one.chat.completions.create(model=BASE, messages=messages, tools=tools, temperature=0, max_tokens=40)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    streamed = list(one.chat.completions.create(model=BASE, messages=messages, tools=tools, temperature=0,
                                                max_tokens=40, stream=True))
    calls = [call for c in streamed if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_weather"] and streamed[-1].choices[0].finish_reason == "tool_calls"


def test_every_limit_answers_with_its_4xx(one: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as many:
        one.completions.create(model=BASE, prompt=["a", "b", "c", "d", "e"], n=4, max_tokens=1)
    assert many.value.code == "too_many_choices"
    with pytest.raises(openai.BadRequestError) as long:
        ask(one, BASE, "Hi", max_tokens=9000)
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as big:
        ask(one, BASE, "x" * (1024 * 1024 + 1))
    assert big.value.code == "prompt_too_large"


def test_another_projects_small_request_is_not_starved(one: OpenAI, beta: OpenAI) -> None:
    stop, generating, ended = threading.Event(), [], []

    def flood() -> None:  # a long answer, streamed until the test has what it needs
        stream = one.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "Write a long story."}],
                                             max_tokens=2000, temperature=0, logit_bias={"2": -100}, stream=True)
        for i, _ in enumerate(stream):
            if i == 2:
                generating.append(1)
            if stop.is_set():
                break
        stream.close()
        ended.append(1)

    threads = [threading.Thread(target=flood) for _ in range(24)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while len(generating) < 24 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    small = ask(beta, BASE, "Hi", max_tokens=1)
    took, unfinished = time.monotonic() - started, 24 - len(ended)
    stop.set()
    for thread in threads:
        thread.join()
    assert len(generating) == 24 and small.choices[0].finish_reason in ("length", "stop")
    # It went into the running batch: answered while every one of the other project's 24 answers was still going.
    assert unfinished == 24, (took, unfinished)


def test_a_client_that_hangs_up_stops_its_generation_within_a_second(one: OpenAI, served: LiveServer) -> None:
    def settled_after_hang_up() -> tuple[float, float]:
        time.sleep(1.0)
        at_one_second = generated_tokens(served)
        time.sleep(2.0)
        return at_one_second, generated_tokens(served)

    # Streaming: read a few chunks, then close the connection. The fairness test before this one floods the
    # project; on a busy machine its last requests may still hold their places, so wait for one to be free.
    deadline = time.monotonic() + 120
    while generated_tokens(served) != (time.sleep(1.0) or generated_tokens(served)):  # until the engine is idle
        assert time.monotonic() < deadline, "the engine never went idle"
    while True:
        try:
            before = generated_tokens(served)
            stream = one.completions.create(model=BASE, prompt="Once upon a time", max_tokens=2000, temperature=0,
                                            logit_bias={"2": -100}, stream=True)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the project's earlier requests never finished"
            time.sleep(1.0)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    at_one, later = settled_after_hang_up()
    assert later == at_one and at_one - before < 500, (before, at_one, later)

    # Not streaming: the client gives up waiting for the whole answer.
    impatient = OpenAI(base_url=served.base_url, api_key="sk-one-000000000000", max_retries=0, timeout=1.5)
    before = generated_tokens(served)
    with pytest.raises(openai.APITimeoutError):
        impatient.completions.create(model=BASE, prompt="Once upon a time", max_tokens=2000, temperature=0,
                                     logit_bias={"2": -100})
    at_one, later = settled_after_hang_up()
    assert later == at_one and at_one - before < 500, (before, at_one, later)


def test_the_evaluation_endpoint_scores_through_vllm(one: OpenAI, learned: Learned) -> None:
    job = learned.job
    scores = {model: one.post("/ftserve/evaluations", body={"model": model, "file": job.validation_file}, cast_to=object)
              for model in (BASE, job.fine_tuned_model)}
    base, tuned = scores[BASE], scores[job.fine_tuned_model]
    assert base["generated"] == tuned["generated"] == 12  # type: ignore[index]
    assert base["exact_match"] == 0 and tuned["loss"] < base["loss"] / 3  # type: ignore[index]


def test_training_samples_and_swaps_an_adapter_for_its_newer_version_in_place(one: OpenAI, learned: Learned,
                                                                             served: LiveServer) -> None:
    # What reinforcement fine-tuning will do after each step: sample from the policy, then swap in its new weights.
    runtime = served.runtime
    earliest = min(one.fine_tuning.jobs.checkpoints.list(learned.job.id).data, key=lambda c: c.step_number)
    older, newer = (runtime.models.artifact("default", name)
                    for name in (earliest.fine_tuned_model_checkpoint, learned.job.fine_tuned_model))
    assert older is not None and newer is not None
    base = runtime.inference.resolve("default", BASE)
    policy = Target("policy-under-training", base.base, older, "adapter")
    user = chat_examples(1, offset=40_000)[0]["messages"][0]["content"]
    prompt = runtime.inference.pool.text(base).encoder.prompt([{"role": "user", "content": user}])
    engine, pid = engine_of(served), vllm_of(served).pid

    [[before]] = sample(engine, policy, [prompt], n=1, temperature=0.0, max_tokens=30)
    assert before.text == ask(one, earliest.fine_tuned_model_checkpoint, user, max_tokens=30).choices[0].message.content
    engine.reload(Target(policy.name, base.base, newer, "adapter"))
    [[after]] = sample(engine, policy, [prompt], n=1, temperature=0.0, max_tokens=30)
    assert after.text == ask(one, learned.job.fine_tuned_model, user, max_tokens=30).choices[0].message.content
    assert after.token_ids and after.text != before.text
    assert vllm_of(served).pid == pid  # the same server: no base weights were loaded again

    groups = sample(engine, policy, [prompt, prompt], n=4, temperature=1.0, max_tokens=12, seed=3)
    assert [len(g) for g in groups] == [4, 4] and all(s.token_ids for g in groups for s in g)
    assert len({s.text for s in groups[0]}) > 1  # sampled, not greedy


def test_a_killed_vllm_fails_its_request_with_503_and_the_next_one_succeeds(one: OpenAI, served: LiveServer) -> None:
    assert ask(one, BASE, "Hello", max_tokens=2).choices  # vLLM is running
    server = vllm_of(served)
    pid = server.pid
    assert pid is not None
    # One start so far: nothing in the tests above (threads that started it ending, idle waits) stopped it.
    assert server._log_path().read_text().count("\n==== ") == 1
    failure: list[BaseException] = []

    def long_answer() -> None:
        try:
            one.completions.create(model=BASE, prompt="Once upon a time", max_tokens=2000, temperature=0,
                                   logit_bias={"2": -100})
        except BaseException as error:  # kept for the assertion below
            failure.append(error)

    thread = threading.Thread(target=long_answer)
    thread.start()
    time.sleep(2.0)
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=60)
    assert failure and isinstance(failure[0], openai.APIStatusError), failure
    assert failure[0].status_code == 503 and failure[0].code == "engine_unavailable"
    assert re.search(r"restart", failure[0].message)

    answer = ask(one, BASE, "What is the capital of France?", max_tokens=8)
    assert answer.choices[0].message.content
    assert server.pid not in (None, pid)
