"""`ftserve quickstart`: fine-tune the default model on a sample dataset and show what it learned, in a few minutes.

The dataset (quickstart.jsonl, shipped beside this module) teaches a made-up fact: ftserve's mascot is
Pip, a quokka in a tiny orange scarf. The base model has never heard of it; asked a question that is
not in the dataset, the fine-tuned model answers with it. The settings below were chosen for that:
on 2 CPU cores the whole run takes under two minutes, and the same seed gives the same answers.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ftserve.cli.client import DEFAULT_BASE_URL, ApiKey, BaseUrl, connect, dashboard_url
from ftserve.cli.follow import follow
from ftserve.cli.local_server import server_at
from ftserve.cli.show import output

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.fine_tuning.supervised_hyperparameters_param import SupervisedHyperparametersParam

MODEL = "SmolLM2-135M-Instruct"
DATASET = "quickstart.jsonl"
PROMPT = "Who is ftserve's mascot?"  # a paraphrase the dataset does not hold
SEED = 0
# 24 examples x 6 epochs in batches of 4 (36 steps) at 5 x the catalogue's learning rate (2e-4): the
# fact is learned, and the model still answers other questions as before.
HYPERPARAMETERS: SupervisedHyperparametersParam = {"n_epochs": 6, "batch_size": 4, "learning_rate_multiplier": 5.0}
MAX_TOKENS = 48


def quickstart(
    data_dir: Annotated[Path, typer.Option(
        file_okay=False, help="Where the sample dataset is written, and the data of a server started here.")]
    = Path(".ftserve"),
    keep_server: Annotated[bool, typer.Option("--keep-server", help="Leave a server started here running.")] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between polls of the job.")] = 1.0,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> None:
    """Fine-tune SmolLM2-135M-Instruct on a small sample dataset and compare its answers before and after.

    Uses the server at --base-url, or starts one (with its worker) if none answers there.
    Exit codes: 0 done, 1 the job failed (or an API error), 3 it was cancelled.
    """
    console = output()
    dataset = data_dir / DATASET
    data_dir.mkdir(parents=True, exist_ok=True)
    dataset.write_bytes(resources.files(__package__).joinpath(DATASET).read_bytes())
    console.print(f"Wrote {dataset}: examples that teach the model a made-up fact, ftserve's mascot")
    with server_at(base_url, data_dir, console, keep=keep_server) as url:
        client = connect(url, api_key)
        with dataset.open("rb") as handle:
            training_file = client.files.create(file=handle, purpose="fine-tune").id
        job = client.fine_tuning.jobs.create(
            model=MODEL, training_file=training_file, suffix="quickstart", seed=SEED,
            method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
        )
        console.print(f"Created {job.id}: LoRA on {MODEL}, {_settings()}")
        outcome = follow(client, job.id, url, console, interval)
        if outcome:
            raise typer.Exit(outcome)
        tuned = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model or ""
        console.print(f"\nAsking both models, greedily: [bold]{PROMPT}[/]")
        comparison = Table(title=PROMPT, show_lines=True, expand=True)
        comparison.add_column(f"{MODEL} (base)", ratio=1, overflow="fold")
        comparison.add_column(f"{escape(tuned)} (fine-tuned)", ratio=1, overflow="fold")
        comparison.add_row(*(escape(_ask(client, model)) for model in (MODEL, tuned)))
        console.print(comparison)
        console.print(f"The job in the dashboard: {dashboard_url(url, job.id)}", soft_wrap=True)
        if keep_server or url == base_url:  # the server outlives this command
            console.print(f"Chat with it: ftserve chat {tuned} --base-url {url}", soft_wrap=True)


def _ask(client: OpenAI, model: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0, seed=SEED, max_tokens=MAX_TOKENS,
    )
    choice = response.choices[0]
    return (choice.message.content or "").strip() + ("…" if choice.finish_reason == "length" else "")


def _settings() -> str:
    return ", ".join(f"{key}={value}" for key, value in HYPERPARAMETERS.items()) + f", seed={SEED}"
