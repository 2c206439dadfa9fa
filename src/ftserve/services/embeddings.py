"""Embeddings for text_similarity's `cosine` metric: the mean of a local model's last hidden state over the
text's tokens. The model is the one setting `grader_embeddings_model` names, loaded on the first cosine grader
(so a server that never runs one never imports torch) and kept for the next."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

# Texts longer than this many tokens are cut: a grader compares answers, not documents, and the cost of a
# forward pass grows with the longest text in the batch.
MAX_TOKENS = 512


class Embedder:
    """Callable as `ftserve.graders`' `Embed`: texts in, one vector per text out."""

    def __init__(self, directory: Path, device: str = "auto"):
        # A typo in the setting fails at start-up, not as an other_error on every cosine score.
        if not (directory / "config.json").is_file():
            raise ValueError(f"FTSERVE_GRADER_EMBEDDINGS_MODEL={directory} is not a model directory (no config.json).")
        self.directory = directory
        self.device = device
        self._loaded: tuple[Any, Any] | None = None
        # One forward pass at a time: the model is shared by every request, and loading it twice wastes memory.
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        import torch

        with self._lock:
            model, tokenizer = self._model()
            batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            batch = {key: value.to(model.device) for key, value in batch.items()}
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            return [[float(x) for x in row] for row in pooled.float().cpu().tolist()]

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            import torch
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.directory)
            if tokenizer.pad_token is None:  # decoder models often have none; padding is masked out anyway
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right"
            device = "cuda" if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()) else "cpu"
            model = AutoModel.from_pretrained(self.directory).to(device).eval()
            self._loaded = (model, tokenizer)
        return self._loaded
