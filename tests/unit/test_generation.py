"""Generation on the default model: stop strings, token limits, seeds, sampling and tool-call answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ftserve.engine.data import Encoder
from ftserve.engine.models import load_tokenizer
from ftserve.inference.generate import Piece, _Text, end_tokens, generate
from ftserve.inference.interface import Sampling
from ftserve.services.inference import Output, _with_tool_calls

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(default_model_dir)


@pytest.fixture(scope="module")
def model(default_model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()


def feed(tokenizer: PreTrainedTokenizerBase, text: str, stop: tuple[str, ...]) -> tuple[list[str], bool]:
    released, state = [], _Text(tokenizer, stop)
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        piece, stopped = state.add(token)
        released.append(piece)
        if stopped:
            return released, True
    released.append(state.flush())
    return released, False


def test_text_stops_before_a_stop_string_and_never_releases_part_of_it(tokenizer: PreTrainedTokenizerBase) -> None:
    pieces, stopped = feed(tokenizer, "Paris is lovely. END of answer", ("END",))
    assert stopped and "".join(pieces) == "Paris is lovely. "
    # A stop string split over tokens is held back until it is known not to be one.
    pieces, stopped = feed(tokenizer, "one ENDLESS two", (" ENDX",))
    assert not stopped and "".join(pieces) == "one ENDLESS two"


def test_multibyte_characters_are_released_whole(tokenizer: PreTrainedTokenizerBase) -> None:
    pieces, _ = feed(tokenizer, "Crème brûlée 🍮 ok", ())
    assert "".join(pieces) == "Crème brûlée 🍮 ok"
    assert all("\ufffd" not in piece for piece in pieces)


def answer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sampling: Sampling, seed: int | None = None) -> list[Piece]:
    prompt = Encoder(tokenizer, 2048).prompt([{"role": "user", "content": "Write a short poem about the sea."}])
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return list(generate(model, tokenizer, prompt, sampling, end_tokens(tokenizer, model), generator))


def test_max_tokens_ends_with_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    pieces = answer(model, tokenizer, Sampling(max_tokens=7, temperature=0))
    assert pieces[-1].finish_reason == "length" and pieces[-1].tokens == 7
    assert all(p.finish_reason is None for p in pieces[:-1])


def test_the_same_seed_gives_the_same_sample_and_another_seed_differs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    sampling = Sampling(max_tokens=24, temperature=1.0, top_p=0.95)
    text = ["".join(p.text for p in answer(model, tokenizer, sampling, seed)) for seed in (1, 1, 2)]
    assert text[0] == text[1]
    assert text[0] != text[2]


def test_greedy_ignores_the_seed_and_matches_hugging_face_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    ours = "".join(p.text for p in answer(model, tokenizer, Sampling(max_tokens=20, temperature=0), seed=5))
    prompt = Encoder(tokenizer, 2048).prompt([{"role": "user", "content": "Write a short poem about the sea."}])
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
    assert ours == tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)


def test_a_strong_logit_bias_forces_a_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    token = tokenizer(" banana", add_special_tokens=False)["input_ids"][0]
    pieces = answer(model, tokenizer, Sampling(max_tokens=3, temperature=0, logit_bias={token: 100.0}))
    assert "".join(p.text for p in pieces) == tokenizer.decode([token] * 3)


def test_tool_call_blocks_become_tool_calls() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    output = _with_tool_calls([Output(0, text[:20], 3), Output(0, text[20:], 9, "stop")])
    assert output.finish_reason == "tool_calls" and output.text == "Let me check."
    assert output.tool_calls and output.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    # A malformed block stays text, and an answer cut off by max_tokens is not a call.
    broken = _with_tool_calls([Output(0, "<tool_call>{oops</tool_call>", 5, "stop")])
    assert broken.finish_reason == "stop" and broken.tool_calls is None
    cut = _with_tool_calls([Output(0, text, 9, "length")])
    assert cut.finish_reason == "length" and cut.tool_calls is None
