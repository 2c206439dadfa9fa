"""`ftserve data validate`: check a dataset here, before uploading it, with the server's validator and the
engine's tokenizer, and say what training on it would take.

Works offline: it reads Settings only for where base models are (FTSERVE_MODELS_DIR, FTSERVE_CATALOGUE_FILE).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ftserve.cli.settings import INVALID_SETTINGS, read_settings
from ftserve.cli.show import duration, output
from ftserve.config import Settings
from ftserve.domain.errors import InvalidFileFormat
from ftserve.files.jsonl import DatasetSummary, JsonlValidator

# How long the engine takes to train SmolLM2-135M-Instruct with LoRA on this project's 2-core CPU: a cost per
# step (optimizer, per-layer overhead, state saves) and one per token, fitted to two measured runs: the
# training benchmark (docs/benchmarks.md: 39,491 tokens in 32 steps of 8, 103.5 s) and the quickstart
# (8,868 tokens in 36 steps of 4, 50 s). Other models and machines train at other speeds.
SECONDS_PER_STEP = 0.93
SECONDS_PER_TOKEN = 0.00187
MAX_ERRORS_SHOWN = 50

app = typer.Typer(help="Check datasets before training on them.", no_args_is_help=True)


class Method(str, Enum):
    supervised = "supervised"
    dpo = "dpo"


class TrainingType(str, Enum):
    lora = "lora"
    qlora = "qlora"
    full = "full"


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A JSONL dataset.")],
    model: Annotated[str | None, typer.Option(
        help="The base model whose tokenizer counts (default: the catalogue's first, SmolLM2-135M-Instruct).",
        show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(min=1, max=50, help="Default: auto, as a job would choose.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, max=256, help="Default: auto.")] = None,
    method: Annotated[Method, typer.Option(help="What the job would do with the file.")] = Method.supervised,
    max_seq_length: Annotated[int, typer.Option(min=16, help="Where the engine cuts long examples.")] = 2048,
    training_type: Annotated[TrainingType, typer.Option(help="How the job would train, for its memory estimate.")]
    = TrainingType.lora,
) -> None:
    """Check a dataset offline: its format, every bad line, its tokens, and what training on it would take.

    Exit codes: 0 the file trains, 1 it has errors, 2 the settings are invalid.
    """
    console = output()
    summary, errors = _check_lines(file)
    for error in errors[:MAX_ERRORS_SHOWN]:
        where = f"line {error.line}" if error.line is not None else "file"
        console.print(f"[red]✗[/] {where}: {escape(error.reason)}", highlight=False)
    if len(errors) > MAX_ERRORS_SHOWN:
        console.print(f"… and {len(errors) - MAX_ERRORS_SHOWN} more")
    if summary is None or errors:
        shown = f", {summary.examples} valid {summary.format} examples" if summary else ""
        _fail(console, f"{file}: {len(errors)} error(s){shown}; the server refuses the file at its first bad line")

    from ftserve.domain.files import FORMATS

    if summary.format not in FORMATS[method.value]:
        _fail(console, f"{file} holds {summary.format} examples; a {method.value} job trains on "
                       f"{' or '.join(FORMATS[method.value])} examples")
    console.print(f"[green]✓[/] {escape(str(file))}: {summary.examples} {summary.format} examples, "
                  f"valid for a {method.value} job", highlight=False)
    _show_training(console, file, summary, model, method, max_seq_length, epochs, batch_size, training_type)


def _check_lines(path: Path) -> tuple[DatasetSummary | None, list[InvalidFileFormat]]:
    """Every bad line, not just the first the server stops at: a line that fails leaves the validator
    ready for the next one. Lines are held to the server's default limit (FTSERVE_MAX_LINE_BYTES), so a file that
    passes here is not refused there for a long line."""
    validator = JsonlValidator(Settings.model_fields["max_line_bytes"].default)
    errors = []
    with path.open("rb") as lines:
        for line in lines:
            try:
                validator.feed(line)
            except InvalidFileFormat as error:
                errors.append(error)
    try:
        return validator.finish(), errors
    except InvalidFileFormat as error:
        return None, [*errors, error]


def _show_training(console: Console, file: Path, summary: DatasetSummary, model: str | None, method: Method,
                   max_seq_length: int, epochs: int | None, batch_size: int | None,
                   training_type: TrainingType) -> None:
    from ftserve.catalogue import CatalogueError, config_of, load_catalogue
    from ftserve.engine import memory
    from ftserve.cli.token_counts import count_tokens
    from ftserve.domain.hyperparameters import auto_batch_size, auto_epochs
    from ftserve.engine.batching import steps_per_epoch
    from ftserve.engine.data import DataError, Encoder
    from ftserve.engine.models import ModelUnavailable, load_tokenizer, local_dir
    from ftserve.providers.local import source_of

    settings = read_settings()
    try:
        catalogue = load_catalogue(settings.catalogue_file)
    except CatalogueError as error:
        typer.echo(f"ftserve: {error}", err=True)
        raise typer.Exit(INVALID_SETTINGS) from None
    name = model or next(iter(catalogue))
    base = catalogue.get(name)
    if base is None or base.provider is not None:
        local = ", ".join(key for key, entry in catalogue.items() if entry.provider is None)
        _fail(console, f"{name} is not a model this server trains (its catalogue has {local})")
    try:
        tokenizer = load_tokenizer(local_dir(source_of(base), settings.resolved_models_dir))
        counts = count_tokens(file, method.value, Encoder(tokenizer, max_seq_length))
    except (ModelUnavailable, DataError) as error:
        _fail(console, str(error))
    if counts.warning:
        console.print(f"[yellow]![/] {escape(counts.warning)}", highlight=False)

    # "auto" as a job resolves it: from the examples the file holds (the upload's count), dropped ones included.
    n_epochs = epochs or auto_epochs(summary.examples)
    n_batch = batch_size or auto_batch_size(summary.examples)
    trained = counts.tokens_per_epoch * n_epochs
    steps = steps_per_epoch(counts.trained_examples, n_batch) * n_epochs
    table = Table(title=f"Tokens ({escape(name)}'s tokenizer)", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_column(style="dim")
    table.add_row("tokens", f"{sum(counts.lengths):,}", "all examples, chat template included")
    table.add_row("per example", f"{min(counts.lengths):,} / {counts.mean:,.1f} / {max(counts.lengths):,}",
                  "min / mean / max")
    table.add_row("truncated", f"{counts.truncated:,}", f"longer than max_seq_length={max_seq_length}, cut to it")
    table.add_row("dropped", f"{counts.dropped:,}", "nothing left to train within max_seq_length")
    table.add_row("examples trained", f"{counts.trained_examples:,}", "")
    table.add_row("epochs", f"{n_epochs}" + ("" if epochs else " (auto)"), "")
    table.add_row("batch size", f"{n_batch}" + ("" if batch_size else " (auto)"), f"{steps:,} steps")
    table.add_row("trained tokens", f"{trained:,}", f"{counts.tokens_per_epoch:,} per epoch × {n_epochs}")
    table.add_row("estimated time", f"~{duration(steps * SECONDS_PER_STEP + trained * SECONDS_PER_TOKEN)}",
                  "only an estimate, from SmolLM2-135M LoRA runs on 2 CPU cores (docs/cli.md); without loading the model")
    config = config_of(base)
    verdict = None
    if config is not None and memory.readable(config):
        # As a job's create estimates it (docs/training.md, "Memory estimate"), on this file's longest example.
        limit, cuda = settings.resolved_train_memory_gb, settings.engine_on_cuda
        job = memory.Job(training_type.value, memory.sequences_per_step(method.value, n_batch),
                         min(max_seq_length, max(counts.lengths)),
                         lora_targets=base.lora_target_modules or "all-linear")
        verdict = memory.plan(config, job, memory.Machine(half=cuda, eager_attention=not cuda), limit)
        found = verdict.estimate
        table.add_row("memory", f"~{found.total_gb:g} GiB",
                      f"of {limit:g} GiB (FTSERVE_TRAIN_MEMORY_GB), {training_type.value}"
                      + (", with gradient checkpointing" if found.gradient_checkpointing else "") + f": {found.basis}")
    console.print(table)
    if verdict is not None and not verdict.fits:
        field = memory.culprit(verdict.estimate, limit, training_type.value, n_batch)
        console.print(f"[yellow]![/] {escape(memory.over_budget(verdict.estimate, limit, field))}", highlight=False)


def _fail(console: Console, message: str) -> NoReturn:
    console.print(f"[red]✗[/] {escape(message)}", highlight=False)
    raise typer.Exit(1)
