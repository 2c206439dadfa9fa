"""Following a job live: a progress bar of its steps with epoch, losses and ETA, and its events as they arrive.

Only the SDK's `retrieve` and `list_events` are used, so any OpenAI-compatible server can be followed.
Metrics events carry `data` with `step`, `total_steps`, `train_loss` and, on steps that scored the
validation file, `valid_loss` (worker/reporter.py). On a terminal the bar shows them; written to a
file or a pipe, each is also printed as a line, so a log keeps the loss curve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import openai
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from ftserve.cli.client import dashboard_url
from ftserve.cli.show import duration

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

# How `jobs follow` (and `jobs create --follow`) exit: the job's outcome.
# 2 is taken by usage errors and invalid settings, so a cancelled job has a code of its own.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}
# How long `follow` keeps trying a server that stopped answering (a restart, a network blip) before it gives up.
RECONNECT_SECONDS = 600.0
EVENTS_PAGE = 100
_LEVEL_STYLES = {"warn": "yellow", "error": "red"}


def follow(client: OpenAI, job_id: str, base_url: str, console: Console, interval: float = 1.0) -> int:
    """Show the job until it ends, then its outcome; returns the exit code for that outcome (EXIT_CODES)."""
    job = client.fine_tuning.jobs.retrieve(job_id)
    console.print(f"Following [bold]{job.id}[/] ({escape(job.model)})")
    console.print(f"Dashboard: {dashboard_url(base_url, job.id)}", soft_wrap=True)
    events = _NewEvents(client, job.id)
    state = _Progress()
    columns = (
        SpinnerColumn(), TextColumn("{task.fields[status]}"), BarColumn(bar_width=24), MofNCompleteColumn(),
        TextColumn("{task.fields[details]}"),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("", total=None, status=job.status, details="")
        lost_since: float | None = None
        while True:
            try:
                job = client.fine_tuning.jobs.retrieve(job_id)
                fetched = events.fetch()  # read after the job, so a finished job's last events are in
            except (openai.APIConnectionError, openai.InternalServerError) as error:
                # The job goes on without us: a server restart must not look like a failed job.
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > RECONNECT_SECONDS:
                    raise
                progress.update(bar, details=f"[yellow]server not answering ({type(error).__name__}); retrying[/]")
                time.sleep(max(interval, 2.0))
                continue
            lost_since = None
            for event in fetched:
                if event.type == "metrics" and isinstance(event.data, dict):
                    state.observe(event.data)
                    if console.is_terminal:
                        continue
                progress.console.print(_line(event), highlight=False, soft_wrap=True)
            if state.total:
                progress.update(bar, total=state.total, completed=state.step)
            if job.status in EXIT_CODES:
                progress.update(bar, status=job.status, details=state.describe(_epochs(job), None))
                break
            eta = job.estimated_finish - time.time() if job.estimated_finish else progress.tasks[0].time_remaining
            progress.update(bar, status=job.status, details=state.describe(_epochs(job), eta))
            time.sleep(interval)
    return _outcome(job, console)


@dataclass
class _Progress:
    """What the metrics events said so far: the latest step, and the latest of each loss."""

    step: int = 0
    total: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None

    def observe(self, data: dict[str, Any]) -> None:
        self.step = int(data.get("step", self.step))
        if data.get("total_steps"):
            self.total = int(data["total_steps"])
        self.train_loss = data.get("train_loss", self.train_loss)
        self.valid_loss = data.get("valid_loss", self.valid_loss)

    def describe(self, epochs: int | None, eta: float | None) -> str:
        parts = []
        if epochs and self.total and self.step:
            per_epoch = self.total / epochs
            parts.append(f"epoch {min(epochs, math.ceil(self.step / per_epoch))}/{epochs}")
        if self.train_loss is not None:
            parts.append(f"train loss {self.train_loss:.4f}")
        if self.valid_loss is not None:
            parts.append(f"valid loss {self.valid_loss:.4f}")
        if eta is not None and self.step and self.step != self.total:
            parts.append(f"ETA {duration(eta)}")
        return "  ".join(parts)


class _NewEvents:
    """A job's events not shown yet, oldest first. Events are listed newest first, so each fetch pages back
    until the newest event of the previous fetch; the first shows only the latest page."""

    def __init__(self, client: OpenAI, job_id: str):
        self.client = client
        self.job_id = job_id
        self.newest: str | None = None

    def fetch(self) -> list[FineTuningJobEvent]:
        fresh: list[FineTuningJobEvent] = []
        page = self.client.fine_tuning.jobs.list_events(self.job_id, limit=EVENTS_PAGE)
        while True:
            for event in page.data:
                if event.id == self.newest:
                    return self._seen(fresh)
                fresh.append(event)
            # A first fetch of a long job's history would print pages of old metrics: only its latest page.
            if not page.has_more or not page.data or self.newest is None:
                return self._seen(fresh)
            page = self.client.fine_tuning.jobs.list_events(self.job_id, limit=EVENTS_PAGE, after=page.data[-1].id)

    def _seen(self, fresh: list[FineTuningJobEvent]) -> list[FineTuningJobEvent]:
        if fresh:
            self.newest = fresh[0].id
        return fresh[::-1]


def _line(event: FineTuningJobEvent) -> str:
    at = datetime.fromtimestamp(event.created_at).strftime("%H:%M:%S")
    style = _LEVEL_STYLES.get(event.level)
    message = escape(event.message)
    return f"[dim]{at}[/] " + (f"[{style}]{message}[/]" if style else message)


def hyperparameters_of(job: FineTuningJob) -> Any:
    """The job's method block's hyperparameters, or the deprecated top-level ones (an older server's)."""
    block = getattr(job.method, job.method.type, None) if job.method and job.method.type else None
    return getattr(block, "hyperparameters", None) or job.hyperparameters


def _epochs(job: FineTuningJob) -> int | None:
    epochs = getattr(hyperparameters_of(job), "n_epochs", None)
    return epochs if isinstance(epochs, int) else None


def _outcome(job: FineTuningJob, console: Console) -> int:
    if job.status == "succeeded":
        tokens = f" ({job.trained_tokens:,} trained tokens)" if job.trained_tokens else ""
        console.print(f"[green]Succeeded[/]: fine-tuned model [bold]{escape(job.fine_tuned_model or '')}[/]{tokens}",
                      soft_wrap=True)
    elif job.status == "failed":
        reason = f"{job.error.message} ({job.error.code})" if job.error else "no reason given"
        console.print(f"[red]Failed[/]: {escape(reason)}", soft_wrap=True)
    else:
        console.print("[yellow]Cancelled[/]")
    return EXIT_CODES[job.status]
