"""The `ftserve` command: the server and worker processes, and the user commands, assembled into one Typer app.

Settings are read here, at the edge, for the processes that run ftserve itself; the user commands
only talk to a server (client.py).
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from ftserve.cli import chat, data, evaluate, export, files, jobs, models, quickstart
from ftserve.cli.client import api_errors, error_message
from ftserve.cli.settings import INVALID_SETTINGS, read_settings
from ftserve.config import Settings

if TYPE_CHECKING:
    from ftserve.services.runtime import Runtime


class _Commands(TyperGroup):
    """Every command's API errors end the same way: `ftserve: <message>` on stderr and exit 1."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # the base names typer's private Click

        try:
            return super().invoke(ctx)
        except api_errors() as error:
            typer.echo(f"ftserve: {error_message(error)}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Commands, name="ftserve", help="Self-hosted, OpenAI-compatible fine-tuning.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
)
START, SERVER, USE = "Get started", "Run ftserve", "Use a server"
app.command(rich_help_panel=START)(quickstart.quickstart)


@app.command(rich_help_panel=SERVER)
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs FTSERVE_API_KEYS.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Serve the API only; run workers separately.")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Start the API, with an embedded worker unless --no-worker. Settings come from FTSERVE_* variables."""
    import uvicorn

    from ftserve.api.app import create_app
    from ftserve.logs import UVICORN_OPTIONS
    from ftserve.worker import in_thread

    settings = read_settings()
    if not settings.api_keys and not _is_loopback(host):
        typer.echo(
            f"ftserve: refusing to serve on {host} without API keys: anyone who can reach it could use it.\n"
            "Set FTSERVE_API_KEYS (for example FTSERVE_API_KEYS='sk-mykey-change-me-0001=myproject') or bind 127.0.0.1.",
            err=True,
        )
        raise typer.Exit(2)
    runtime = _runtime(settings)
    api = create_app(runtime, beside=None if no_worker else in_thread(runtime))
    uvicorn.run(api, host=host, port=port, log_level=log_level, **UVICORN_OPTIONS)


@app.command(rich_help_panel=SERVER)
def worker() -> None:
    """Run a standalone worker against the configured database (FTSERVE_DATABASE_URL)."""
    from ftserve.worker import worker_for

    runtime = _runtime(read_settings())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker_for(runtime).run(stop)


def _runtime(settings: Settings) -> Runtime:
    from ftserve.catalogue import CatalogueError
    from ftserve.logs import configure
    from ftserve.providers.registry import ProviderConfigError
    from ftserve.services.runtime import build

    configure(settings)
    try:
        return build(settings)
    except (CatalogueError, ProviderConfigError) as error:
        typer.echo(f"ftserve: {error}", err=True)
        raise typer.Exit(INVALID_SETTINGS) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


app.add_typer(data.app, name="data", rich_help_panel=USE)
app.add_typer(files.app, name="files", rich_help_panel=USE)
app.add_typer(jobs.app, name="jobs", rich_help_panel=USE)
app.add_typer(models.app, name="models", rich_help_panel=USE)
app.command(rich_help_panel=USE)(chat.chat)
app.command(rich_help_panel=USE)(evaluate.evaluate)
app.command(rich_help_panel=USE)(export.export)


def main(argv: list[str] | None = None) -> int:
    """The `ftserve` entry point: runs one command and returns its exit code."""
    try:
        app(args=argv, prog_name="ftserve")
    except SystemExit as done:  # how Click ends every command, successful or not
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
