"""Token-by-token generation with a KV cache: sampling, penalties, stop strings and incremental text.

Text leaves in pieces as soon as it is final. A piece is held back while it could still turn
into a stop string, or while it ends inside a multi-byte character that the next token completes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ftserve.inference.interface import FinishReason, Sampling


@dataclass(frozen=True)
class Piece:
    text: str
    """Text added since the previous piece (may be empty on the last piece)."""
    tokens: int
    """Tokens generated so far, the one that ended generation included."""
    finish_reason: FinishReason | None = None
    token_ids: tuple[int, ...] = ()
    """The tokens generated since the previous piece."""


def seeded(model: PreTrainedModel, seed: int | None) -> torch.Generator:
    """A generator on the model's device: from `seed` when one is given, from the system's entropy otherwise."""
    generator = torch.Generator(device=next(model.parameters()).device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def end_tokens(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> set[int]:
    """Every token id that ends a turn: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: list[int], sampling: Sampling,
             stop_ids: set[int], generator: torch.Generator | None = None,
             cancelled: Callable[[], bool] = lambda: False) -> Iterator[Piece]:
    """Generate an answer to `prompt`, yielding its text as it becomes final; the last piece has a finish reason."""
    device = next(model.parameters()).device
    text = _Text(tokenizer, sampling.stop)
    counts = torch.zeros(model.config.vocab_size, device=device) if _penalised(sampling) else None
    bias = _bias(sampling, model.config.vocab_size, device)
    generated: list[int] = []
    given = 0  # generated[:given] went out with earlier pieces

    def piece(text_: str, reason: FinishReason | None = None) -> Piece:
        nonlocal given
        ids, given = tuple(generated[given:]), len(generated)
        return Piece(text_, len(generated), reason, ids)

    cache = None
    step_input = torch.tensor([prompt], device=device)
    with torch.inference_mode():
        while True:
            out = model(input_ids=step_input, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[0, -1].float()
            token = _choose(logits, sampling, counts, bias, generator)
            generated.append(token)
            if token in stop_ids:
                yield piece(text.flush(), "stop")
                return
            new, stopped = text.add(token)
            if stopped:
                yield piece(new, "stop")
                return
            if len(generated) >= sampling.max_tokens:
                yield piece(new + text.flush(), "length")
                return
            if new:
                yield piece(new)
            if cancelled():
                return
            if counts is not None:
                counts[token] += 1
            step_input = torch.tensor([[token]], device=device)


def _penalised(sampling: Sampling) -> bool:
    return bool(sampling.presence_penalty or sampling.frequency_penalty)


def _bias(sampling: Sampling, vocab: int, device: torch.device) -> torch.Tensor | None:
    if not sampling.logit_bias:
        return None
    bias = torch.zeros(vocab, device=device)
    for token, value in sampling.logit_bias.items():
        bias[token] = value
    return bias


def _choose(logits: torch.Tensor, sampling: Sampling, counts: torch.Tensor | None, bias: torch.Tensor | None,
            generator: torch.Generator | None) -> int:
    if bias is not None:
        logits = logits + bias
    if counts is not None:
        logits = logits - sampling.frequency_penalty * counts - sampling.presence_penalty * (counts > 0).float()
    if sampling.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p; the most likely token always stays.
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= sampling.top_p
        outside[0] = False  # top_p=0 would otherwise drop it too, leaving nothing to sample
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class _Text:
    """The answer's text so far, released only where it is final."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text already appended to `full`
        self.read = 0
        self.full = ""
        self.sent = 0

    def add(self, token: int) -> tuple[str, bool]:
        """The newly final text after `token`, and whether a stop string ended the answer."""
        self.ids.append(token)
        # One sequence of ids decodes to one string (only a batch gives a list).
        before = cast(str, self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True))
        after = cast(str, self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True))
        if after.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return "", False
        self.full += after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        for stop in self.stop:
            at = self.full.find(stop, self.sent)
            if at != -1:
                self.full = self.full[:at]
                return self._release(len(self.full)), True
        return self._release(len(self.full) - self._held()), False

    def flush(self) -> str:
        return self._release(len(self.full))

    def _held(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.full) - self.sent), longest, -1):
                if self.full.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _release(self, until: int) -> str:
        until = max(until, self.sent)
        piece, self.sent = self.full[self.sent : until], until
        return piece
