"""The fallback engine: ftserve's own decoding loop on transformers, in the server's process.

It runs one request at a time (the pool holds one model session at a time), answers each choice in
turn, and has no constrained decoding or logprobs. It needs nothing beyond ftserve's own
dependencies, which is why it stays: where vLLM is not installed, everything still answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ftserve.inference import engine_gateway as engine
from ftserve.inference.interface import Chunk, Feature, Generation, Target
from ftserve.inference.pool import ModelPool


class TransformersEngine:
    name = "transformers"
    supports: frozenset[Feature] = frozenset()

    def __init__(self, pool: ModelPool):
        self.pool = pool

    def generate(self, request: Generation, cancelled: Callable[[], bool]) -> Iterator[Chunk]:
        tokenizer = self.pool.text(request.target).tokenizer
        with self.pool.session(request.target) as model:
            generator = engine.seeded(model, request.seed)
            stops = engine.end_tokens(tokenizer, model)
            for p, prompt in enumerate(request.prompts):
                for i in range(request.n):
                    for piece in engine.generate(model, tokenizer, prompt, request.sampling, stops, generator, cancelled):
                        yield Chunk(p * request.n + i, piece.text, piece.tokens, piece.finish_reason, piece.token_ids)
                    if cancelled():
                        return

    def reload(self, target: Target) -> None:
        self.pool.evict(target.name)  # loaded again from its directory on next use

    def forget(self, name: str) -> None:
        self.pool.evict(name)

    def close(self) -> None:
        pass
