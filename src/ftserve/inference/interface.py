"""The one generation interface: what a request asks of an engine, and what comes back.

Two engines sit behind it: vLLM's server, supervised by ftserve (`vllm_engine`), and the
transformers loop in this process (`transformers_engine`), the fallback where vLLM is not
installed. The services prepare a request (model resolved, prompts tokenized, every argument
checked) and hand it to whichever engine the settings chose; nothing above this module knows which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ftserve.engine.spec import ModelSource

FinishReason = Literal["stop", "length"]
ArtifactKind = Literal["adapter", "full"]
Feature = Literal["logprobs", "response_format"]


@dataclass(frozen=True)
class Target:
    """What a request runs: a base model, or a fine-tuned artifact on top of (or instead of) it."""

    name: str
    base: ModelSource
    artifact: Path | None = None
    kind: ArtifactKind | None = None


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature can overflow to inf (and softmax to NaN); sampling that
        # cold picks the most likely token anyway.
        return self.temperature < 1e-6


@dataclass(frozen=True)
class Generation:
    """One request: `n` answers to each prompt (token ids), choice i of prompt p numbered p·n + i."""

    target: Target
    prompts: list[list[int]]
    sampling: Sampling
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None
    """Return each token's log-probability and this many of the most likely alternatives (None: no logprobs)."""
    response_format: dict[str, Any] | None = None
    """OpenAI's `json_object` or `json_schema` format, which the answer is constrained to."""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]
    """The most likely tokens at this position, most likely first."""


@dataclass(frozen=True)
class Chunk:
    """Part of one choice's answer; the last part of a choice has its finish reason."""

    index: int
    text: str
    tokens: int
    """Tokens of this choice generated so far, the one that ended it included."""
    finish_reason: FinishReason | None = None
    token_ids: tuple[int, ...] = ()
    """The ids of the tokens this chunk adds (its text may lag behind them, held back at a stop string's edge)."""
    logprobs: tuple[TokenLogprob, ...] = ()


class Engine(Protocol):
    name: str
    supports: frozenset[Feature]
    """What it can do beyond plain sampling; a request asking for anything else is refused before it is sent."""

    def generate(self, request: Generation, cancelled: Callable[[], bool]) -> Iterator[Chunk]:
        """The answers, as they are made. Stops soon after `cancelled()` turns true; raises `EngineUnavailable`
        when the engine died under the request."""
        ...

    def reload(self, target: Target) -> None:
        """Serve the newer weights now in a fine-tuned target's directory (after a training step), keeping the base."""
        ...

    def forget(self, name: str) -> None:
        """A fine-tuned model was deleted: let go of its weights."""
        ...

    def close(self) -> None:
        ...


@dataclass(frozen=True)
class Sample:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason


def sample(engine: Engine, target: Target, prompts: list[list[int]], n: int, temperature: float, max_tokens: int,
           seed: int | None = None) -> list[list[Sample]]:
    """`n` sampled answers to each prompt with their token ids, for training that learns from its own samples
    (reinforcement fine-tuning): `result[p][i]` is answer i to prompt p. All of them go to the engine together."""
    request = Generation(target, prompts, Sampling(max_tokens=max_tokens, temperature=temperature), n=n, seed=seed)
    texts: dict[int, list[str]] = {}
    ids: dict[int, list[int]] = {}
    ends: dict[int, FinishReason] = {}
    for chunk in engine.generate(request, lambda: False):
        texts.setdefault(chunk.index, []).append(chunk.text)
        ids.setdefault(chunk.index, []).extend(chunk.token_ids)
        if chunk.finish_reason:
            ends[chunk.index] = chunk.finish_reason
    return [[Sample("".join(texts.get(p * n + i, [])), tuple(ids.get(p * n + i, [])), ends.get(p * n + i, "length"))
             for i in range(n)] for p in range(len(prompts))]
