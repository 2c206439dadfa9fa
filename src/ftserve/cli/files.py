"""`ftserve files`: upload, list and remove files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftserve.cli.client import DEFAULT_BASE_URL, ApiKey, BaseUrl, connect
from ftserve.cli.show import listing, output, timestamp

app = typer.Typer(help="Upload, list and remove files (training data).", no_args_is_help=True)


@app.command()
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A JSONL file.")],
    purpose: Annotated[str, typer.Option(help="What the file is for, as OpenAI names it.")] = "fine-tune",
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> None:
    """Upload a file; the server checks a fine-tuning file line by line and names the first bad line."""
    client = connect(base_url, api_key)
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose=purpose)  # type: ignore[arg-type]  # any purpose string
    output().print(f"Uploaded {path} as [bold]{uploaded.id}[/] ({uploaded.bytes} bytes)")


@app.command("list")
def list_files(
    purpose: Annotated[str | None, typer.Option(help="Only files with this purpose.")] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> None:
    """List the files, newest first."""
    client = connect(base_url, api_key)
    listed = client.files.list(purpose=purpose) if purpose else client.files.list()
    table = listing("id", "filename", "bytes", "purpose", "status", "created")
    for file in listed:
        table.add_row(file.id, file.filename, str(file.bytes), file.purpose, file.status, timestamp(file.created_at))
    output().print(table if table.row_count else "No files.")


@app.command("rm")
def remove(file_id: str, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Delete a file."""
    connect(base_url, api_key).files.delete(file_id)
    output().print(f"Deleted {file_id}")
