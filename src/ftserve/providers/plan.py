"""Building a provider's native request from a job, field by field, with each change reported.

`resolve` must say, for every field the caller set, whether it went through as is, under another
name or unit (`converted`), or not at all (`dropped`). A `Plan` keeps that bookkeeping as the request
is built; each adapter describes its plain renames and drops as a table (`Mapping`) and writes only
what is its own. The arithmetic several providers need (an absolute learning rate from OpenAI's
multiplier, steps from examples, warm-up steps from a ratio) lives here once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.contract import Change, Estimate, JobRequest, Options, Resolved, chosen

O = TypeVar("O", bound=Options)


@dataclass(frozen=True)
class Mapped:
    """Where one of the caller's fields goes: a native key (None: dropped), and why, when it is not as is."""

    native: str | None
    reason: str = ""
    """Empty: sent under the same name and value, nothing to report."""
    convert: Callable[[Any], Any] | None = None


def dropped(reason: str) -> Mapped:
    return Mapped(None, reason)


@dataclass
class Plan:
    """The native request for one job, built field by field, with what was converted or dropped on the way."""

    request: JobRequest
    where: str = ""
    """The place of `native` in what is sent, as the reports name it (`input.args.`, `training_config.`)."""
    native: dict[str, Any] = field(default_factory=dict)
    converted: list[Change] = field(default_factory=list)
    dropped: list[Change] = field(default_factory=list)

    def put(self, key: str, value: Any, *, source: str | None = None, given: Any = None, reason: str = "") -> None:
        """Set a native key; with `source`, the caller's field that was renamed or rescaled into it."""
        self.native[key] = value
        if source is not None:
            self.converted.append(Change(source, given, f"{self.where}{key}", value, reason))

    def drop(self, source: str, given: Any, reason: str) -> None:
        self.dropped.append(Change(source, given, None, reason=reason))

    def given(self, source: str) -> Any | None:
        """What the caller set for a field, by its OpenAI-side name; None where unset or "auto"."""
        group, _, name = source.partition(".")
        if group == "hyperparameters":
            return chosen(self.request, name)
        if group == "ftserve":
            return self.request.options.get(name)
        value = getattr(self.request, source)
        return None if value in (None, "", {}, []) else value

    def map(self, table: Mapping[str, Mapped]) -> None:
        """Every field of `table` the caller set, renamed, converted or dropped as the table says."""
        for source, mapped in table.items():
            value = self.given(source)
            if value is None:
                continue
            if mapped.native is None:
                self.drop(source, value, mapped.reason)
                continue
            native = mapped.convert(value) if mapped.convert else value
            if mapped.reason:
                self.put(mapped.native, native, source=source, given=value, reason=mapped.reason)
            else:
                self.put(mapped.native, native)

    def learning_rate(self, key: str, base: float, who: str, basis: str,
                      convert: Callable[[float], Any] = float) -> float | None:
        """OpenAI's multiplier as the absolute rate `who` takes: the multiplier times `base`, which `basis` names."""
        multiplier = self.given("hyperparameters.learning_rate_multiplier")
        if multiplier is None:
            return None
        rate = float(multiplier) * base
        self.put(key, convert(rate), source="hyperparameters.learning_rate_multiplier", given=multiplier,
                 reason=f"{who} takes an absolute learning rate: the multiplier times {basis} {base:g}")
        return rate

    def warmup(self, key: str, batch: int | None, epochs: int, who: str, why_no_batch: str,
               convert: Callable[[int], Any] = int, note: str = "") -> None:
        """ftserve's warm-up ratio as the steps `who` counts, or dropped where the batch (so the steps) is unknown."""
        ratio = self.given("ftserve.warmup_ratio")
        if ratio is None:
            return
        if batch is None:
            self.drop("ftserve.warmup_ratio", ratio, why_no_batch)
            return
        total = steps(self.request.training_examples, batch, epochs)
        self.put(key, convert(round(float(ratio) * total)), source="ftserve.warmup_ratio", given=ratio, reason=(
            f"{who} takes warmup in steps: {ratio:g} x {total} steps ({self.request.training_examples} "
            f"examples / batch {batch} x {epochs} epochs{note})"))

    def resolved(self, provider: str, native: dict[str, Any] | None = None) -> Resolved:
        return Resolved(provider, self.native if native is None else native, self.converted, self.dropped)


def steps(examples: int, batch: int, epochs: int) -> int:
    """Optimizer steps of a run: ceil(examples / batch) per epoch."""
    return math.ceil(max(1, examples) / int(batch)) * int(epochs)


def epochs_of(request: JobRequest, default: int) -> int:
    asked = chosen(request, "n_epochs")
    return int(asked) if asked is not None else default


def options_of(request: JobRequest, options: type[O], kind: str) -> O:
    """The job's provider options as the adapter's typed block, an unknown or bad key an error naming it."""
    try:
        return options.model_validate(request.provider_options)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"ftserve.provider_options.{kind}.{where}: {first['msg']}",
                             param=f"ftserve.provider_options.{kind}.{where}") from error


def text_estimate(request: JobRequest, default_epochs: int, default_name: str, tail: str) -> Estimate:
    """Tokens of the training file (at four characters a token) times the epochs, where no better count exists."""
    epochs = epochs_of(request, default_epochs)
    whose = "as asked" if chosen(request, "n_epochs") is not None else f"{default_name}'s default"
    return Estimate(request.trained_tokens() * epochs, epochs, None,
                    f"the training file's text at 4 characters per token, times {epochs} epochs ({whose}); {tail}")
