"""One job across several processes, under torch.distributed: launched by torchrun (`providers.local.engine_command`),
or by any launcher that sets torch's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT) for each `python -m ftserve.engine SPEC.json`, or that starts the process group itself before the
engine's `main` runs.

Every process runs the whole recipe, in step with the others. What differs between them is small:

- each optimizer step takes the examples a single process would (`batching.epoch_batches`), split between the
  processes, and each scales its loss so that the gradients they combine are those of the whole batch;
- rank 0 alone speaks the engine's protocol (events on stdout, commands on stdin) and writes the job's files;
  what it decides from them (the stop asked for, which saved state to resume from, whether the base model was
  scored already) it shares, so every process takes the same path;
- LoRA trains under DistributedDataParallel (every process holds the model, gradients are averaged), full
  fine-tuning under FSDP2 (`fully_shard`: every process holds a shard of each weight, gathered layer by layer).

gloo carries the collectives on the CPU, NCCL on CUDA (one GPU per process).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from ftserve.engine import state
from ftserve.engine.events import COMMANDS, Command, Event
from ftserve.engine.hardware import Hardware, detect
from ftserve.engine.losses import Stats
from ftserve.engine.sink import Sink
from ftserve.engine.spec import Device

T = TypeVar("T")


class Unplaceable(Exception):
    """The processes asked for do not fit this machine."""

    def __init__(self, message: str, main: bool):
        super().__init__(message)
        self.main = main
        """Raised in rank 0, which reports it."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the job's processes; the default is a job's only process, where every
    method below is the identity and nothing is communicated."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    """Where the collectives' tensors live: the CPU for gloo, this process's GPU for NCCL."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self, model: torch.nn.Module) -> str:
        """How the job is spread, for the `started` event: empty for one process."""
        if self.size == 1:
            return ""
        how = "FSDP2" if isinstance(model, FSDPModule) else "DDP"
        return f", {self.size} processes ({how} over {'NCCL' if self.device.type == 'cuda' else 'gloo'})"

    def shard(self, indices: list[int]) -> list[int]:
        """This process's share of a batch. Every other example, not a contiguous slice: a batch is sorted by
        length, so each share pads to about the same width."""
        return indices[self.rank :: self.size]

    def total(self, stats: Stats, tokens: int) -> tuple[Stats, int]:
        """A step's counts summed over the processes: its loss, trained tokens, correct tokens and tokens."""
        if self.size == 1:
            return stats, tokens
        summed = torch.tensor([stats.loss_sum, stats.tokens, stats.correct, tokens], dtype=torch.float64,
                              device=self.device)
        dist.all_reduce(summed)
        loss_sum, trained, correct, processed = summed.tolist()
        return Stats(loss_sum, int(trained), int(correct)), int(processed)

    def weight(self, mine: Stats, whole: Stats) -> float:
        """What this process's batch-mean loss is multiplied by, so that the average of the processes' gradients
        (what DDP and FSDP compute) is the gradient of the whole batch's mean: the share of the batch's units
        (trained tokens, or pairs) it holds, times the number of processes."""
        return self.size * mine.tokens / max(1, whole.tokens)

    def agree(self, value: T) -> T:
        """Rank 0's `value`, on every process."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]  # type: ignore[return-value]  # rank 0 sent a T

    def stop(self, asked: Command | None) -> Command | None:
        """The stop rank 0 was asked for (None: none), on every process. Asked at the same points by all."""
        if self.size == 1:
            return asked
        code = torch.tensor([0 if asked is None else COMMANDS.index(asked) + 1], device=self.device)
        dist.broadcast(code, src=0)
        return None if int(code) == 0 else COMMANDS[int(code) - 1]

    def full(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """`tensors` whole: a sharded (FSDP2) one gathered from every process, which all must ask together."""
        return {name: value.full_tensor() if isinstance(value, DTensor) else value for name, value in tensors.items()}

    def full_optimizer(self, saved: dict[str, Any]) -> dict[str, Any]:
        """An optimizer's state dict with its sharded moments gathered: the layout one process saves."""
        return {**saved, "state": {index: self.full(entry) for index, entry in saved["state"].items()}}

    def localised(self, saved: state.Saved, weights: dict[str, torch.Tensor],
                  optimizer: torch.optim.Optimizer) -> state.Saved:
        """A saved state (whole tensors, as one process keeps them) cut to this process's shards."""
        if not any(isinstance(weight, DTensor) for weight in weights.values()):
            return saved
        params = [param for group in optimizer.param_groups for param in group["params"]]
        moments = {
            index: {key: _like(value, params[index]) for key, value in entry.items()}
            for index, entry in saved.optimizer["state"].items()
        }
        return replace(saved, weights={name: _like(saved.weights[name], weights[name]) for name in weights},
                       optimizer={**saved.optimizer, "state": moments})

    def close(self) -> None:
        """Wait for every process (rank 0 may still be writing the model), then leave the group."""
        if self.size > 1:
            dist.barrier()
            dist.destroy_process_group()


def _like(value: Any, param: torch.Tensor) -> Any:
    """`value`, a whole tensor shaped like `param`, as `param` is laid out: its shard, if `param` is sharded."""
    if not isinstance(param, DTensor) or not isinstance(value, torch.Tensor) or value.shape != param.shape:
        return value  # plain, or not a per-weight tensor (AdamW's step count)
    # Every process holds the whole tensor, so each cuts its own shard: nothing is sent.
    return distribute_tensor(value.to(param.device_mesh.device_type), param.device_mesh, param.placements,
                             src_data_rank=None)


def join(choice: Device) -> Ranks:
    """This process's place in the job, joining the process group when a launcher started several.

    The launcher's environment is read here, the engine's edge, as torch.distributed's `env://` reads it."""
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return Ranks()
        _start(detect(choice))
    return current()


def _start(hardware: Hardware) -> None:
    local, per_machine = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    if hardware.device.type == "cuda":
        if per_machine > torch.cuda.device_count():
            raise Unplaceable(f"ftserve.num_processes asks for {per_machine} processes on a machine with "
                              f"{torch.cuda.device_count()} GPU(s); each process needs a GPU of its own",
                              main=os.environ["RANK"] == "0")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        # torchrun gives each process one thread; the machine's cores are shared out instead.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // per_machine))
        dist.init_process_group("gloo")
    _die_with_parent()


def _die_with_parent() -> None:
    """Have the kernel kill this process when its launcher dies: a worker that kills a stuck torchrun (SIGKILL,
    which torchrun cannot pass on) must not leave its processes training on."""
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def current() -> Ranks:
    """This process's place in an already started process group (one process if there is none)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return Ranks()
    nccl = "nccl" in str(dist.get_backend())
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def shard(model: PreTrainedModel, hardware: Hardware, ranks: Ranks) -> None:
    """Shard a fully trained model across the processes (FSDP2), in place: each decoder layer gathers its
    weights for its own forward and backward, the rest (embeddings, final norm, head) stay with the root."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(hardware.device.type, (ranks.size,))
    for layer in model.get_decoder().layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def trainer(model: PreTrainedModel, ranks: Ranks) -> torch.nn.Module:
    """What a training step's forward runs through: DDP around a LoRA model (it averages the gradients in its
    backward), the model itself when FSDP2 sharded it or when there is one process."""
    if ranks.size == 1 or isinstance(model, FSDPModule):
        return model
    return DistributedDataParallel(model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None)


def unwrapped(model: torch.nn.Module) -> PreTrainedModel:
    """The model inside a DDP wrapper (itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]  # only models are wrapped


class SharedStop:
    """One process's sink: rank 0's own for events (other ranks' go nowhere), and at every look the stop rank 0
    was asked for, shared, so that all stop at the same step."""

    def __init__(self, own: Sink | None, ranks: Ranks):
        self.own = own
        self.ranks = ranks

    def emit(self, event: Event) -> None:
        if self.own is not None:
            self.own.emit(event)

    def requested_stop(self) -> Command | None:
        return self.ranks.stop(self.own.requested_stop() if self.own is not None else None)
