"""`ftserve.training_type="qlora"` and `ftserve.gradient_checkpointing` on every provider: each says what it does
with them in the dry run (as is, converted, or dropped, which create then refuses), none passes them silently."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import respx

from ftserve.catalogue import load_catalogue
from ftserve.providers.contract import Provider, ProviderUnsupported
from ftserve.providers.local import LocalProvider
from tests.unit.test_providers_contract import MODELS, job, providers  # noqa: F401  # providers is a fixture


def _qlora(providers: dict[str, Provider], name: str, tmp_path: Path, **options: object) -> tuple[dict, dict, dict]:
    request = job(tmp_path, MODELS[name])
    request = dataclasses.replace(request, options={"training_type": "qlora", **options})
    with respx.mock(assert_all_mocked=True, assert_all_called=False):  # any HTTP request fails the test
        resolved = providers[name].resolve(request)
    return resolved.native, {c.field: c for c in resolved.converted}, {c.field: c for c in resolved.dropped}


def test_together_trains_its_lora_and_says_so(providers: dict[str, Provider], tmp_path: Path) -> None:
    _, converted, dropped = _qlora(providers, "together", tmp_path)
    assert "no 4-bit QLoRA base" in converted["ftserve.training_type"].reason
    assert "ftserve.training_type" not in dropped


def test_runpod_trains_qlora_with_axolotl(providers: dict[str, Provider], tmp_path: Path) -> None:
    native, converted, _ = _qlora(providers, "runpod", tmp_path)
    assert native["input"]["args"]["adapter"] == "qlora" and native["input"]["args"]["load_in_4bit"] is True
    assert converted["ftserve.training_type"].native_value == "qlora"


@pytest.mark.parametrize("name", ["fireworks", "bedrock", "openai"])
def test_providers_without_a_4_bit_base_drop_it(providers: dict[str, Provider], tmp_path: Path, name: str) -> None:
    _, converted, dropped = _qlora(providers, name, tmp_path)
    assert dropped["ftserve.training_type"].reason and "ftserve.training_type" not in converted


def test_another_ftserve_gets_both_options_as_sent(providers: dict[str, Provider], tmp_path: Path) -> None:
    native, _, dropped = _qlora(providers, "remote-lab", tmp_path, gradient_checkpointing=True)
    assert not dropped and '"training_type": "qlora"' in json.dumps(native)


@pytest.mark.parametrize("name", ["together", "fireworks", "bedrock", "runpod", "openai"])
def test_gradient_checkpointing_is_dropped_where_the_provider_manages_memory(
        providers: dict[str, Provider], tmp_path: Path, name: str) -> None:
    request = dataclasses.replace(job(tmp_path, MODELS[name]), options={"gradient_checkpointing": True})
    with respx.mock(assert_all_mocked=True, assert_all_called=False):
        dropped = {c.field: c.reason for c in providers[name].resolve(request).dropped}
    assert dropped.get("ftserve.gradient_checkpointing")


def test_the_local_engine_on_the_cpu_refuses_it_naming_the_field(providers: dict[str, Provider], tmp_path: Path) -> None:
    with pytest.raises(ProviderUnsupported) as refused:
        _qlora(providers, "local", tmp_path)
    assert refused.value.param == "ftserve.training_type" and "QLoRA needs a CUDA GPU" in refused.value.message


def test_on_a_gpu_without_bitsandbytes_the_local_engine_refuses_it_naming_the_field(tmp_path: Path) -> None:
    gpu = LocalProvider(load_catalogue(), Path("models"), cuda=True)
    assert "qlora" in gpu.capabilities().training_types
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    request = dataclasses.replace(job(tmp_path, MODELS["local"]), options={"training_type": "qlora"})
    with pytest.raises(ProviderUnsupported) as refused:
        gpu.spec(request)
    assert refused.value.param == "ftserve.training_type" and "QLoRA needs bitsandbytes" in refused.value.message
