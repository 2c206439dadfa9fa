"""What the engine runs on: CUDA when present, else the CPU, with bf16 where the hardware does it natively."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    bf16: bool
    attention: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def memory_gb(self) -> float:
        """The memory training here can have, in GiB: the GPU's total, or the machine's RAM on the CPU."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).total_memory / (1 << 30)
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{name}, {'bf16 autocast' if self.bf16 else 'fp32'}, {self.attention} attention"


def detect(choice: Literal["auto", "cpu", "cuda"] = "auto") -> Hardware:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda")
        return Hardware(device, torch.cuda.is_bf16_supported(), "sdpa")
    # On the CPU, eager attention beats SDPA's kernels for the short sequences fine-tuning sees.
    return Hardware(torch.device("cpu"), cpu_has_bf16(), "eager")


def cpu_has_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 matmuls run at about 3x fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
