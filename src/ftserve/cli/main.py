"""`ftserve serve` and `ftserve worker`: the process entry points, where Settings are read."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading

from ftserve.catalogue import CatalogueError
from ftserve.config import Settings


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
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
    except ValueError as error:
        print(f"ftserve: invalid settings:\n{error}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args, settings))
    except CatalogueError as error:
        print(f"ftserve: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
