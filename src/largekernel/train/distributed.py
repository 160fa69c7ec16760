"""torchrun / DistributedDataParallel plumbing: process group from the environment, rank-0 helpers.

``torchrun --nproc_per_node=N -m largekernel train ...`` sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` joins the process group (gloo
on CPU, NCCL on CUDA) with a timeout, so that a process whose peer died or was
stopped fails after that many seconds instead of waiting for the backend's
default (30 minutes for gloo). A single process without those variables runs
with ``world_size == 1`` and no process group.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "all_reduce_sum"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device, timeout_s: float = 300.0) -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (idempotent) and describe this process.

    ``timeout_s``: how long joining and every collective (gradient all-reduce,
    evaluation sums) wait for the other processes before raising.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 0, 1)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum ``values`` over all processes (identity in a single process); float64 so counts stay exact."""
    if not info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
