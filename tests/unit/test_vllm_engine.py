"""How the vLLM engine words its requests to vLLM and reads its answers back (no vLLM needed; the real engine's
tests are tests/integration/test_vllm.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ftserve.domain.errors import EngineUnavailable
from ftserve.engine.spec import ModelSource
from ftserve.inference.interface import Generation, Sampling, Target
from ftserve.inference.vllm_engine import VllmEngine, _body, _chunk
from ftserve.inference.vllm_server import VllmOptions

TARGET = Target("m", ModelSource(id="m"))


def test_greedy_choices_are_the_prompt_asked_again_in_the_same_numbering() -> None:
    greedy = _body(Generation(TARGET, [[1, 2], [3]], Sampling(max_tokens=4, temperature=0.0), n=3), "base")
    assert greedy["prompt"] == [[1, 2], [1, 2], [1, 2], [3], [3], [3]] and greedy["n"] == 1
    sampled = _body(Generation(TARGET, [[1, 2]], Sampling(max_tokens=4, temperature=0.7, logit_bias={5: -100.0}),
                               n=3, seed=4, logprobs=2), "ft:x")
    assert sampled["prompt"] == [[1, 2]] and sampled["n"] == 3 and sampled["seed"] == 4
    assert sampled["logit_bias"] == {"5": -100.0} and sampled["logprobs"] == 2 and sampled["model"] == "ft:x"
    assert "response_format" not in sampled


def test_chunks_count_tokens_per_choice_and_list_no_logprob_for_the_end_token() -> None:
    counts: dict[int, int] = {}
    first = _chunk({"index": 1, "text": " Par", "token_ids": [7, 8], "logprobs": {
        "tokens": [" Par", "is"], "token_logprobs": [-0.5, -0.1],
        "top_logprobs": [{" Rome": -2.0, " Par": -0.5, " Lyon": -3.0}, {"is": -0.1}]}}, counts, 2)
    assert first.tokens == 2 and first.token_ids == (7, 8)
    assert first.logprobs[0].top == ((" Par", -0.5), (" Rome", -2.0))  # most likely first, at most 2
    last = _chunk({"index": 1, "text": "", "token_ids": [2], "finish_reason": "stop", "stop_reason": None,
                   "logprobs": {"tokens": ["<|im_end|>"], "token_logprobs": [-0.01], "top_logprobs": [{"<|im_end|>": -0.01}]}},
                  counts, 2)
    assert last.tokens == 3 and last.finish_reason == "stop" and last.logprobs == ()


class DyingServer:
    """A vLLM server whose process has just died: its address refuses connections until the engine says so, and
    then it has started anew at another address."""

    headers: dict[str, str] = {}
    adapters: dict[str, object] = {}

    def __init__(self) -> None:
        self.address, self.refusals = "http://dead", list[str]()

    @contextlib.contextmanager
    def use(self) -> Iterator[str]:
        yield self.address

    def refused(self, url: str) -> None:
        self.refusals.append(url)
        self.address = "http://restarted"

    def watch(self) -> None:  # the engine's supervision, every second: nothing to do here
        pass

    def stop(self) -> None:
        pass


def answering(request: httpx.Request) -> httpx.Response:
    if request.url.host == "dead":
        raise httpx.ConnectError("connection refused", request=request)
    event = {"choices": [{"index": 0, "text": "Paris", "token_ids": [7], "finish_reason": "stop"}]}
    return httpx.Response(200, text=f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n")


def test_a_request_refused_by_a_server_that_just_died_goes_to_its_restart_once(tmp_path: Path) -> None:
    engine = VllmEngine(VllmOptions(python=Path("python"), log_dir=tmp_path), lambda source: tmp_path)
    engine._client = httpx.Client(transport=httpx.MockTransport(answering))
    server = DyingServer()
    engine._servers[TARGET.base.id] = server  # type: ignore[assignment]  # a stand-in for the process
    try:
        chunks = list(engine.generate(Generation(TARGET, [[1]], Sampling(max_tokens=4)), lambda: False))
        assert [c.text for c in chunks] == ["Paris"] and server.refusals == ["http://dead"]

        # One that does not come back: the second refusal is the client's 503, not a third try.
        server.address, server.refusals = "http://dead", []
        server.refused = lambda url: server.refusals.append(url)  # type: ignore[method-assign]  # it stays dead
        with pytest.raises(EngineUnavailable, match="stopped while answering"):
            list(engine.generate(Generation(TARGET, [[1]], Sampling(max_tokens=4)), lambda: False))
        assert server.refusals == ["http://dead", "http://dead"]
    finally:
        engine.close()
