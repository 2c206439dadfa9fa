"""The memory estimate (engine/memory.py): its parts for known shapes, worked out by hand here, and how the job's
choices move it."""

from __future__ import annotations

import pytest

from ftserve.catalogue import config_of, load_catalogue
from ftserve.engine import memory
from ftserve.engine.memory import GIB, Job, Machine, Shape
from ftserve.engine.spec import TrainingType

SMOL = config_of(load_catalogue()["SmolLM2-135M-Instruct"])
# Qwen2.5-7B-Instruct's config.json, its shape keys.
QWEN_7B = {"num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
CPU = Machine(half=False, eager_attention=True)
GPU = Machine(half=True, eager_attention=False)


def test_the_default_model_on_the_cpu_by_hand() -> None:
    assert SMOL is not None
    # 30 layers of 576 wide, MLP 1536, 9 heads of 64 (3 for k and v), 49,152 tokens, tied head.
    attention = 576 * 576 + 2 * 576 * 192 + 576 * 576
    mlp = 3 * 576 * 1536
    params = 30 * (attention + mlp + 2 * 576) + 576 + 49152 * 576
    assert Shape.of(SMOL).params == params == 134_515_008  # SmolLM2-135M's published count
    adapter = 30 * 16 * (2 * (576 + 576) + 2 * (576 + 192) + 2 * (576 + 1536) + (1536 + 576))  # all-linear, r=16
    tokens = 4 * 256
    per_layer = (10 * 576 + 4 * 1536) * 4 + 9 * 256 * (4 + 8)  # fp32, eager attention's scores
    expected = [params * 4, adapter * 16, tokens * 30 * per_layer, tokens * 49152 * 8]

    found = memory.estimate(SMOL, Job("lora", sequences=4, seq_len=256), CPU)

    parts = [found.weights_gb, found.trainable_gb, found.activations_gb, found.logits_gb]
    assert parts == [pytest.approx(value / GIB, abs=1e-3) for value in expected]
    assert found.total_gb == pytest.approx(sum(expected) / GIB + 1.0, abs=0.01)
    assert "0.13B params (fp32)" in found.basis and "4 x 256 tokens" in found.basis


def test_a_7b_model_on_a_gpu_by_hand() -> None:
    per_layer_linear = 2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944
    params = 28 * (per_layer_linear + 2 * 3584) + 3584 + 2 * 152064 * 3584
    assert params / 1e9 == pytest.approx(7.62, abs=0.01)  # Qwen2.5-7B, biases aside
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    adapter = 28 * 8 * ((3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584))

    lora = memory.estimate(QWEN_7B, Job("lora", 1, 2048, lora_rank=8, lora_targets=targets), GPU)

    assert lora.weights_gb == pytest.approx(params * 2 / GIB, abs=1e-3)  # bf16 frozen base
    assert lora.trainable_gb == pytest.approx(adapter * 16 / GIB, abs=1e-3)
    assert lora.activations_gb == pytest.approx(2048 * 28 * (10 * 3584 + 4 * 18944) * 2 / GIB, abs=1e-3)
    assert lora.logits_gb == pytest.approx(2048 * 152064 * 8 / GIB, abs=1e-3)
    full = memory.estimate(QWEN_7B, Job("full", 1, 2048), GPU)
    assert full.weights_gb == pytest.approx(params * 16 / GIB, abs=1e-3) and full.trainable_gb == 0
    qlora = memory.estimate(QWEN_7B, Job("qlora", 1, 2048, lora_rank=8, lora_targets=targets), GPU)
    quantised = 28 * per_layer_linear
    assert qlora.weights_gb == pytest.approx((quantised * memory.NF4_BYTES + (params - quantised) * 4) / GIB, abs=1e-3)


@pytest.mark.parametrize("machine", [CPU, GPU])
def test_checkpointing_lowers_it_and_qlora_is_below_lora_below_full(machine: Machine) -> None:
    def found(training_type: TrainingType, checkpointing: bool = False) -> memory.MemoryEstimate:
        return memory.estimate(QWEN_7B, Job(training_type, 4, 1024, gradient_checkpointing=checkpointing), machine)

    assert found("lora", checkpointing=True).activations_gb < found("lora").activations_gb / 10
    assert found("lora", checkpointing=True).total_gb < found("lora").total_gb
    assert found("qlora").total_gb < found("lora").total_gb < found("full").total_gb


def test_dpo_rows_count_twice_and_a_multimodal_config_is_read_from_its_text_config() -> None:
    assert memory.sequences_per_step("dpo", 4) == 8
    assert memory.sequences_per_step("reinforcement", 4, group_size=8) == 32
    nested = {"model_type": "gemma3", "text_config": {**QWEN_7B}}
    assert Shape.of(nested) == Shape.of(QWEN_7B)


def test_auto_checkpointing_only_when_it_is_needed_and_the_field_to_lower() -> None:
    job = Job("lora", 8, 1024)
    without = memory.estimate(QWEN_7B, job, GPU).total_gb
    with_it = memory.estimate(QWEN_7B, Job("lora", 8, 1024, gradient_checkpointing=True), GPU).total_gb

    roomy = memory.plan(QWEN_7B, job, GPU, without + 1)
    assert roomy.fits and not roomy.estimate.gradient_checkpointing
    tight = memory.plan(QWEN_7B, job, GPU, (without + with_it) / 2)
    assert tight.fits and tight.estimate.gradient_checkpointing
    refused = memory.plan(QWEN_7B, job, GPU, with_it - 1)
    assert not refused.fits
    assert memory.culprit(refused.estimate, with_it - 1, "lora", batch_size=8) == "hyperparameters.batch_size"
    assert memory.culprit(refused.estimate, with_it - 1, "lora", batch_size=1) == "ftserve.max_seq_length"
    # The model alone is over: its training type is what to change.
    assert memory.culprit(refused.estimate, 10, "lora", batch_size=8) == "ftserve.training_type"
    assert not memory.plan(QWEN_7B, job, GPU, without + 1, checkpointing=False).estimate.gradient_checkpointing


def test_a_config_that_names_its_shape_otherwise_is_not_estimated() -> None:
    gpt2 = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257}
    assert not memory.readable(gpt2) and not memory.readable(None) and memory.readable(QWEN_7B)
    with pytest.raises(memory.UnknownShape, match="no num_attention_heads"):
        memory.estimate(gpt2, Job("lora", 1, 16), CPU)


def test_every_local_catalogue_model_has_a_shape_to_estimate_from() -> None:
    for base in load_catalogue().values():
        if base.provider is None:
            config = config_of(base)
            assert config is not None, base.id
            assert Shape.of(config).params > 1e8, base.id
