"""How the vLLM engine words its requests to vLLM and reads its answers back (no vLLM needed; the real engine's
tests are tests/integration/test_vllm.py)."""

from __future__ import annotations

from ftserve.engine.spec import ModelSource
from ftserve.inference.interface import Generation, Sampling, Target
from ftserve.inference.vllm_engine import _body, _chunk

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
