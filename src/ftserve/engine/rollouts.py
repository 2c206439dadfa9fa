"""Answers sampled from the model being trained, for reinforcement fine-tuning, and their training sequences.

The policy answers in the engine's own process with the weights it has at that step: nothing is written to
disk or sent to another process between a step's update and the next step's samples. All of a step's prompts,
each repeated for its group, go through one batched generation with a KV cache.

Under LoRA, generating through PEFT's wrapped layers costs two extra small matmuls per layer and token. So the
sampler keeps a plain copy of the model whose weights are the base with the adapter merged in, refreshed from
the trained A and B matrices before each step's sampling: one (out x r)(r x in) product per adapted layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from ftserve.engine.data import IGNORE, Sequence

# Rows generated together; a group larger than this is split (the KV cache grows with it).
MAX_ROWS = 64


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    """The answer's tokens, its end-of-turn token included when it ended by itself."""
    text: str
    finished: bool
    """Ended by itself (else it was cut at the token limit)."""


class Merged:
    """A plain copy of a LoRA model for generation, the adapter merged into its weights (see the module's doc)."""

    def __init__(self, model: PreTrainedModel):
        import copy

        from peft.tuners.lora import LoraLayer

        base = model.get_base_model()  # type: ignore[operator]  # PEFT's
        self.layers: list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor, torch.Tensor]] = []
        """Per adapted layer: A and B (trained in place by the optimizer), the scale, the copy's weight, the base's."""
        self.copy: PreTrainedModel = copy.deepcopy(base)
        # The copy still holds PEFT's wrappers: unwrap each into its base layer, whose weight the merge overwrites.
        for name, module in list(self.copy.named_modules()):
            if isinstance(module, LoraLayer):
                parent = self.copy.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.copy
                setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                adapter = module.active_adapters[0]
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight  # type: ignore[index]  # ModuleDicts
                frozen = module.get_base_layer().weight
                self.layers.append((a, b, float(module.scaling[adapter]), self.copy.get_submodule(name).weight, frozen))  # type: ignore[arg-type]  # Linear weights are tensors
        self.copy.requires_grad_(False)
        self.copy.eval()

    @torch.no_grad()
    def refresh(self) -> PreTrainedModel:
        """The copy, its weights now the base plus the adapter as trained so far."""
        for a, b, scale, target, frozen in self.layers:
            target.copy_((frozen.float() + (b.float() @ a.float()) * scale).to(target.dtype))
        return self.copy


def sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], n: int,
           temperature: float, max_new_tokens: int, stopped: Callable[[], bool] = lambda: False) -> list[list[Completion]]:
    """`n` answers to each prompt: `result[p][i]` is answer i to prompt p. Temperature 0 answers greedily."""
    rows = [prompt for prompt in prompts for _ in range(n)]
    answers: list[Completion] = []
    for start in range(0, len(rows), MAX_ROWS):
        answers += _generate(model, tokenizer, rows[start : start + MAX_ROWS], temperature, max_new_tokens, stopped)
    return [answers[p * n : (p + 1) * n] for p in range(len(prompts))]


def _generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[list[int]], temperature: float,
              max_new_tokens: int, stopped: Callable[[], bool]) -> list[Completion]:
    device = next(model.parameters()).device
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    end = tokenizer.eos_token_id
    # An explicit configuration: the model's own generation defaults (top_k, repetition penalty) would make the
    # samples differ from the distribution the loss differentiates.
    config = GenerationConfig(
        do_sample=temperature > 0, temperature=temperature if temperature > 0 else None, top_k=0 if temperature > 0 else None,
        top_p=1.0 if temperature > 0 else None, max_new_tokens=max_new_tokens, eos_token_id=end,
        pad_token_id=tokenizer.pad_token_id, use_cache=True,
    )
    out = model.generate(  # type: ignore[operator]  # generate comes from GenerationMixin, which the stubs miss
        input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
        stopping_criteria=StoppingCriteriaList([_Asked(stopped)]),
    )
    completions = []
    for r in range(len(rows)):
        generated: list[int] = out[r, width:].tolist()
        finished = end in generated
        kept = generated[: generated.index(end) + 1] if finished else generated
        completions.append(Completion(tuple(kept), str(tokenizer.decode(kept, skip_special_tokens=True)), finished))
    return completions


def sequence(prompt: list[int], completion: Completion, max_length: int) -> Sequence:
    """The prompt and the answer as one sequence whose loss falls on the answer's tokens."""
    ids = (prompt + list(completion.token_ids))[:max_length]
    labels = ([IGNORE] * len(prompt) + list(completion.token_ids))[:max_length]
    return Sequence(ids, labels)


class _Asked(StoppingCriteria):
    """Ends a generation early once the job is asked to stop; the caller then stops before training on it."""

    def __init__(self, stopped: Callable[[], bool]):
        self.stopped = stopped

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.stopped(), dtype=torch.bool,  # type: ignore[return-value]  # a BoolTensor is a bool Tensor
                          device=input_ids.device)
