"""Proof that fine-tuning works: the default model learns a format it does not follow out of the box.

The task (tests/tasks.py) asks for `Items: N | first=... | last=...` answers to word lists. One LoRA
run on a few hundred examples is shared by both tests: held-out loss must fall far below the base
model's, and greedy answers to held-out prompts must follow the format far more often than before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ftserve.engine import sft
from ftserve.engine.batching import collate
from ftserve.engine.data import Encoder
from ftserve.engine.events import Metrics
from ftserve.engine.losses import EMPTY, Stats, token_loss
from ftserve.engine.models import load_tokenizer
from ftserve.engine.sink import MemorySink
from ftserve.engine.spec import JobSpec, ModelSource
from tests.conftest import MODEL_CACHE
from tests.tasks import chat_examples, follows_format, jsonl

TRAIN, HELD_OUT = 320, 48

pytestmark = pytest.mark.engine


@dataclass(frozen=True)
class Trained:
    base_dir: Path
    adapter_dir: Path
    tokenizer: PreTrainedTokenizerBase
    sink: MemorySink


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, default_model: ModelSource, default_model_dir: Path) -> Trained:
    tmp = tmp_path_factory.mktemp("proof")
    (tmp / "train.jsonl").write_bytes(jsonl(chat_examples(TRAIN)))
    (tmp / "valid.jsonl").write_bytes(jsonl(chat_examples(HELD_OUT, offset=10_000)))
    spec = JobSpec(
        job_id="ftjob-proof", method="supervised", model=default_model, cache_dir=MODEL_CACHE,
        training_file=tmp / "train.jsonl", validation_file=tmp / "valid.jsonl", output_dir=tmp / "out",
        n_epochs=1, batch_size=8, learning_rate=1e-3, seed=11,
    )
    sink = MemorySink()
    result = sft.run(spec, sink)
    assert result.model_dir is not None
    return Trained(default_model_dir, result.model_dir, load_tokenizer(default_model_dir), sink)


def held_out_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> float:
    encoder = Encoder(tokenizer, 2048)
    sequences = [encoder.chat(e) for e in chat_examples(HELD_OUT, offset=10_000)]
    total: Stats = EMPTY
    with torch.no_grad():
        for start in range(0, len(sequences), 16):
            total += token_loss(model, collate(sequences[start : start + 16], tokenizer.pad_token_id, torch.device("cpu")))[1]
    return total.loss


def base_model(trained: Trained) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(trained.base_dir, dtype=torch.float32).eval()


def tuned_model(trained: Trained) -> PreTrainedModel:
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model(trained), trained.adapter_dir).eval()


def test_held_out_loss_falls_well_below_the_base_model(trained: Trained) -> None:
    before = held_out_loss(base_model(trained), trained.tokenizer)
    after = held_out_loss(tuned_model(trained), trained.tokenizer)
    reported = trained.sink.of(Metrics)[-1].metrics["full_valid_loss"]
    assert after < before / 4, (before, after)
    assert reported == pytest.approx(after, rel=0.05)  # what the job reports is what the model does


def greedy_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[str]:
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.acceptance
def test_greedy_answers_follow_the_trained_format(trained: Trained) -> None:
    prompts = [e["messages"][0]["content"] for e in chat_examples(32, offset=20_000)]
    before = greedy_answers(base_model(trained), trained.tokenizer, prompts)
    after = greedy_answers(tuned_model(trained), trained.tokenizer, prompts)
    share_before = sum(map(follows_format, before)) / len(prompts)
    share_after = sum(map(follows_format, after)) / len(prompts)
    assert share_before <= 0.1, before[:3]
    assert share_after >= 0.8, after[:5]
