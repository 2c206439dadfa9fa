"""GGUF export: the file loads back as the same model and the same tokenizer, and is what llama.cpp's
own converter would have written.

Most checks use tiny random models (hidden 64, two layers) that carry the default model's real
tokenizer, so they take seconds. Their q and k weights are scaled up so attention depends sharply on
position: with the usual small initialisation attention is nearly uniform, and a wrong rotary layout
would go unnoticed. The f16 check also shows that the wrong layout would fail it.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import gguf
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ftserve.engine.gguf_export import GgufExportError, write_gguf
from ftserve.engine.spec import ModelSource

pytestmark = pytest.mark.engine

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
QUESTIONS = ("What is the capital of France?", "Write a haiku about the sea.", "Name three colours, please.")
MODELS: dict[str, tuple[type, type]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def tiny_model(directory: Path, kind: str, tokenizer_dir: Path) -> PreTrainedModel:
    """A random model with the default model's tokenizer beside it, saved in several shards."""
    config_class, model_class = MODELS[kind]
    config = config_class(
        vocab_size=49152, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.1,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                projection.weight.mul_(4.0)
                if projection.bias is not None:  # qwen2 starts its biases at zero, which would test nothing
                    projection.bias.normal_(0.0, 1.0)
    model.save_pretrained(directory, max_shard_size="5MB")
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, directory / name)
    return model


def chat_prompts(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    return [
        cast(list[int], tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                      tokenize=True, return_dict=False))
        for q in QUESTIONS
    ]


def next_token_logits(model: PreTrainedModel, prompts: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(torch.tensor([ids])).logits[0, -1] for ids in prompts])


def load_gguf_model(path: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def rotate_half_misread_as_interleaved(model: PreTrainedModel) -> PreTrainedModel:
    """What a loader gets from q/k weights left in Hugging Face's layout: transformers' GGUF loader
    undoes llama.cpp's interleaving, which on rows that were never interleaved scrambles them."""
    scrambled = copy.deepcopy(model)
    config = scrambled.config
    for layer in scrambled.model.layers:
        for projection, heads in ((layer.self_attn.q_proj, config.num_attention_heads),
                                  (layer.self_attn.k_proj, config.num_key_value_heads)):
            w = projection.weight.data
            projection.weight.data = w.reshape(heads, w.shape[0] // heads // 2, 2, -1).transpose(1, 2).reshape(w.shape)
    return scrambled


def with_matrices_in_f16(model: PreTrainedModel) -> PreTrainedModel:
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            if parameter.dim() == 2:
                parameter.copy_(parameter.half().float())
    return rounded


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Mean absolute difference, in units of the logits' spread."""
    return float((actual - expected).abs().mean() / expected.std())


@pytest.fixture(scope="module")
def hf_tokenizer(default_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def original_gguf(default_model: ModelSource) -> Path:
    """The GGUF llama.cpp's converter made of the default model, which ftserve's copy came from."""
    found = importlib.util.find_spec(str(default_model.package))
    assert found is not None and found.submodule_search_locations
    return Path(next(iter(found.submodule_search_locations))) / str(default_model.gguf_file)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Callable[[str], tuple[Path, PreTrainedModel]]:
    made: dict[str, tuple[Path, PreTrainedModel]] = {}

    def make(kind: str) -> tuple[Path, PreTrainedModel]:
        if kind not in made:
            directory = tmp_path_factory.mktemp(f"tiny-{kind}")
            made[kind] = (directory, tiny_model(directory, kind, default_model_dir))
        return made[kind]

    return make


@pytest.fixture(scope="module")
def default_exports(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("exports")
    return {q: write_gguf(default_model_dir, directory / f"SmolLM2-135M-Instruct.{q}.gguf", q) for q in ("f16", "q8_0")}


@functools.cache
def read(path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)  # parsing 100,000 token strings takes seconds: once per file


def tiny_copy(tiny: Callable[[str], tuple[Path, PreTrainedModel]], into: Path,
              **config_changes: object) -> tuple[Path, dict[str, Any]]:
    """A copy of the tiny llama at `into`, to change, with `config_changes` written into its config.json; the
    config as written."""
    directory, _ = tiny("llama")
    shutil.copytree(directory, into)
    config = {**json.loads((into / "config.json").read_text()), **config_changes}
    (into / "config.json").write_text(json.dumps(config))
    return into, config


def fields(path: Path, prefix: str) -> dict[str, object]:
    return {k: f.contents() for k, f in read(path).fields.items() if k.startswith(prefix)}


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_exported_files_load_back_as_the_same_model(
    kind: str, tiny: Callable[[str], tuple[Path, PreTrainedModel]], hf_tokenizer: PreTrainedTokenizerBase,
    tmp_path: Path,
) -> None:
    directory, model = tiny(kind)
    prompts = chat_prompts(hf_tokenizer)
    expected = next_token_logits(model, prompts)

    f16 = next_token_logits(load_gguf_model(write_gguf(directory, tmp_path / "model.f16.gguf", "f16")), prompts)

    # Nothing changed but the rounding of the matrices to f16: every layout and name came back right.
    torch.testing.assert_close(f16, next_token_logits(with_matrices_in_f16(model), prompts), rtol=0, atol=1e-4)
    assert relative_error(f16, expected) < 0.02
    if kind != "qwen2":  # llama.cpp runs qwen2 with Hugging Face's own rotary layout: nothing to re-order
        scrambled = next_token_logits(rotate_half_misread_as_interleaved(model), prompts)
        assert relative_error(scrambled, expected) > 0.5


def test_q8_0_file_stores_tensors_as_llama_cpp_does(
    tiny: Callable[[str], tuple[Path, PreTrainedModel]], tmp_path: Path,
) -> None:
    directory, _ = tiny("llama")

    q8 = write_gguf(directory, tmp_path / "model.q8_0.gguf", "q8_0")

    # Matrices in q8_0 but for rows that fill no whole 32-value block (ffn_down's 80) in f16,
    # norms in f32, and no output matrix when the embeddings are tied.
    reader = gguf.GGUFReader(q8)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.1.ffn_norm.weight"] == types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in types
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_gguf_tokenizer_encodes_a_chat_the_same_and_carries_the_chat_template(
    tiny: Callable[[str], tuple[Path, PreTrainedModel]], hf_tokenizer: PreTrainedTokenizerBase, tmp_path: Path,
) -> None:
    directory, _ = tiny("llama")
    path = write_gguf(directory, tmp_path / "model.gguf", "q8_0")

    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    assert loaded.chat_template == hf_tokenizer.chat_template
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Paris? Tell me, friend!"},
                {"role": "assistant", "content": "In France."}, {"role": "user", "content": "And Rome?"}]
    text = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert loaded(text)["input_ids"] == hf_tokenizer(text)["input_ids"]
    assert (loaded.bos_token, loaded.eos_token) == (hf_tokenizer.bos_token, hf_tokenizer.eos_token)


def test_tokenizer_built_from_tokenizer_json_matches_llama_cpps_own_conversion(
    tiny: Callable[[str], tuple[Path, PreTrainedModel]], original_gguf: Path, tmp_path: Path,
) -> None:
    directory, _ = tiny("llama")
    path = write_gguf(directory, tmp_path / "model.gguf", "q8_0")

    # Tokens, token types, merges, special ids, the pre-tokenizer name and the add-BOS flag alike.
    assert fields(path, "tokenizer.") == fields(original_gguf, "tokenizer.")


def test_source_gguf_lends_its_tokenizer_but_the_chat_template_comes_from_the_model(
    tiny: Callable[[str], tuple[Path, PreTrainedModel]], original_gguf: Path, tmp_path: Path,
) -> None:
    model_dir, _ = tiny_copy(tiny, tmp_path / "fine-tuned")
    template = "{% for message in messages %}{{ message['content'] }}<|im_end|>{% endfor %}"
    (model_dir / "chat_template.jinja").write_text(template)
    (model_dir / "tokenizer.json").unlink()  # copying must not need it

    path = write_gguf(model_dir, tmp_path / "model.gguf", "f16", source_gguf=original_gguf, name="ft:smol:recipes")

    assert fields(path, "general.name") == {"general.name": "ft:smol:recipes"}
    written, original = fields(path, "tokenizer."), fields(original_gguf, "tokenizer.")
    assert written.pop("tokenizer.chat_template") == template
    original.pop("tokenizer.chat_template")
    assert written == original


def test_the_default_model_exports_as_llama_cpp_converted_it(default_exports: dict[str, Path], original_gguf: Path) -> None:
    path = default_exports["f16"]

    assert fields(path, "llama.") == fields(original_gguf, "llama.")
    written = {t.name: t for t in read(path).tensors}
    original = {t.name: t for t in read(original_gguf).tensors}
    assert written.keys() == original.keys()
    # ftserve's weights were dequantised from that very file, so q and k must come back in
    # llama.cpp's layout, row for row.
    for name in ("blk.0.attn_q.weight", "blk.29.attn_k.weight"):
        ours = gguf.quants.dequantize(written[name].data, written[name].tensor_type)
        theirs = gguf.quants.dequantize(original[name].data, original[name].tensor_type)
        np.testing.assert_allclose(ours, theirs, atol=2e-3 * float(np.abs(theirs).max()))


def test_the_default_model_in_q8_0_answers_as_it_did_and_takes_half_the_space(
    default_exports: dict[str, Path], default_model_dir: Path, hf_tokenizer: PreTrainedTokenizerBase,
) -> None:
    prompts = chat_prompts(hf_tokenizer)
    expected = next_token_logits(AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval(), prompts)

    actual = next_token_logits(load_gguf_model(default_exports["q8_0"]), prompts)

    assert actual.argmax(-1).tolist() == expected.argmax(-1).tolist()
    divergence = torch.nn.functional.kl_div(actual.log_softmax(-1), expected.log_softmax(-1), log_target=True,
                                            reduction="none").sum(-1)
    assert divergence.max() < 0.02  # nats: 0.005 measured; a wrong q/k layout gives 1 to 2
    assert default_exports["q8_0"].stat().st_size < 0.6 * default_exports["f16"].stat().st_size


def test_an_unsupported_architecture_is_refused_by_name_and_leaves_no_file(
    tiny: Callable[[str], tuple[Path, PreTrainedModel]], tmp_path: Path,
) -> None:
    model_dir, _ = tiny_copy(tiny, tmp_path / "phi", architectures=["PhiForCausalLM"])
    out = tmp_path / "out"

    with pytest.raises(GgufExportError, match=r"PhiForCausalLM.*supported: Gemma3ForCausalLM, LlamaForCausalLM, MistralForCausalLM, Phi3ForCausalLM"):
        write_gguf(model_dir, out / "model.gguf")

    assert not out.exists() or not any(out.iterdir())


def test_a_failure_while_writing_leaves_the_previous_file_untouched_and_no_partial_one(
    tiny: Callable[[str], tuple[Path, PreTrainedModel]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory, _ = tiny("llama")
    target = tmp_path / "model.gguf"
    target.write_bytes(b"the previous export")
    written: list[int] = []

    def disk_fills_up(self: gguf.GGUFWriter, tensor: np.ndarray) -> None:
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        written.append(tensor.nbytes)
        original_write(self, tensor)

    original_write = gguf.GGUFWriter.write_tensor_data
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", disk_fills_up)

    with pytest.raises(OSError, match="No space left"):
        write_gguf(directory, target, "f16")

    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
    assert target.read_bytes() == b"the previous export"


def test_a_tokenizer_neither_byte_level_nor_sentencepiece_needs_the_base_gguf(
    tiny: Callable[[str], tuple[Path, PreTrainedModel]], tmp_path: Path,
) -> None:
    model_dir, _ = tiny_copy(tiny, tmp_path / "sentencepiece")
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    spec["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}
    (model_dir / "tokenizer.json").write_text(json.dumps(spec))

    with pytest.raises(GgufExportError, match="neither a byte-level BPE nor a SentencePiece.*source_gguf"):
        write_gguf(model_dir, tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()


def test_llama_3_1_rope_scaling_is_written_as_the_factors_transformers_divides_by(
    tiny: Callable[[str], tuple[Path, PreTrainedModel]], tmp_path: Path,
) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    model_dir, config = tiny_copy(tiny, tmp_path / "llama3.1", rope_parameters=rope)

    path = write_gguf(model_dir, tmp_path / "model.gguf", "q8_0")

    # llama.cpp divides each rotary frequency by its factor in rope_freqs, as transformers' llama3 scaling does.
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**config), "cpu")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    unscaled = 1.0 / 500000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    written = {t.name: t for t in gguf.GGUFReader(path).tensors}["rope_freqs.weight"]
    assert written.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_allclose(np.asarray(written.data), (unscaled / scaled).numpy(), rtol=1e-5)
    assert len({round(float(f), 3) for f in written.data}) > 2  # unscaled, scaled and smoothed frequencies
