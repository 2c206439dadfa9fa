"""`ftserve serve` and `ftserve worker`: the process entry points, where Settings are read."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from pathlib import Path

from ftserve.catalogue import CatalogueError
from ftserve.config import Settings
from ftserve.providers.registry import ProviderConfigError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from ftserve.api.app import create_app
    from ftserve.services.runtime import build

    if not settings.api_keys and not _is_loopback(args.host):
        print(
            f"ftserve: refusing to serve on {args.host} without API keys: anyone who can reach it could use it.\n"
            "Set FTSERVE_API_KEYS (for example FTSERVE_API_KEYS='sk-mykey=myproject') or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    app = create_app(build(settings), with_worker=not args.no_worker)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def worker(args: argparse.Namespace, settings: Settings) -> int:
    from ftserve.services.runtime import build
    from ftserve.worker import worker_for

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker_for(build(settings)).run(stop)
    return 0


def _client(args: argparse.Namespace):  # -> openai.OpenAI
    from openai import OpenAI

    return OpenAI(base_url=args.base_url, api_key=args.api_key or "none", max_retries=2, timeout=None)


def export(args: argparse.Namespace, _: Settings) -> int:
    """Download a model from a running server as a vLLM adapter, merged weights or a GGUF file."""
    import tarfile

    import httpx

    client = _client(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = {"model": args.model, "format": args.format, "quantization": args.quantization,
              "include_embeddings": str(args.include_embeddings).lower()}
    headers = {"Authorization": f"Bearer {client.api_key}"}
    with httpx.stream("GET", f"{client.base_url}ftserve/export", params=params, headers=headers, timeout=None) as response:
        if response.status_code != 200:
            response.read()
            print(f"ftserve: {_error_message(response)}", file=sys.stderr)
            return 1
        if response.headers.get("content-type", "").startswith("application/x-tar"):
            with tarfile.open(fileobj=_Chunks(response.iter_bytes()), mode="r|") as tar:
                tar.extractall(out, filter="data")
            written = out / response.headers["content-disposition"].split('filename="')[1].removesuffix('.tar"')
        else:
            written = out / response.headers["content-disposition"].split('filename="')[1].rstrip('"')
            with written.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
    print(written)
    return 0


def evaluate(args: argparse.Namespace, _: Settings) -> int:
    """Score a served model on a file: an uploaded file id, or a local JSONL file that is uploaded first."""
    import json

    import openai

    client = _client(args)
    file_id = args.file
    try:
        if Path(args.file).is_file():
            with open(args.file, "rb") as handle:
                file_id = client.files.create(file=handle, purpose="fine-tune").id
        body = {"model": args.model, "file": file_id}
        if args.max_examples:
            body["max_examples"] = args.max_examples
        result = client.post("/ftserve/evaluations", body=body, cast_to=object)
    except openai.APIStatusError as error:
        print(f"ftserve: {error.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


class _Chunks:
    """A read-only file over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks):  # type: ignore[no-untyped-def]
        self.chunks = iter(chunks)
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


def _error_message(response) -> str:  # type: ignore[no-untyped-def]
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _add_client_options(command: argparse.ArgumentParser) -> None:
    import os

    command.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
                         help="The ftserve API (default: $OPENAI_BASE_URL or http://127.0.0.1:8000/v1).")
    command.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="Default: $OPENAI_API_KEY.")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="ftserve", description="Self-hosted, OpenAI-compatible fine-tuning.")
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="Start the API (with an embedded worker unless --no-worker).")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--no-worker", action="store_true", help="Serve the API only; run workers separately.")
    run.add_argument("--log-level", default="info")
    run.set_defaults(handler=serve)
    work = commands.add_parser("worker", help="Run a standalone worker against the configured database.")
    work.set_defaults(handler=worker)
    out = commands.add_parser("export", help="Download a model as a vLLM adapter, merged weights or a GGUF file.")
    out.add_argument("model")
    out.add_argument("--format", required=True, choices=["adapter", "merged", "gguf"])
    out.add_argument("--out", required=True, help="Directory to write into.")
    out.add_argument("--quantization", default="f16", choices=["f32", "f16", "bf16", "q8_0"], help="GGUF only.")
    out.add_argument("--include-embeddings", action="store_true", help="Adapter only: keep embedding weights.")
    _add_client_options(out)
    out.set_defaults(handler=export, needs_settings=False)
    score = commands.add_parser("evaluate", help="Score a served model on an uploaded file (id) or a local JSONL file.")
    score.add_argument("model")
    score.add_argument("file")
    score.add_argument("--max-examples", type=int)
    _add_client_options(score)
    score.set_defaults(handler=evaluate, needs_settings=False)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "needs_settings", True):  # client commands talk to a server; they read no server settings
        return int(args.handler(args, None))
    try:
        settings = Settings()
    except ValueError as error:
        print(f"ftserve: invalid settings:\n{error}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args, settings))
    except (CatalogueError, ProviderConfigError) as error:
        print(f"ftserve: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
