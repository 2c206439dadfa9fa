"""A provider SDK's client, made on first use, and its calls with their failures translated.

The SDKs take up to a second to import: a server pays that only once a job goes to the provider.
Their own retries are off, because the worker's reconcile loop backs off and retries, and retries
inside the SDK would hide an outage from it. Their HTTP client checks every successful answer is JSON
(`json_only`): the SDKs hand a proxy's HTML page back as a string where a model was promised, which
would fail later as an unexplained server error.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from importlib import import_module
from typing import Any

import httpx

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
            package = import_module(self.package)
            http = package.DefaultHttpxClient(event_hooks={"response": [json_only]})
            self._client = getattr(package, self.factory)(max_retries=0, http_client=http, **self.settings)
        return self._client

    def calling(self) -> AbstractContextManager[None]:
        """Runs SDK calls, raising `ProviderError` for the SDK's exceptions."""
        return errors.translated(self.who, errors.sdk(import_module(self.package)))


def json_only(response: httpx.Response) -> None:
    """Refuses a successful answer whose body is not a JSON object or array (`errors.NotJson`).

    Refusals (4xx, 5xx) pass: the SDK reads their text, whatever it is, into the error it raises.
    """
    if response.status_code >= 300:
        return
    body = response.read()
    if not body.strip():
        return  # no content: a delete, an empty success
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, (dict, list)):
        raise errors.NotJson(response.status_code, body, response.headers.get("content-type", ""))
