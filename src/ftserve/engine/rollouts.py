"""Answers sampled from the model being trained, for reinforcement fine-tuning, and their training sequences.

The policy answers in the engine's own process with the weights it has at that step: nothing is written to
disk or sent to another process between a step's update and the next step's samples. All of a step's prompts,
each repeated for its group, go through one batched generation with a KV cache.

A group's answers share their prompt: it is run once, for sampling and for the loss, and its keys and values
serve every answer in the group. (A copy of the weights with the adapter merged in would sample about a fifth
faster, but in bf16 the merge rounds a young adapter's small updates away, and the samples would no longer
come from the policy being trained.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase


# Rows generated together; a group larger than this is split (the KV cache grows with it).
MAX_ROWS = 64


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    """The answer's tokens, its end-of-turn token included when it ended by itself."""
    text: str
    finished: bool
    """Ended by itself (else it was cut at the token limit)."""


def sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], n: int,
           temperature: float, max_new_tokens: int, stopped: Callable[[], bool] = lambda: False) -> list[list[Completion]]:
    """`n` answers to each prompt: `result[p][i]` is answer i to prompt p. Temperature 0 answers greedily.

    Each prompt is read once and its KV cache repeated for its `n` answers; the vocabulary head runs on the
    newest position only. Sampling draws from softmax(logits / temperature) over the whole vocabulary (no top-k
    or top-p), the distribution the loss differentiates."""
    answers: list[list[Completion]] = []
    per_call = max(1, MAX_ROWS // n)
    for start in range(0, len(prompts), per_call):
        answers += _generate(model, tokenizer, prompts[start : start + per_call], n, temperature, max_new_tokens, stopped)
    return answers


def _generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], n: int,
              temperature: float, max_new_tokens: int, stopped: Callable[[], bool]) -> list[list[Completion]]:
    decoder, head = _parts(model)
    device = next(model.parameters()).device
    ids, mask, positions = _left_padded(prompts, tokenizer.pad_token_id, device)
    cache = DynamicCache()
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    cache.batch_repeat_interleave(n)
    last = out.last_hidden_state[:, -1].repeat_interleave(n, dim=0)
    mask = mask.repeat_interleave(n, dim=0)
    position = positions[:, -1:].repeat_interleave(n, dim=0) + 1
    end, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    done = torch.zeros(last.shape[0], dtype=torch.bool, device=device)
    chosen: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        logits = head(last).float()
        token = (torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1).squeeze(1) if temperature > 0
                 else logits.argmax(dim=-1))
        token = torch.where(done, torch.full_like(token, pad), token)
        chosen.append(token)
        done |= token == end
        if bool(done.all()) or len(chosen) == max_new_tokens or stopped():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = decoder(input_ids=token[:, None], attention_mask=mask, position_ids=position, cache=cache, use_cache=True)
        last, position = out.last_hidden_state[:, -1], position + 1
    tokens = torch.stack(chosen, dim=1).tolist()
    completions = []
    for row in tokens:
        finished = end in row
        kept = row[: row.index(end) + 1] if finished else row
        completions.append(Completion(tuple(kept), str(tokenizer.decode(kept, skip_special_tokens=True)), finished))
    return [completions[p * n : (p + 1) * n] for p in range(len(prompts))]


def answer_logps(model: PreTrainedModel, prompts: list[list[int]], answers: list[tuple[int, Completion]],
                 pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the answer tokens, with gradients: one value per token of the answers, in order,
    and which answer each belongs to. `answers` are (prompt index, answer) pairs.

    Each prompt is run once, and its keys and values are shared by its answers, which attend to them as if
    each sequence were run whole; the loss and its gradients are the same, on a fraction of the positions."""
    decoder, head = _parts(model)
    ids, prompt_mask, positions = _left_padded(prompts, pad_id, device)
    cache = DynamicCache()
    out = decoder(input_ids=ids, attention_mask=prompt_mask, position_ids=positions, cache=cache, use_cache=True)
    which = torch.tensor([p for p, _ in answers], device=device)
    cache.batch_select_indices(which)
    lengths = [len(a.token_ids) for _, a in answers]
    width = max(lengths)
    answer_ids = torch.full((len(answers), width), pad_id, dtype=torch.long, device=device)
    answer_mask = torch.zeros((len(answers), width), dtype=torch.long, device=device)
    for row, (_, answer) in enumerate(answers):
        answer_ids[row, : len(answer.token_ids)] = torch.tensor(answer.token_ids, device=device)
        answer_mask[row, : len(answer.token_ids)] = 1
    # The answer's first token is predicted from the prompt's last position; the rest from the answer's own.
    hidden = out.last_hidden_state[:, -1:][which]
    if width > 1:
        mask = torch.cat([prompt_mask[which], answer_mask[:, :-1]], dim=1)
        steps = positions[which][:, -1:] + 1 + torch.arange(width - 1, device=device)
        rest = decoder(input_ids=answer_ids[:, :-1], attention_mask=mask, position_ids=steps, cache=cache,
                       use_cache=True).last_hidden_state
        hidden = torch.cat([hidden, rest], dim=1)
    keep = answer_mask.bool()
    logits = head(hidden[keep]).float()
    logps = -torch.nn.functional.cross_entropy(logits, answer_ids[keep], reduction="none")
    return logps, keep.nonzero()[:, 0]


def _parts(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack and the vocabulary head (under PEFT, of the wrapped model: its LoRA layers are inside)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]  # PEFT's
    return causal_lm.get_decoder(), causal_lm.get_output_embeddings()


def _left_padded(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)
