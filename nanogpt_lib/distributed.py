"""Several processes, one model: PyTorch DistributedDataParallel under `torchrun`.

`torchrun` starts one process per rank and gives each RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT in its environment; without them the run is a single process and
nothing here changes it. Ranks talk through gloo on CPU and NCCL on CUDA (one GPU per local rank).
DDP averages the gradients of all ranks during `backward`, so with equal shares of the batch the
update equals the one-process update on the whole batch.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .expert_parallel import sharded_parameters

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among world_size processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, plots and saves."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _ENV)


def init_distributed(device: torch.device, timeout_s: float = 300.0) -> DistContext:
    """Join the process group torchrun set up (or stay a single process when not under torchrun).

    `timeout_s` bounds how long a collective waits for a rank that stopped answering: a run with a
    dead rank ends with an error instead of hanging.
    """
    if not launched_by_torchrun():
        return DistContext(device=device)
    rank, world_size, local_rank = (int(os.environ[name]) for name in _ENV)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown(ctx: DistContext, *, completed: bool = True) -> None:
    """Leave the process group: after a completed run, all ranks together.

    A rank that finishes first (rank 0 still saving, say) waits at a barrier, so no rank tears its
    connections down while a peer still uses them. DDP wrappers live in reference cycles (their
    gradient hooks point back at them) and hold the group: they are collected here, while the
    interpreter is whole, not during its shutdown, where gloo's threads can abort the process.
    After a failure there is no barrier: the others may never arrive.
    """
    if not (ctx.is_distributed and dist.is_initialized()):
        return
    if completed:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The model in DDP when there are several ranks (rank 0's weights are broadcast to all)."""
    if not ctx.is_distributed:
        return model
    # with the loop dispatch an expert that no token chose this step gets no gradient: DDP must expect it
    # (the grouped and vectorised dispatches use every expert's weight tensors, so every parameter takes part)
    config = getattr(model, "config", None)
    sharded = sharded_parameters(model)
    moe = getattr(config, "n_expert", 0) > 0 and getattr(config, "moe_dispatch", "") == "loop" and not sharded
    # experts spread over the processes (expert parallelism) differ from rank to rank: DDP neither
    # broadcasts nor averages them (`expert_parallel.reduce_expert_grads` does their part)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(sharded))
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                   find_unused_parameters=moe)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP: what checkpoints store, so they load in a single process."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    """The mean of a number over all ranks (the value itself in a single process)."""
    if not ctx.is_distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / ctx.world_size
