"""Weights & Biases reporting for jobs trained on this server, through the `wandb` package.

A job's `integrations: [{"type": "wandb", ...}]` is honoured when the package is installed and set up (logged in,
an API key, or `WANDB_MODE=offline`); otherwise the job is refused at create, naming the field, rather than
accepted and silently not reported. W&B's own settings (its environment variables and `~/.netrc`) configure it,
as they do for every other program that reports there.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def unavailable() -> str | None:
    """Why this server cannot report to W&B, or None when it can."""
    try:
        import wandb
    except ImportError:
        return "the wandb package is not installed on this server (pip install wandb)"
    settings = wandb.Settings()
    settings.update_from_env_vars(dict(os.environ))
    if settings.mode in ("offline", "disabled", "dryrun") or settings.api_key:
        return None
    try:
        host = urlparse(settings.base_url).hostname or ""
        if netrc.netrc().authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return ("wandb is installed but not logged in on this server; run `wandb login`, set WANDB_API_KEY, "
            "or set WANDB_MODE=offline for the server")


class WandbRun:
    """One W&B run per job: a job resumed after a restart continues the same run."""

    def __init__(self, integration: dict[str, Any], job_id: str, config: dict[str, Any], directory: Path):
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=integration["project"], entity=integration.get("entity"),
            name=integration.get("name") or job_id, tags=integration.get("tags"), config=config,
            id=job_id.replace("ftjob-", ""), resume="allow", dir=str(directory),
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_run(integrations: list[dict[str, Any]] | None, job_id: str, config: dict[str, Any],
             directory: Path) -> tuple[WandbRun | None, str | None]:
    """The job's W&B run, if it asked for one; or why it could not be opened (the job trains on regardless)."""
    wanted = [i["wandb"] for i in integrations or [] if i.get("type") == "wandb"]
    if not wanted:
        return None, None
    try:
        return WandbRun(wanted[0], job_id, config, directory), None
    except Exception as error:  # noqa: BLE001  # W&B being unreachable must not cost the training
        log.warning("could not open a W&B run for %s: %s", job_id, error)
        return None, f"Could not report to W&B: {error}"
