"""`ftserve jobs`: create fine-tuning jobs, list and inspect them, follow one live, cancel, pause and resume."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ftserve.cli.client import DEFAULT_BASE_URL, ApiKey, BaseUrl, connect, dashboard_url
from ftserve.cli.data import Method
from ftserve.cli.follow import follow as follow_job
from ftserve.cli.follow import hyperparameters_of
from ftserve.cli.show import listing, output, timestamp

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.fine_tuning import FineTuningJob
    from openai.types.fine_tuning import job_create_params

app = typer.Typer(help="Create, list, follow and control fine-tuning jobs.", no_args_is_help=True)

Interval = Annotated[float, typer.Option(min=0.05, help="Seconds between polls of the job while following it.")]
FOLLOW_HELP = "Exit codes: 0 the job succeeded, 1 it failed (or the API answered an error), 3 it was cancelled."


@app.command(epilog=FOLLOW_HELP + " (With --follow.)")
def create(
    model: Annotated[str, typer.Option(help="The base model (see `ftserve models list`).")],
    training_file: Annotated[str, typer.Option(help="A file id, or a local JSONL file, uploaded first.")],
    validation_file: Annotated[str | None, typer.Option(help="A file id or a local JSONL file.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Up to 64 characters in the fine-tuned model's name.")] = None,
    method: Annotated[Method, typer.Option(help="supervised: chat or prompt/completion; dpo: preference pairs.")]
    = Method.supervised,
    epochs: Annotated[int | None, typer.Option(min=1, max=50, help="Default: auto, from the dataset size.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, max=256, help="Default: auto.")] = None,
    learning_rate_multiplier: Annotated[float | None, typer.Option(min=0, help="Default: auto (1).")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="The same seed trains the same model.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Follow the job until it ends (as `jobs follow`).")] = False,
    interval: Interval = 1.0,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> None:
    """Create a fine-tuning job. Local files are uploaded first; the server checks them line by line."""
    client = connect(base_url, api_key)
    console = output()
    hyperparameters = {key: value for key, value in (
        ("n_epochs", epochs), ("batch_size", batch_size), ("learning_rate_multiplier", learning_rate_multiplier),
    ) if value is not None}
    options: dict[str, Any] = {"suffix": suffix, "seed": seed}
    if validation_file:
        options["validation_file"] = _file_id(client, validation_file, console)
    job = client.fine_tuning.jobs.create(
        model=model, training_file=_file_id(client, training_file, console),
        # The method's block is keyed by the method's own name, which the SDK's TypedDict cannot spell.
        method=cast("job_create_params.Method", {"type": method.value, method.value: {"hyperparameters": hyperparameters}}),
        **{key: value for key, value in options.items() if value is not None},
    )
    console.print(f"Created [bold]{job.id}[/] ({job.status})")
    if follow:
        raise typer.Exit(follow_job(client, job.id, base_url, console, interval))
    console.print(f"Dashboard: {dashboard_url(base_url, job.id)}", soft_wrap=True)
    console.print(f"Follow it with: ftserve jobs follow {job.id}")


@app.command(epilog=FOLLOW_HELP)
def follow(job_id: str, interval: Interval = 1.0, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Follow a job live until it ends: step of total, epoch, losses, ETA, and its events as they arrive."""
    raise typer.Exit(follow_job(connect(base_url, api_key), job_id, base_url, output(), interval))


@app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status (queued, running, succeeded...).")]
    = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs, newest first.")] = 20,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> None:
    """List jobs, newest first."""
    listed = connect(base_url, api_key).fine_tuning.jobs.list(limit=min(limit, 100))
    # OpenAI's list has no status filter: pages are read until enough jobs match.
    matching = islice((job for job in listed if status is None or job.status == status), limit)
    table = listing("id", "model", "status", "fine-tuned model", "created")
    for job in matching:
        table.add_row(job.id, job.model, job.status, job.fine_tuned_model or "", timestamp(job.created_at))
    output().print(table if table.row_count else "No jobs.")


@app.command()
def get(
    job_id: str, json: Annotated[bool, typer.Option("--json", help="Print the job object as JSON.")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> None:
    """Show a job."""
    job = connect(base_url, api_key).fine_tuning.jobs.retrieve(job_id)
    if json:
        typer.echo(job.model_dump_json(indent=2, exclude_unset=True))
        return
    output().print(_details(job, base_url))


@app.command()
def cancel(job_id: str, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Cancel a job; a running one stops at its next step."""
    job = connect(base_url, api_key).fine_tuning.jobs.cancel(job_id)
    output().print(f"{job.id}: {job.status}")


@app.command()
def pause(job_id: str, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Pause a running job; it saves its state and can be resumed."""
    job = connect(base_url, api_key).fine_tuning.jobs.pause(job_id)
    output().print(f"{job.id}: {job.status}")


@app.command()
def resume(job_id: str, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Resume a paused job from where it stopped."""
    job = connect(base_url, api_key).fine_tuning.jobs.resume(job_id)
    output().print(f"{job.id}: {job.status}")


def _file_id(client: OpenAI, value: str, console: Console) -> str:
    """A local file is uploaded and its new id returned; anything else is taken to be a file id."""
    path = Path(value)
    if not path.is_file():
        return value
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    console.print(f"Uploaded {escape(str(path))} as [bold]{uploaded.id}[/]")
    return uploaded.id


def _details(job: FineTuningJob, base_url: str) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    hyper = hyperparameters_of(job)
    rows = {
        "id": job.id, "status": job.status, "model": job.model, "method": job.method.type if job.method else "",
        "fine-tuned model": job.fine_tuned_model, "training file": job.training_file,
        "validation file": job.validation_file,
        "hyperparameters": ", ".join(f"{k}={v}" for k, v in hyper.model_dump(exclude_none=True).items()) if hyper else "",
        "seed": str(job.seed), "trained tokens": str(job.trained_tokens) if job.trained_tokens is not None else None,
        "created": timestamp(job.created_at), "finished": timestamp(job.finished_at),
        "error": f"{job.error.message} ({job.error.code})" if job.error else None,
        "dashboard": dashboard_url(base_url, job.id),
    }
    for name, value in rows.items():
        if value:
            table.add_row(name, escape(value))
    return table
