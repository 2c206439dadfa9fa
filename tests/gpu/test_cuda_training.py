"""The engine on CUDA: the same recipe trains on the GPU, in bf16, and learns. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ftserve.engine import sft
from ftserve.engine.events import Metrics, Started
from ftserve.engine.hardware import detect
from ftserve.engine.sink import MemorySink
from ftserve.engine.spec import JobSpec, ModelSource
from tests.conftest import MODEL_CACHE
from tests.tasks import chat_examples, jsonl

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_auto_picks_cuda_with_bf16() -> None:
    hardware = detect("auto")
    assert hardware.device.type == "cuda" and hardware.bf16 == torch.cuda.is_bf16_supported()


@pytest.mark.parametrize("training_type", ["lora", "full"])
def test_a_job_trains_on_the_gpu(tmp_path: Path, default_model: ModelSource, default_model_dir: Path,
                                 training_type: str) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(chat_examples(64)))
    spec = JobSpec(
        job_id="ftjob-gpu", method="supervised", model=default_model, training_file=data,
        output_dir=tmp_path / "out", cache_dir=MODEL_CACHE, n_epochs=2, batch_size=8,
        learning_rate=1e-3 if training_type == "lora" else 5e-5, seed=1, training_type=training_type,
    )
    sink = MemorySink()
    sft.run(spec, sink)
    losses = [e.metrics["train_loss"] for e in sink.of(Metrics)]
    assert sink.of(Started)[0].hardware.startswith(torch.cuda.get_device_name())
    assert losses[-1] < losses[0] / 2
