"""`ftserve models`: list and remove models (base models and fine-tuned ones)."""

from __future__ import annotations

import typer

from ftserve.cli.client import DEFAULT_BASE_URL, ApiKey, BaseUrl, connect
from ftserve.cli.show import listing, output, timestamp

app = typer.Typer(help="List and remove models.", no_args_is_help=True)


@app.command("list")
def list_models(base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """List the models the server can serve and fine-tune: base models and fine-tuned ones."""
    table = listing("id", "owned by", "created")
    for model in connect(base_url, api_key).models.list():
        table.add_row(model.id, model.owned_by, timestamp(model.created))
    output().print(table if table.row_count else "No models.")


@app.command("rm")
def remove(model_id: str, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Delete a fine-tuned model (base models cannot be deleted)."""
    connect(base_url, api_key).models.delete(model_id)
    output().print(f"Deleted {model_id}")
