"""The one door from the service process into engine code: what the server runs in-process with torch.

The engine is written to run alone in a child process (`python -m ftserve.engine`). Three things
the server does itself reuse its code in the API process: loading a served model and its
tokenizer, exporting a model (adapter, merged weights, GGUF), and scoring a model on a file.
They import it from here and nowhere else (an import-linter contract holds everyone else to
`engine.spec` and `engine.events`, which are plain data), so this list is the whole of what the
service asks of the engine's internals.
"""

from __future__ import annotations

from ftserve.engine.data import DataError, Encoder
from ftserve.engine.evaluate import Scores, read_examples, score
from ftserve.engine.export import ExportError, ExportFormat, export_adapter, export_gguf, export_merged
from ftserve.engine.gguf_export import GgufType
from ftserve.engine.hardware import Hardware, detect
from ftserve.engine.models import MANIFEST, load_tokenizer, local_dir, source_gguf

__all__ = [
    # Serving a model: where its weights are, its tokenizer and prompt format, the hardware it runs on.
    "Encoder", "Hardware", "MANIFEST", "detect", "load_tokenizer", "local_dir",
    # Exports.
    "ExportError", "ExportFormat", "GgufType", "export_adapter", "export_gguf", "export_merged", "source_gguf",
    # Evaluation.
    "DataError", "Scores", "read_examples", "score",
]
