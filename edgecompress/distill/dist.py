"""torch.distributed plumbing for the trainer: the same script runs in one process or under
``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on CUDA).

Convention: a loader's ``batch_size`` is the *global* batch. Under N processes each rank takes
every N-th sample of the same seeded permutation in batches of ``batch_size // N``, so that step k
of every rank together covers exactly the samples of step k of a single-process run, and DDP's
gradient averaging gives the same update (without batch norm, or with SyncBatchNorm).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from edgecompress.errors import DataError


def init_from_env() -> tuple[int, int]:
    """(rank, world size); joins the process group ``torchrun`` describes in the environment
    (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...) if it is not joined yet."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("EDGECOMPRESS_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_sum(*values: float) -> list[float]:
    """Sums of the given numbers over all ranks (the numbers themselves in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


class _Shard(torch.utils.data.Sampler):
    """Every ``world``-th index of a base sampler's order, starting at ``rank``. A shuffling base
    (RandomSampler) is replaced by a permutation seeded with ``seed + epoch``, as DistributedSampler
    does, so that every rank draws the same order whatever its random state."""

    def __init__(self, base, rank: int, world: int, pad: bool, seed: int = 0):
        self.base, self.rank, self.world, self.pad, self.seed, self.epoch = base, rank, world, pad, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def _order(self) -> list[int]:
        if isinstance(self.base, torch.utils.data.RandomSampler) and not self.base.replacement:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.base.data_source), generator=g).tolist()
        else:
            order = list(iter(self.base))
        if self.pad and len(order) % self.world:
            order += order[: self.world - len(order) % self.world]
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self._order())

    def __len__(self) -> int:
        n = len(self.base)
        return (-(-n // self.world) if self.pad else len(range(self.rank, n, self.world)))


def shard_loader(loader, rank: int, world: int, *, train: bool, seed: int = 0):
    """This rank's share of ``loader``: the project's ArrayLoader (re-sharded), or a torch DataLoader
    (rebuilt with a sharded sampler; a shuffling one draws its order from ``seed`` + epoch).
    Training shards use the global batch / world per rank and are
    padded so every rank takes the same number of steps; evaluation shards are not padded."""
    if world == 1:
        return loader
    if loader.batch_size % world:
        raise DataError(f"the global batch {loader.batch_size} does not split over {world} processes; "
                        f"use a batch size divisible by {world}")
    per = loader.batch_size // world if train else loader.batch_size
    if hasattr(loader, "world_size") and hasattr(loader, "rank"):  # edgecompress.data.ArrayLoader
        out = copy.copy(loader)
        out.rank, out.world_size, out.batch_size, out.pad = rank, world, per, train
        return out
    if isinstance(loader, torch.utils.data.DataLoader):
        if loader.batch_sampler is not None and loader.batch_size is None:
            raise DataError("a DataLoader with a custom batch_sampler cannot be sharded; pass batch_size= and "
                            "sampler= instead")
        sampler = _Shard(loader.sampler, rank, world, pad=train, seed=seed)
        return torch.utils.data.DataLoader(
            loader.dataset, batch_size=per, sampler=sampler, num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
            worker_init_fn=loader.worker_init_fn, generator=loader.generator)
    raise DataError(f"cannot shard a {type(loader).__name__} over {world} processes; pass an "
                    "edgecompress.data.ArrayLoader or a torch DataLoader")


def wrap(model: nn.Module, *, sync_bn: bool) -> nn.Module:
    """DDP around ``model`` (built fresh for each training run, so a model pruned since the last one
    is wrapped with its current parameters); BatchNorm becomes SyncBatchNorm if asked."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    dev = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
