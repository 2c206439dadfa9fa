"""What every user command shares: the options that reach a server, the official SDK client built from them,
and how an API error ends a command.

User commands talk to the server only through the `openai` SDK, so they work against any
OpenAI-compatible fine-tuning API; the SDK is imported when a command runs, not when the CLI starts.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from openai import OpenAI

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"

BaseUrl = Annotated[str, typer.Option(
    "--base-url", envvar="OPENAI_BASE_URL", show_envvar=True, help="The API to talk to, ending in /v1.",
)]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", envvar="OPENAI_API_KEY", show_envvar=True, show_default=False,
    help="A key of the server's (FTSERVE_API_KEYS); an open server needs none.",
)]


def connect(base_url: str, api_key: str | None) -> OpenAI:
    from openai import OpenAI

    # The SDK refuses to start without a key; an open ftserve ignores whatever is sent.
    return OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=2, timeout=None)


def server_root(base_url: str) -> str:
    """The server's address without the API prefix: `http://host:8000/v1` -> `http://host:8000`."""
    return base_url.rstrip("/").removesuffix("/v1")


def dashboard_url(base_url: str, job_id: str) -> str:
    return f"{server_root(base_url)}/dashboard/#/jobs/{job_id}"


def api_errors() -> tuple[type[Exception], ...]:
    """The errors that end a command with `ftserve: <message>` and exit 1 instead of a traceback.

    Only modules already imported are looked at: an error of a module never imported cannot be on its way
    out, and a command that does not use the SDK (serve, worker, data validate) does not pay for importing it.
    """
    openai, httpx = sys.modules.get("openai"), sys.modules.get("httpx")
    return ((openai.APIError,) if openai else ()) + ((httpx.HTTPError,) if httpx else ())


def error_message(error: Exception) -> str:
    """What the server said, without the SDK's `Error code: 404 - {...}` wrapping."""
    import httpx

    if isinstance(error, httpx.HTTPError):  # the few requests made with httpx itself (export)
        where = f" {error.request.url}" if isinstance(error, httpx.RequestError) else ""
        return f"cannot reach{where}: {error}"
    from openai import APIConnectionError, APIStatusError

    if isinstance(error, APIStatusError):
        body = error.body
        said = body.get("message") if isinstance(body, dict) else None
        return f"{said or error.message} (HTTP {error.status_code})"
    if isinstance(error, APIConnectionError):
        return f"cannot reach {error.request.url}: {error.message} Is the server running (`ftserve serve`)?"
    return str(error)
