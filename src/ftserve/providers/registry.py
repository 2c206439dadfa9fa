"""Providers by name: `FTSERVE_PROVIDERS` configures the hosted ones.

A job's model id picks where it runs (`route`): a catalogue model runs here, unless its entry names
a provider; `NAME/model` runs on the provider configured as NAME, with `model` in that provider's
own naming. Hosted adapters are imported on first use, so a server without a provider's SDK
starts, and fails only the jobs sent there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ftserve.catalogue import CatalogueEntry
from ftserve.config import Settings
from ftserve.domain.errors import InvalidRequest
from ftserve.providers.contract import HostedProvider, Provider, ProviderKind
from ftserve.engine.spec import PythonGraderLimits
from ftserve.providers.local import LocalProvider

# Where each hosted kind's adapter lives: `module:Class`, imported when a provider of that kind is configured.
HOSTED: dict[ProviderKind, str] = {
    "openai_compatible": "ftserve.providers.openai_compatible_api:OpenAICompatibleProvider",
    "together": "ftserve.providers.together_api:TogetherProvider",
    "fireworks": "ftserve.providers.fireworks_api:FireworksProvider",
    "bedrock": "ftserve.providers.bedrock_api:BedrockProvider",
    "runpod": "ftserve.providers.runpod_api:RunpodProvider",
}

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class ProviderConfigError(Exception):
    """The provider configuration cannot be used; the message names the provider and the setting."""


@dataclass(frozen=True)
class Route:
    """Where a job's model runs: the provider, its configured name (None: here), and the model in its naming."""

    provider: Provider
    name: str | None
    model: str
    options: Mapping[str, Any] = field(default_factory=dict)
    """The operator's provider options (the configuration's `options`), applied to every job under the tenant's."""


class Providers:
    """The local provider plus every configured hosted one, by name."""

    def __init__(self, local: LocalProvider, hosted: dict[str, HostedProvider], catalogue: dict[str, CatalogueEntry],
                 options: dict[str, dict[str, Any]] | None = None):
        self.local = local
        self.hosted = hosted
        self.catalogue = catalogue
        self.options = options or {}
        """The operator's provider options, by provider name."""

    def route(self, model: str) -> Route:
        """Where `model` trains. Raises `InvalidRequest` naming the providers when a prefix is not configured."""
        entry = self.catalogue.get(model)
        if entry is not None and entry.provider is not None:
            return Route(self.get(entry.provider, param="model"), entry.provider, entry.provider_model or model,
                         self.options.get(entry.provider, {}))
        if entry is not None or "/" not in model:
            return Route(self.local, None, model)
        prefix, rest = model.split("/", 1)
        if prefix in self.hosted:
            return Route(self.hosted[prefix], prefix, rest, self.options.get(prefix, {}))
        if prefix in HOSTED or prefix.startswith("remote-"):
            raise InvalidRequest(
                f"Model '{model}' names the provider '{prefix}', which this server does not configure. "
                f"Configured providers: {', '.join(sorted(self.hosted)) or 'none'} (set FTSERVE_PROVIDERS).",
                param="model", code="model_not_available",
            )
        return Route(self.local, None, model)

    def get(self, name: str, *, param: str | None = None) -> HostedProvider:
        provider = self.hosted.get(name)
        if provider is None:
            raise InvalidRequest(
                f"The provider '{name}' is not configured on this server. "
                f"Configured providers: {', '.join(sorted(self.hosted)) or 'none'} (set FTSERVE_PROVIDERS).",
                param=param,
            )
        return provider


def connections(settings: Settings) -> dict[str, dict[str, Any]]:
    """The configured providers: `providers_file` first, then `FTSERVE_PROVIDERS`, which wins by name."""
    merged: dict[str, dict[str, Any]] = {}
    if settings.providers_file is not None:
        merged.update(_read_file(settings.providers_file))
    merged.update(settings.providers)
    return merged


def providers_for(settings: Settings, catalogue: dict[str, CatalogueEntry]) -> Providers:
    python_graders = PythonGraderLimits(
        enabled=settings.python_graders, cpu_seconds=settings.python_grader_cpu_seconds,
        wall_seconds=settings.python_grader_wall_seconds, memory_mb=settings.python_grader_memory_mb,
    )
    local = LocalProvider(catalogue, settings.resolved_models_dir, settings.device, python_graders,
                          memory_limit_gb=settings.resolved_train_memory_gb, cuda=settings.engine_on_cuda)
    configured = connections(settings)
    hosted = {name: build(name, config) for name, config in configured.items()}
    options = {name: operator_options(name, config) for name, config in configured.items()}
    for entry in catalogue.values():
        if entry.provider is not None and entry.provider not in hosted:
            raise ProviderConfigError(
                f"catalogue entry '{entry.id}' runs on provider '{entry.provider}', which FTSERVE_PROVIDERS does not configure"
            )
    return Providers(local, hosted, catalogue, options)


def kind_of(name: str, config: dict[str, Any]) -> ProviderKind:
    kind = config.get("kind") or ("openai_compatible" if name.startswith("remote-") else name)
    if kind not in HOSTED:
        raise ProviderConfigError(
            f"provider '{name}': unknown kind '{kind}'; set kind to one of {', '.join(HOSTED)}"
        )
    return kind  # checked against HOSTED's keys just above


def build(name: str, config: dict[str, Any]) -> HostedProvider:
    """One hosted provider from its configuration, checked now so a typo fails at start-up, not on a job."""
    if not NAME.fullmatch(name):
        raise ProviderConfigError(f"provider name '{name}': use lowercase letters, digits, '-' and '_'")
    kind = kind_of(name, config)
    module, _, attribute = HOSTED[kind].partition(":")
    adapter = getattr(import_module(module), attribute)
    settings = {key: value for key, value in config.items() if key not in ("kind", "options")}
    try:
        connection = adapter.Connection.model_validate(settings)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ProviderConfigError(f"provider '{name}' ({kind}): {where}: {first['msg']}") from error
    return adapter(name, connection)


def operator_options(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The provider options the operator set for every job (`options`), checked like a job's, but free of the
    tenant allowlist: the operator's own account is theirs to point at."""
    options = config.get("options") or {}
    if not isinstance(options, dict):
        raise ProviderConfigError(f"provider '{name}': options must be an object of provider options")
    kind = kind_of(name, config)
    module, _, attribute = HOSTED[kind].partition(":")
    try:
        getattr(import_module(module), attribute).Options.model_validate(options)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ProviderConfigError(f"provider '{name}' ({kind}): options.{where}: {first['msg']}") from error
    return options


def _read_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ProviderConfigError(f"cannot read the providers file {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise ProviderConfigError(f"{path}: not JSON ({error})") from error
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ProviderConfigError(f"{path}: expected a JSON object of providers, each an object of settings")
    return raw
