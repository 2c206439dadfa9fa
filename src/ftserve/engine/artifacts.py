"""The names the engine writes and exports under, shared with the service: plain data, so a server or worker
can read them without loading torch."""

from __future__ import annotations

from typing import Literal

MANIFEST = "ftserve_model.json"
"""Beside a fine-tuned model's weights: the base it was trained from and how."""

ExportFormat = Literal["adapter", "merged", "gguf"]
GgufType = Literal["f32", "f16", "bf16", "q8_0"]
