"""The one door from the service process to code that needs torch, opened on first use.

The engine is written to run alone in a child process (`python -m ftserve.engine`). Three things
the server does itself reuse its code in the API process: loading a served model and its
tokenizer, exporting a model (adapter, merged weights, GGUF), and scoring a model on a file;
decoding (`inference.generate`) runs on the models they load. They are reached from here and
nowhere else (an import-linter contract holds everyone else to `engine.spec`, `engine.events` and
`engine.artifacts`, which are plain data), so this list is the whole of what the service asks of
the engine's internals.

Nothing here is imported until it is first used: torch and transformers take seconds to import,
and a server, a worker or a CLI command that trains and serves nothing should not wait for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftserve.engine.data import DataError, Encoder
    from ftserve.engine.evaluate import Scores, read_examples, score
    from ftserve.engine.export import ExportError, export_adapter, export_gguf, export_merged
    from ftserve.engine.hardware import Hardware, detect
    from ftserve.engine.models import load_tokenizer, local_dir, source_gguf
    from ftserve.inference.generate import end_tokens, generate, seeded

_HOMES = {
    # Serving a model: where its weights are, its tokenizer and prompt format, the hardware it runs on.
    "ftserve.engine.data": ("DataError", "Encoder"),
    "ftserve.engine.hardware": ("Hardware", "detect"),
    "ftserve.engine.models": ("load_tokenizer", "local_dir", "source_gguf"),
    # Decoding.
    "ftserve.inference.generate": ("end_tokens", "generate", "seeded"),
    # Exports.
    "ftserve.engine.export": ("ExportError", "export_adapter", "export_gguf", "export_merged"),
    # Evaluation.
    "ftserve.engine.evaluate": ("Scores", "read_examples", "score"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value
