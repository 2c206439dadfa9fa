"""Packed batches (ftserve.packing) train on the same loss as padded ones, with attention kept within each example."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from ftserve.engine.batching import collate, pack
from ftserve.engine.data import IGNORE, Sequence
from ftserve.engine.losses import token_loss

CPU = torch.device("cpu")


def _examples(vocab: int) -> list[Sequence]:
    rng = random.Random(0)
    examples = []
    for length, prompt in ((37, 20), (9, 4), (23, 11), (5, 2), (30, 30 - 12)):
        ids = [rng.randrange(1, vocab) for _ in range(length)]
        examples.append(Sequence(ids, [IGNORE] * prompt + ids[prompt:]))
    return examples


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> PreTrainedModel:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)


@pytest.mark.parametrize("row_tokens", [2048, 40])
def test_packed_loss_and_gradients_equal_the_padded_batch(model: PreTrainedModel, row_tokens: int) -> None:
    examples = _examples(model.config.vocab_size)
    padded = collate(examples, pad_id=0, device=CPU)
    packed = pack(examples, pad_id=0, device=CPU, row_tokens=row_tokens)
    assert packed.attention_mask is None and packed.tokens == padded.tokens
    assert packed.input_ids.numel() < padded.input_ids.numel()  # less padding is the point
    assert packed.input_ids.shape[1] <= max(row_tokens, max(map(len, examples)))

    results = []
    for batch in (padded, packed):
        model.zero_grad()
        loss, stats = token_loss(model, batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((float(loss.detach()), stats.tokens, grads))
    (padded_loss, padded_tokens, padded_grads), (packed_loss, packed_tokens, packed_grads) = results
    assert packed_tokens == padded_tokens
    assert packed_loss == pytest.approx(padded_loss, abs=1e-5)
    assert torch.allclose(packed_grads, padded_grads, atol=1e-5, rtol=1e-4)


def test_without_restarting_positions_examples_would_see_each_other(model: PreTrainedModel) -> None:
    """The check above can fail: run as one causal sequence, the same packed row gives another loss."""
    examples = _examples(model.config.vocab_size)
    packed = pack(examples, pad_id=0, device=CPU, row_tokens=2048)
    as_one = type(packed)(packed.input_ids, packed.labels, None, packed.tokens, None)
    with torch.no_grad():
        padded_loss = float(token_loss(model, collate(examples, pad_id=0, device=CPU))[0])
        crossing_loss = float(token_loss(model, as_one)[0])
    assert abs(crossing_loss - padded_loss) > 1e-3


@pytest.mark.parametrize("method", ["supervised", "dpo"])
def test_packing_reaches_a_supervised_spec_and_a_dpo_job_is_refused_naming_it(tmp_path: Path, method: str) -> None:
    from ftserve.catalogue import load_catalogue
    from ftserve.providers.contract import JobRequest, ProviderUnsupported
    from ftserve.providers.local import LocalProvider

    job = JobRequest(job_id="ftjob-1", model="SmolLM2-135M-Instruct", method=method,  # type: ignore[arg-type]
                     hyperparameters={"n_epochs": 1, "batch_size": 4}, seed=0, options={"packing": True},
                     training_file=tmp_path / "t.jsonl", training_examples=10, output_dir=tmp_path / "out")
    provider = LocalProvider(load_catalogue(), tmp_path / "cache")
    if method == "supervised":
        assert provider.spec(job).packing
    else:
        with pytest.raises(ProviderUnsupported) as refused:
            provider.spec(job)
        assert refused.value.param == "ftserve.packing"
