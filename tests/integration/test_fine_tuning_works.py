"""Proof that fine-tuning works: the default model learns a format it does not follow out of the box.

The task (tests/tasks.py) asks for `Items: N | first=... | last=...` answers to word lists. The session's
one real LoRA job (`learned` in conftest, trained through the API) is what both tests examine, loaded
here with PEFT on its own: held-out loss must fall far below the base model's, what the job reported must
be what the model does, and greedy answers to held-out prompts must follow the format far more often
than before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ftserve.engine.batching import collate
from ftserve.engine.data import Encoder
from ftserve.engine.losses import EMPTY, Stats, token_loss
from ftserve.engine.models import load_tokenizer
from tests.conftest import LEARNED_VALIDATION, Learned
from tests.tasks import chat_examples, follows_format

HELD_OUT = 48

pytestmark = pytest.mark.engine


@dataclass(frozen=True)
class Trained:
    base_dir: Path
    adapter_dir: Path
    tokenizer: PreTrainedTokenizerBase
    reported_valid_loss: float
    """The full validation loss the job reported at its last step."""


@pytest.fixture(scope="module")
def trained(learned: Learned, default_model_dir: Path) -> Trained:
    adapter_dir = learned.server.runtime.models.artifact("default", learned.job.fine_tuned_model)
    assert adapter_dir is not None
    events = learned.client.fine_tuning.jobs.list_events(learned.job.id, limit=1000).data
    reported = [e.data for e in events if e.type == "metrics" and "full_valid_loss" in (e.data or {})]
    last = max(reported, key=lambda data: data["step"])  # type: ignore[index]  # metrics events carry a dict
    return Trained(default_model_dir, adapter_dir, load_tokenizer(default_model_dir), last["full_valid_loss"])  # type: ignore[index]  # as above


def held_out_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[dict]) -> float:
    encoder = Encoder(tokenizer, 2048)
    sequences = [encoder.chat(e) for e in examples]
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
    held_out = chat_examples(HELD_OUT, offset=10_000)
    base, tuned = base_model(trained), tuned_model(trained)
    before = held_out_loss(base, trained.tokenizer, held_out)
    after = held_out_loss(tuned, trained.tokenizer, held_out)
    assert after < before / 4, (before, after)
    # What the job reported on its validation file is what the model does on it.
    validation = held_out_loss(tuned, trained.tokenizer, chat_examples(**LEARNED_VALIDATION))
    assert trained.reported_valid_loss == pytest.approx(validation, rel=0.05)


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
