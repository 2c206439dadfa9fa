"""The models a server holds in memory: one copy of each base, with LoRA adapters switched per request.

A LoRA fine-tune is a few megabytes on top of its base, so every adapter of a base shares the
base's weights: the first adapter wraps the base in a PEFT model, later ones are added to it,
and a request picks its adapter by name (or switches adapters off to reach the base itself).
Fully fine-tuned models are separate copies. Fine-tuned weights are kept in least-recently-used
order within a memory bound; base models stay loaded.

One model runs at a time: a generation holds the pool for its whole length, because adapter
switching changes shared modules and a CPU has no cores left for a second one anyway.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ftserve.engine.artifacts import MANIFEST
from ftserve.engine.spec import ModelSource
from ftserve.inference import engine_gateway as engine
from ftserve.inference.interface import ArtifactKind, Target

if TYPE_CHECKING:  # loaded with the first model, not with the server (see engine_gateway)
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ftserve.inference.engine_gateway import Encoder, Hardware

@dataclass(frozen=True)
class Text:
    """What a request needs before any weights load: how to write prompts and how long they may be."""

    tokenizer: PreTrainedTokenizerBase
    encoder: Encoder
    context_length: int


class ModelPool:
    def __init__(self, cache_dir: Path, device: Literal["auto", "cpu", "cuda"] = "auto", cache_bytes: int = 2 << 30):
        self.cache_dir = cache_dir
        self.device = device
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._hardware: Hardware | None = None
        # A base's PreTrainedModel, or the PeftModel that wraps it while it carries adapters.
        self._bases: dict[str, Any] = {}
        self._tuned: OrderedDict[str, tuple[str, int]] = OrderedDict()  # name -> (base id or "", bytes)
        self._full: dict[str, PreTrainedModel] = {}
        self._texts: dict[Path, Text] = {}
        self._text_lock = threading.Lock()

    @property
    def hardware(self) -> Hardware:
        if self._hardware is None:
            self._hardware = engine.detect(self.device)
        return self._hardware

    @property
    def dtype(self) -> torch.dtype:
        import torch

        # bf16 on GPUs; fp32 on CPUs, where decoding one token at a time gains little from bf16.
        return torch.bfloat16 if self.hardware.device.type == "cuda" and self.hardware.bf16 else torch.float32

    def base_dir(self, source: ModelSource) -> Path:
        return engine.local_dir(source, self.cache_dir)

    def text(self, target: Target) -> Text:
        """The tokenizer and context length of a target, loaded once per directory."""
        directory = target.artifact if target.kind == "full" else self.base_dir(target.base)
        assert directory is not None
        with self._text_lock:
            if directory not in self._texts:
                from transformers import AutoConfig

                tokenizer = engine.load_tokenizer(directory)
                config = AutoConfig.from_pretrained(directory)
                length = int(getattr(config, "max_position_embeddings", 0) or 2048)
                self._texts[directory] = Text(tokenizer, engine.Encoder(tokenizer, length), length)
            return self._texts[directory]

    @contextmanager
    def session(self, target: Target) -> Iterator[PreTrainedModel]:
        """The target's model, ready to run, held by this caller alone until the block ends."""
        with self._lock:
            if target.kind == "full":
                yield self._full_model(target)
            elif target.kind == "adapter":
                model = self._with_adapter(target)
                yield model
            else:
                model = self._base(target.base)
                disabled = getattr(model, "disable_adapter", None)  # once an adapter wraps the base
                if disabled is None:
                    yield model
                else:
                    with disabled():
                        yield model

    def evict(self, name: str) -> None:
        """Forget a fine-tuned model (it was deleted)."""
        with self._lock:
            self._drop(name)

    def loaded(self) -> dict[str, Any]:
        """What is in memory, for tests and benchmarks."""
        with self._lock:
            return {"bases": sorted(self._bases), "fine_tuned": list(self._tuned),
                    "fine_tuned_bytes": {name: size for name, (_, size) in self._tuned.items()}}

    # Loading, under the lock.

    def _base(self, source: ModelSource) -> PreTrainedModel:
        from transformers import AutoModelForCausalLM

        if source.id not in self._bases:
            model = AutoModelForCausalLM.from_pretrained(
                self.base_dir(source), dtype=self.dtype, attn_implementation=self.hardware.attention
            )
            self._bases[source.id] = model.to(self.hardware.device).eval()  # type: ignore[arg-type]  # transformers types its decorated .to() as if unbound
        return self._bases[source.id]

    def _with_adapter(self, target: Target) -> PreTrainedModel:
        from peft import PeftModel

        model: Any = self._base(target.base)  # the base, or the PeftModel already wrapping it
        key = _adapter_key(target.name)
        if target.name not in self._tuned:
            if isinstance(model, PeftModel):
                model.load_adapter(str(target.artifact), adapter_name=key)
            else:
                model = PeftModel.from_pretrained(model, str(target.artifact), adapter_name=key)
                self._bases[target.base.id] = model.eval()
            size = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if f".{key}." in n)
            self._remember(target.name, target.base.id, size)
        self._tuned.move_to_end(target.name)
        model.set_adapter(key)
        return model

    def _full_model(self, target: Target) -> PreTrainedModel:
        from transformers import AutoModelForCausalLM

        if target.name not in self._full:
            assert target.artifact is not None, "a fully fine-tuned target is its own directory"
            model = AutoModelForCausalLM.from_pretrained(
                target.artifact, dtype=self.dtype, attn_implementation=self.hardware.attention
            ).to(self.hardware.device).eval()  # type: ignore[arg-type]  # as in _base
            self._full[target.name] = model
            self._remember(target.name, "", sum(p.numel() * p.element_size() for p in model.parameters()))
        self._tuned.move_to_end(target.name)
        return self._full[target.name]

    def _remember(self, name: str, base: str, size: int) -> None:
        self._tuned[name] = (base, size)
        self._tuned.move_to_end(name)
        # Evict the least recently used until the rest fits; the model just loaded always stays.
        while sum(s for _, s in self._tuned.values()) > self.cache_bytes and len(self._tuned) > 1:
            self._drop(next(iter(self._tuned)))

    def _drop(self, name: str) -> None:
        entry = self._tuned.pop(name, None)
        if entry is None:
            return
        base, _ = entry
        if not base:
            del self._full[name]
            return
        model = self._bases[base]
        if any(b == base for b, _ in self._tuned.values()):
            model.delete_adapter(_adapter_key(name))
        else:  # its last adapter: give the base back its plain modules
            self._bases[base] = model.unload().eval()
        if self.hardware.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def _adapter_key(name: str) -> str:
    # PEFT keeps adapters in module dicts, whose keys may not contain the dots of some model names.
    return "ft_" + hashlib.sha256(name.encode()).hexdigest()[:16]


def artifact_kind(directory: Path) -> ArtifactKind | None:
    """Whether a fine-tuned model directory holds a LoRA adapter or full weights (None: neither)."""
    manifest = directory / MANIFEST
    if (directory / "adapter_config.json").exists():
        return "adapter"
    if (directory / "config.json").exists() and manifest.exists():
        return "full"
    return None


def manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}
