"""One process per device, started by torchrun (or alone): the process group, the device, gathering small objects.

torchrun's environment (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) is all this reads, so
multi-node runs use torchrun's rendezvous unchanged. nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# How long a rank waits in a collective before the job is aborted as hung. The other ranks wait at the next step
# while the main rank evaluates (`--eval-dataroot`: thousands of maps, the segmenter on the CPU) and saves; NCCL's
# default, 10 minutes, would abort a run in its first evaluation of a large validation split.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Context:
    rank: int  # global rank
    local_rank: int  # rank on this node: the CUDA device index
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Context:
    """Join torchrun's process group (if `WORLD_SIZE` > 1) and pick this rank's device (`auto`, `cpu`, `cuda`)."""
    context = local_context(device)
    if context.world_size > 1:
        use_cuda = context.device.type == "cuda"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT,
                                device_id=context.device if use_cuda else None)  # nccl binds the rank to its GPU
    return context


def local_context(device: str) -> Context:
    """This rank's place in torchrun's job and its device, without joining the process group (what `--dry-run`
    checks)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but this PyTorch sees no CUDA device; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices: start at "
                             f"most that many processes per node (torchrun --nproc_per_node)")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    return Context(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather(value: Any, context: Context) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if context.world_size == 1:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values
