"""Reading Settings for the commands that run ftserve's own code here (serve, worker, data validate)."""

from __future__ import annotations

import typer

from ftserve.config import Settings

INVALID_SETTINGS = 2


def read_settings() -> Settings:
    """The settings from the environment; bad ones end the command with exit code 2."""
    try:
        return Settings()
    except ValueError as error:
        typer.echo(f"ftserve: invalid settings:\n{error}", err=True)
        raise typer.Exit(INVALID_SETTINGS) from None
