"""`ftserve export`: download a model from a server as a vLLM adapter, merged weights or a GGUF file.

An ftserve extension (`GET /v1/ftserve/export`). A directory comes as a tar stream, unpacked while it
arrives; a GGUF file comes as itself.

What the server sends is not trusted: the name it announces must be one plain file name, and the tar may
hold only regular files and directories under that name. Everything is written into a hidden directory
beside the target and renamed into place once all of it arrived, so a refused or broken download leaves
nothing behind, and an earlier export at the same path is replaced whole.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated

import typer

from ftserve.cli.client import DEFAULT_BASE_URL, ApiKey, BaseUrl, connect

if TYPE_CHECKING:
    import httpx

CHUNK = 1 << 20


class Refused(Exception):
    """The server's answer cannot be written safely; nothing of it was kept."""


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
    params = {"model": model, "format": format.value, "quantization": quantization.value,
              "include_embeddings": str(include_embeddings).lower()}
    headers = {"Authorization": f"Bearer {client.api_key}"}
    with httpx.stream("GET", f"{client.base_url}ftserve/export", params=params, headers=headers, timeout=None) as response:
        if response.status_code != 200:
            response.read()
            typer.echo(f"ftserve: {_error_message(response)}", err=True)
            raise typer.Exit(1)
        is_tar = response.headers.get("content-type", "").startswith("application/x-tar")
        made_out = not out.exists()
        try:
            name = announced_name(response.headers.get("content-disposition"), is_tar)
            out.mkdir(parents=True, exist_ok=True)
            written = receive(response.iter_bytes(CHUNK), out, name, is_tar)
        except Refused as error:
            typer.echo(f"ftserve: {error}", err=True)
            raise typer.Exit(1) from None
        finally:
            if made_out and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
    typer.echo(written)


def announced_name(content_disposition: str | None, is_tar: bool) -> str:
    """The name the server gives its answer (`NAME.tar` for a directory, whose name is returned), if it is one
    plain name: no path, no `.` or `..`, no control characters."""
    found = re.search(r'filename="([^"]*)"', content_disposition or "")
    name = found.group(1) if found else ""
    if is_tar:
        name = name.removesuffix(".tar") if name.endswith(".tar") else ""
    if name in ("", ".", "..") or "/" in name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        shown = f"{found.group(1)!r}" if found else "none"
        raise Refused(f"the server announced no usable file name (Content-Disposition filename: {shown}); nothing was written")
    return name


def receive(chunks: Iterable[bytes], out: Path, name: str, is_tar: bool) -> Path:
    """Write the answer as `out/name`: into a hidden sibling first, renamed into place once complete."""
    target = out / name
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}.partial-"))
    try:
        if is_tar:
            _unpack(chunks, staging, name)
            _replace(staging, target)
        else:
            with (staging / "file").open("wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
            _replace(staging / "file", target)
    except tarfile.TarError as error:
        raise Refused(f"the export is not a readable tar ({error}); nothing was written") from None
    except OSError as error:
        raise Refused(f"cannot write {target}: {error.strerror or error}; nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unpack(chunks: Iterable[bytes], into: Path, name: str) -> None:
    """The tar's members under `name/`, written below `into`; any other member refuses the whole export."""
    with tarfile.open(fileobj=_Chunks(chunks), mode="r|") as tar:  # type: ignore[call-overload]  # a stream needs read() only, not all of IO[bytes]
        for member in tar:
            destination = _destination(member, into, name)
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                raise Refused(f"the export's member {member.name!r} has no contents; nothing was written")
            try:
                handle = destination.open("xb")
            except FileExistsError:
                raise Refused(f"the export holds {member.name!r} twice; nothing was written") from None
            with handle:
                shutil.copyfileobj(source, handle, CHUNK)


def _destination(member: tarfile.TarInfo, into: Path, name: str) -> Path:
    def refuse(why: str) -> Refused:
        return Refused(f"the export holds {member.name!r}, {why}; nothing was written")

    if not (member.isfile() or member.isdir()):
        kind = "a link" if member.issym() or member.islnk() else "a device or special file"
        raise refuse(f"which is {kind}, not a file or a directory")
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\x00" in member.name:
        raise refuse("which points outside the export")
    parts = [part for part in path.parts if part != "."]
    if not parts or parts[0] != name or (member.isfile() and len(parts) == 1):
        raise refuse(f"which is not inside {name}/")
    destination = into.joinpath(*parts[1:])
    if destination != into and into.resolve() not in destination.resolve().parents:
        raise refuse("which points outside the export")
    return destination


def _replace(staged: Path, target: Path) -> None:
    """`staged` becomes `target`; whatever was at `target` (an earlier export) is removed after the rename."""
    if not (target.exists() or target.is_symlink()):
        os.rename(staged, target)
        return
    earlier = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-")) / "earlier"
    os.rename(target, earlier)
    try:
        os.rename(staged, target)
    except OSError:
        os.rename(earlier, target)
        raise
    finally:
        shutil.rmtree(earlier.parent, ignore_errors=True)


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
