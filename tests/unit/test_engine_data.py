"""What the engine trains on: the loss mask of chat, completion and preference examples, and the batch order.

The mask is checked by decoding exactly the tokens that carry loss, on the default model's real
tokenizer, whose chat template has no generation markers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ftserve.engine.batching import collate, epoch_batches, steps_per_epoch
from ftserve.engine.data import IGNORE, DataError, Encoder, Sequence
from ftserve.engine.events import Message
from ftserve.engine.models import load_tokenizer
from ftserve.engine.setup import encode_file
from ftserve.engine.sink import MemorySink

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def encoder(default_model_dir: Path) -> Encoder:
    return Encoder(load_tokenizer(default_model_dir), max_length=2048)


def trained_text(encoder: Encoder, sequence: Sequence) -> str:
    return encoder.tokenizer.decode([t for t, label in zip(sequence.input_ids, sequence.labels) if label != IGNORE])


def test_only_assistant_turns_train_and_each_ends_with_eos(encoder: Encoder) -> None:
    seq = encoder.chat({"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]})
    assert trained_text(encoder, seq) == "Paris.<|im_end|>Rome.<|im_end|>"  # not the template's newline after
    assert sum(label == encoder.tokenizer.eos_token_id for label in seq.labels) == 2
    assert seq.labels == [t if label != IGNORE else IGNORE for t, label in zip(seq.input_ids, seq.labels)]


def test_weight_zero_assistant_messages_carry_no_loss(encoder: Encoder) -> None:
    seq = encoder.chat({"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bad answer.", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Good answer.", "weight": 1},
    ]})
    assert trained_text(encoder, seq) == "Good answer.<|im_end|>"


def test_tool_calls_are_trained_even_when_the_template_has_no_tool_syntax(encoder: Encoder) -> None:
    seq = encoder.chat({
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "4C, rain"},
            {"role": "assistant", "content": "4C and rain."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    })
    text = encoder.tokenizer.decode(seq.input_ids)
    trained = trained_text(encoder, seq)
    assert '"name": "get_weather"' in trained and '"city": "Oslo"' in trained
    assert "4C and rain." in trained and "4C, rain" not in trained
    assert "You can call these tools" in text  # the tool list reached the prompt


def test_completion_examples_train_the_completion_and_eos(encoder: Encoder) -> None:
    seq = encoder.completion({"prompt": "2+2=", "completion": " 4"})
    assert trained_text(encoder, seq) == " 4" + encoder.tokenizer.eos_token
    assert encoder.tokenizer.decode(seq.input_ids).startswith("2+2=")


def test_preference_sides_share_the_prompt_and_train_only_their_answer(encoder: Encoder) -> None:
    pair = encoder.preference({
        "input": {"messages": [{"role": "user", "content": "Say hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hi!"}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    })
    assert trained_text(encoder, pair.chosen) == "Hi!<|im_end|>"
    assert trained_text(encoder, pair.rejected) == "No.<|im_end|>"
    prompt_len = pair.chosen.labels.index(next(label for label in pair.chosen.labels if label != IGNORE))
    assert pair.chosen.input_ids[:prompt_len] == pair.rejected.input_ids[:prompt_len]


def test_a_file_with_nothing_to_train_fails_before_training(tmp_path: Path, default_model_dir: Path) -> None:
    short = Encoder(load_tokenizer(default_model_dir), max_length=16)
    path = tmp_path / "long.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "' + "word " * 50 + '"}, {"role": "assistant", "content": "ok"}]}\n')
    with pytest.raises(DataError, match="no example has assistant tokens to train on.*max_seq_length=16"):
        encode_file(path, short.sft, lambda s: s.trained, "training file", 16, MemorySink())


def test_a_partly_untrainable_file_skips_and_reports_the_lines(tmp_path: Path, encoder: Encoder) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]}\n'
    )
    sink = MemorySink()
    items = encode_file(path, encoder.sft, lambda s: s.trained, "training file", 2048, sink)
    assert len(items) == 1
    warning = sink.of(Message)[0]
    assert warning.level == "warn" and "skipped 1 example(s)" in warning.text and "lines 2" in warning.text


def test_batches_cover_every_example_once_and_repeat_for_the_same_seed() -> None:
    lengths = [(i * 37) % 200 + 5 for i in range(1000)]
    batches = epoch_batches(lengths, 8, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == steps_per_epoch(1000, 8)
    assert batches == epoch_batches(lengths, 8, seed=3, epoch=1)
    assert batches != epoch_batches(lengths, 8, seed=3, epoch=2)


def test_length_grouping_pads_far_less_than_random_batches() -> None:
    import random

    lengths = [random.Random(i).randint(10, 300) for i in range(2000)]
    grouped = epoch_batches(lengths, 8, seed=0, epoch=0)
    shuffled = list(range(2000))
    random.Random(0).shuffle(shuffled)
    randomly = [shuffled[k : k + 8] for k in range(0, 2000, 8)]

    def padding(batches: list[list[int]]) -> float:
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths) / padded

    assert padding(grouped) < 0.05 < 0.3 < padding(randomly)


def test_collate_pads_right_and_masks_padding() -> None:
    import torch

    batch = collate([Sequence([1, 2, 3], [IGNORE, 2, 3]), Sequence([4], [4])], pad_id=0, device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    assert batch.attention_mask is not None and batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.tokens == 4
    even = collate([Sequence([1, 2], [1, 2])], pad_id=0, device=torch.device("cpu"))
    assert even.attention_mask is None


def test_an_evaluation_reads_only_as_far_into_the_file_as_the_examples_it_scores(tmp_path: Path) -> None:
    from ftserve.engine.evaluate import read_examples

    path = tmp_path / "held_out.jsonl"
    good = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'
    path.write_text(good * 2 + "this line is never reached\n")  # a file cut off mid-write, as far as anyone knows
    assert len(read_examples(path, 2)) == 2
    with pytest.raises(ValueError):  # reading on would have met the broken line
        read_examples(path)
