"""``torch.distributed`` set-up for runs launched by ``torchrun`` (one process per GPU, or gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistEnv:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1): nccl on GPU, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistEnv(rank, world_size, local_rank, device)


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True if ``flag`` is set on any rank (so all ranks stop at the same step)."""
    if env.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=env.device)
    dist.all_reduce(t)
    return bool(t.item())


def teardown() -> None:
    """Leave the process group together: a barrier first, so that no rank destroys it while another still uses it
    (seen under load: a rank aborting with "terminate called without an active exception")."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
