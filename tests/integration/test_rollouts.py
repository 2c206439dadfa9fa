"""Reinforcement's sampler and loss on a real (tiny) model: the shared-prompt shortcut computes what running each
answer whole would, and sampling is the policy's own, reproducible with a seed."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ftserve.engine import models, rollouts
from ftserve.engine.batching import collate
from ftserve.engine.data import IGNORE, Encoder, Sequence
from ftserve.engine.hardware import Hardware
from ftserve.engine.losses import trained_logits
from ftserve.engine.spec import JobSpec, ModelSource

FP32 = Hardware(torch.device("cpu"), False, "eager")


def lora_model(path: Path) -> torch.nn.Module:
    spec = JobSpec(job_id="ftjob-rollouts", method="supervised", model=ModelSource(id="tiny", path=path),
                   training_file=path / "none.jsonl", output_dir=path / "none", cache_dir=path, n_epochs=1,
                   batch_size=1, learning_rate=1e-3)
    model = models.load_for_training(path, spec, FP32)
    with torch.no_grad():  # an adapter that has learned something, so switching it off would show
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return model


def test_answers_sharing_their_prompt_get_the_log_probabilities_and_gradients_of_whole_sequences(
        tiny_model_dir: Path) -> None:
    model = lora_model(tiny_model_dir)
    tokenizer = models.load_tokenizer(tiny_model_dir)
    encoder = Encoder(tokenizer, 256)
    prompts = [encoder.prompt([{"role": "user", "content": text}]) for text in ("List: kilo echo lima", "Hi")]
    torch.manual_seed(0)
    groups = rollouts.sample(model, tokenizer, prompts, 3, 1.0, 6)
    answers = [(p, answer) for p, group in enumerate(groups) for answer in group]
    assert all(1 <= len(a.token_ids) <= 6 for _, a in answers)

    shared, rows = rollouts.answer_logps(model, prompts, answers, tokenizer.pad_token_id, FP32.device)
    shared.sum().backward()
    shared_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    whole = [Sequence(prompts[p] + list(a.token_ids), [IGNORE] * len(prompts[p]) + list(a.token_ids)) for p, a in answers]
    out = trained_logits(model, collate(whole, tokenizer.pad_token_id, FP32.device))
    expected = -F.cross_entropy(out.logits, out.targets, reduction="none")
    expected.sum().backward()

    assert torch.equal(rows, out.rows)
    assert torch.allclose(shared, expected, atol=1e-4)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert torch.allclose(shared_grads[name], parameter.grad, atol=1e-5, rtol=1e-3), name


def test_sampling_is_reproducible_with_a_seed_and_greedy_answers_match_generate(tiny_model_dir: Path) -> None:
    model = lora_model(tiny_model_dir)
    model.eval()
    tokenizer = models.load_tokenizer(tiny_model_dir)
    prompts = [Encoder(tokenizer, 256).prompt([{"role": "user", "content": "List: kilo echo lima"}])]
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        with torch.no_grad():
            runs.append([a.token_ids for a in rollouts.sample(model, tokenizer, prompts, 4, 1.0, 8)[0]])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1  # a random tiny model at temperature 1: its four answers differ

    with torch.no_grad():
        greedy = rollouts.sample(model, tokenizer, prompts, 1, 0.0, 8)[0][0]
        reference = model.generate(input_ids=torch.tensor(prompts), do_sample=False, max_new_tokens=8,  # type: ignore[operator]  # GenerationMixin's
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    generated = reference[0, len(prompts[0]):].tolist()
    if tokenizer.eos_token_id in generated:
        generated = generated[: generated.index(tokenizer.eos_token_id) + 1]
    assert list(greedy.token_ids) == generated
