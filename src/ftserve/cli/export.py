"""`ftserve export`: download a model from a server as a vLLM adapter, merged weights or a GGUF file.

An ftserve extension (`GET /v1/ftserve/export`). A directory comes as a tar stream, unpacked while it
arrives; a GGUF file comes as itself.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ftserve.cli.client import DEFAULT_BASE_URL, ApiKey, BaseUrl, connect

if TYPE_CHECKING:
    import httpx


class Format(str, Enum):
    adapter = "adapter"
    merged = "merged"
    gguf = "gguf"


class Quantization(str, Enum):
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"


def export(
    model: Annotated[str, typer.Argument(help="A served model: fine-tuned, checkpoint or base.")],
    format: Annotated[Format, typer.Option(help="adapter (vLLM LoRA), merged (Hugging Face) or gguf (llama.cpp).")],
    out: Annotated[Path, typer.Option(file_okay=False, help="Directory to write into.")],
    quantization: Annotated[Quantization, typer.Option(help="GGUF only.")] = Quantization.f16,
    include_embeddings: Annotated[bool, typer.Option(
        "--include-embeddings", help="Adapter only: keep embedding and output-head weights.")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> None:
    """Download a model as a vLLM adapter, merged weights or a GGUF file, and print where it was written."""
    import httpx

    client = connect(base_url, api_key)
    out.mkdir(parents=True, exist_ok=True)
    params = {"model": model, "format": format.value, "quantization": quantization.value,
              "include_embeddings": str(include_embeddings).lower()}
    headers = {"Authorization": f"Bearer {client.api_key}"}
    with httpx.stream("GET", f"{client.base_url}ftserve/export", params=params, headers=headers, timeout=None) as response:
        if response.status_code != 200:
            response.read()
            typer.echo(f"ftserve: {_error_message(response)}", err=True)
            raise typer.Exit(1)
        # Only the last part of the name: whatever the server says, the file lands inside --out.
        name = Path(response.headers["content-disposition"].split('filename="')[1].rstrip('"')).name
        if response.headers.get("content-type", "").startswith("application/x-tar"):
            with tarfile.open(fileobj=_Chunks(response.iter_bytes()), mode="r|") as tar:  # type: ignore[call-overload]  # a stream needs read() only, not all of IO[bytes]
                tar.extractall(out, filter="data")
            written = out / name.removesuffix(".tar")
        else:
            written = out / name
            with written.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
    typer.echo(written)


class _Chunks:
    """A read-only file over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterable[bytes]):
        self.chunks: Iterator[bytes] = iter(chunks)
        self.buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            try:
                self.buffer += next(self.chunks)
            except StopIteration:
                break
        if size < 0:
            size = len(self.buffer)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
