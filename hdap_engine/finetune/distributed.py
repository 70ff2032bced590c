"""One process or many: the few `torch.distributed` calls the trainer needs.

Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address) the process group is joined with NCCL when CUDA is there and
Gloo otherwise; started plainly, the same code runs as a world of one without a
process group. Starting, placing and restarting processes is torchrun's job
(``--nproc_per_node``, ``--nnodes``, ``--rdzv-endpoint``); nothing here forks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank, the number of processes, its device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None  # None: no process group (one process)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, the bundle and the console output."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher with its environment) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device: str | None = None) -> World:
    """Join the process group when launched by torchrun; a world of one otherwise.

    Parameters
    ----------
    device:
        ``"cpu"``, ``"cuda"`` or None (CUDA when available). Under torchrun each
        process takes the GPU of its ``LOCAL_RANK``.

    Returns
    -------
    The `World` of this process.
    """
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return World(device="cuda" if cuda else "cpu")
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return World(rank=rank, size=size, local_rank=local,
                 device=f"cuda:{local}" if cuda else "cpu", backend=backend)


def teardown(world: World) -> None:
    """Leave the process group (no-op for one process)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_over_ranks(world: World, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes (every rank gets the result)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_buffers(world: World, model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics).

    DDP keeps parameters identical through its gradient all-reduce, and copies rank
    0's buffers at the start of every forward pass; after the last training step
    each rank's running statistics have moved on its own batch, so they are made
    identical again before anyone evaluates or saves.
    """
    if world.distributed:
        for b in model.buffers():
            dist.broadcast(b.data, src=0)

