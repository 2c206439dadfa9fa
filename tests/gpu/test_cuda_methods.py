"""Every training method and export on CUDA: QLoRA, DPO, packed supervised batches, and the adapter, merged and GGUF
exports of a model trained on the GPU. Skipped without a GPU (LoRA and full: test_cuda_training.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ftserve.engine import dpo, export, sft
from ftserve.engine.events import Finished, Metrics
from ftserve.engine.sink import MemorySink
from ftserve.engine.spec import JobSpec, ModelSource
from tests.conftest import MODEL_CACHE
from tests.tasks import chat_examples, jsonl, preference_examples

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _train(tmp_path: Path, model: ModelSource, method: str, examples: list[dict], **options: object) -> MemorySink:
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(examples))
    spec = JobSpec.model_validate({
        "job_id": "ftjob-gpu", "method": method, "model": model, "training_file": data,
        "output_dir": tmp_path / "out", "cache_dir": MODEL_CACHE, "n_epochs": 2, "batch_size": 8, "seed": 1,
        "learning_rate": 1e-3, **options,
    })
    sink = MemorySink()
    (dpo if method == "dpo" else sft).run(spec, sink)
    return sink


def _losses(sink: MemorySink) -> list[float]:
    return [e.metrics["train_loss"] for e in sink.of(Metrics) if "train_loss" in e.metrics]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason="QLoRA needs bitsandbytes (pip install 'ftserve[gpu]')")
def test_qlora_trains_on_the_gpu_and_saves_a_lora_adapter(tmp_path: Path, default_model: ModelSource,
                                                          default_model_dir: Path) -> None:
    sink = _train(tmp_path, default_model, "supervised", chat_examples(64), training_type="qlora",
                  gradient_checkpointing=True)
    losses = _losses(sink)
    assert losses[-1] < losses[0] / 2
    model_dir = sink.of(Finished)[0].model_dir
    assert model_dir is not None
    # An adapter like LoRA's, which goes on the unquantised base to be served and exported.
    assert json.loads((model_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert json.loads((model_dir / "ftserve_model.json").read_text())["training_type"] == "qlora"
    merged = export.export_merged(default_model_dir, model_dir, tmp_path / "merged")
    assert any(merged.glob("*.safetensors"))


def test_dpo_prefers_the_chosen_answers(tmp_path: Path, default_model: ModelSource) -> None:
    losses = _losses(_train(tmp_path, default_model, "dpo", preference_examples(64), learning_rate=2e-4))
    assert losses[-1] < losses[0]


def test_packed_batches_learn_like_padded_ones(tmp_path: Path, default_model: ModelSource) -> None:
    padded = _losses(_train(tmp_path / "padded", default_model, "supervised", chat_examples(64)))
    packed = _losses(_train(tmp_path / "packed", default_model, "supervised", chat_examples(64), packing=True))
    assert packed[-1] < packed[0] / 2
    # Same examples, same order, same loss per step; bf16 on the GPU rounds the two layouts differently.
    assert packed[0] == pytest.approx(padded[0], rel=2e-2)


def test_exports_of_a_model_trained_on_the_gpu(tmp_path: Path, default_model: ModelSource,
                                               default_model_dir: Path) -> None:
    model_dir = _train(tmp_path, default_model, "supervised", chat_examples(32)).of(Finished)[0].model_dir
    assert model_dir is not None
    adapter = export.export_adapter(model_dir, tmp_path / "adapter")
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    merged = export.export_merged(default_model_dir, model_dir, tmp_path / "merged")
    assert any(merged.glob("*.safetensors"))
    gguf = export.export_gguf(default_model_dir, model_dir, tmp_path / "model.gguf", "q8_0")
    assert gguf.read_bytes()[:4] == b"GGUF"
