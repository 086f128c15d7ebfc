"""DistributedDataParallel, switched on by the environment ``torchrun`` sets.

``torchrun --nproc_per_node=N -m wavemel train ...`` starts N copies of the same command with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_distributed` reads them. Without
them (a plain ``wavemel train``) everything here is a no-op on a single process, so the training
loop has one code path. Each rank trains on its own shard of every epoch's shuffled order and
validates its own shard of the validation clips; losses are summed and predictions gathered
across ranks, so every rank computes the same metrics and takes the same early-stopping decision.
Only rank 0 writes files and prints.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from wavemel._device import resolve_device

__all__ = [
    "DistContext",
    "init_distributed",
    "resolve_device",
    "wrap_model",
    "unwrap_model",
    "all_reduce_sum",
    "all_gather_objects",
    "barrier",
    "broadcast_buffers",
    "cleanup",
    "ShardSampler",
]


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) job.

    Attributes:
        rank: Global rank (0 for a single process).
        world_size: Number of processes.
        local_rank: Rank on this node; selects the CUDA device.
        device: The torch device this process trains on.
        enabled: Whether a process group was initialised (``world_size > 1``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's variables, if any.

    Uses NCCL when training on CUDA and gloo on CPU.

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N" (N is ignored under torchrun: LOCAL_RANK wins).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return DistContext(device=resolve_device(device, local_rank))
    if device.startswith("cuda:"):
        device = "cuda"
    torch_device = resolve_device(device, local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if torch_device.type == "cuda" else "gloo",
            # Validation on rank 0 of a large set can keep others waiting at a collective.
            timeout=datetime.timedelta(minutes=60),
        )
    return DistContext(rank, world_size, local_rank, torch_device, enabled=True)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around ``model`` when running under torchrun, else ``model``.

    Only parameters with ``requires_grad`` are synchronised, so cnn-comb's frozen branches
    cost nothing; every trainable parameter is used in each step, hence no unused-parameter scan.
    """
    if not ctx.enabled:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=False
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (identity on a single process)."""
    if not ctx.enabled:
        return list(values)
    # float64 on CPU works for gloo; NCCL needs the tensor on this rank's GPU.
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj from rank 0, obj from rank 1, ...]`` on every rank."""
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers before each forward, but every rank then updates them with its own
    batch; syncing before validation makes all ranks score with the weights rank 0 saves.
    """
    if not ctx.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (after a final barrier so no rank exits early)."""
    if ctx.enabled and dist.is_initialized():
        # A DDP wrapper sits in reference cycles (its hooks refer back to it): free it while the
        # group is alive. Left to the collector at interpreter exit, its gloo work was destroyed
        # after the group and, now and then, aborted the process ("terminate called without an
        # active exception", seen in the torchrun test on a loaded machine).
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


class ShardSampler(torch.utils.data.Sampler[int]):
    """Each rank's share of a shuffled order that depends only on (seed, epoch).

    Like ``torch.utils.data.DistributedSampler``, the permutation is padded by repeating its start
    so that it divides evenly, and rank r takes every ``world_size``-th index from ``r``. Because
    the order is a pure function of (seed, epoch), a resumed run sees the same batches as an
    uninterrupted one.

    Args:
        num_items: Dataset length.
        rank, world_size: This process's place in the job.
        seed: Base seed shared by all ranks.
        shuffle: Shuffle every epoch (training) or keep the dataset order.
    """

    def __init__(
        self, num_items: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle=True
    ):
        self.num_items = num_items
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.num_samples = -(-num_items // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, 0x5A3D])
            order = rng.permutation(self.num_items).tolist()
        else:
            order = list(range(self.num_items))
        total = self.num_samples * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return iter(order[self.rank : total : self.world_size])
