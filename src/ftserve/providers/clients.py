"""A provider SDK's client, made on first use, and its calls with their failures translated.

The SDKs take up to a second to import: a server pays that only once a job goes to the provider.
Their own retries are off, because the worker's reconcile loop backs off and retries, and retries
inside the SDK would hide an outage from it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib import import_module
from typing import Any

from ftserve.providers import errors


class Sdk:
    """One Stainless-generated SDK (`openai`, `together`, `fireworks`): its client class, settings and errors."""

    def __init__(self, who: str, package: str, factory: str, settings: dict[str, Any], client: Any = None):
        self.who = who
        self.package = package
        self.factory = factory
        self.settings = settings
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = getattr(import_module(self.package), self.factory)(max_retries=0, **self.settings)
        return self._client

    def calling(self) -> AbstractContextManager[None]:
        """Runs SDK calls, raising `ProviderError` for the SDK's exceptions."""
        return errors.translated(self.who, errors.sdk(import_module(self.package)))
