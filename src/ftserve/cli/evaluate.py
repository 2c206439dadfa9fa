"""`ftserve evaluate`: score a served model on a file (an ftserve extension, `POST /v1/ftserve/evaluations`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ftserve.cli.client import DEFAULT_BASE_URL, ApiKey, BaseUrl, connect


def evaluate(
    model: Annotated[str, typer.Argument(help="A served model: fine-tuned, checkpoint or base.")],
    file: Annotated[str, typer.Argument(help="An uploaded file id, or a local JSONL file, uploaded first.")],
    max_examples: Annotated[int | None, typer.Option(min=1, help="Score at most this many examples.")] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> None:
    """Score a model on a file: loss, token accuracy and exact match of greedy answers, printed as JSON."""
    client = connect(base_url, api_key)
    file_id = file
    if Path(file).is_file():
        with open(file, "rb") as handle:
            file_id = client.files.create(file=handle, purpose="fine-tune").id
    body: dict[str, object] = {"model": model, "file": file_id}
    if max_examples:
        body["max_examples"] = max_examples
    result = client.post("/ftserve/evaluations", body=body, cast_to=object)
    typer.echo(json.dumps(result, indent=2))
