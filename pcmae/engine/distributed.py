"""DDP through torchrun: process-group setup from the environment, rank helpers, a resumable sampler.

Launched with ``torchrun --nproc_per_node=K``, the variables RANK / WORLD_SIZE / LOCAL_RANK are set;
otherwise everything here degrades to a single process (rank 0 of 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from pcmae.registry import ConfigError


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this context created the process group and tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """True on rank 0 (also after the process group is gone, from torchrun's RANK)."""
    return get_rank() == 0


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA (this process's GPU) when present, else CPU; 'cuda' without a GPU is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but torch sees no CUDA device (use 'auto' or 'cpu')")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"process with LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                           "start at most one process per GPU, or set train.device=cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm (the mini-PointNet's, spconv's ``SparseSequential`` ones) -> SyncBatchNorm: batch statistics
    over all processes. torch runs SyncBatchNorm on GPUs only, so on CPU this is a ConfigError."""
    if torch.device(device).type != "cuda":
        raise ConfigError(f"train.sync_bn: torch's SyncBatchNorm runs on GPUs only, this run is on {device}; "
                          "set train.sync_bn=false")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU) when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch_device = pick_device(device, local_rank)
    owns = False
    if world_size > 1 and not is_dist():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo", init_method="env://")
        owns = True
    return DistContext(get_rank(), get_world_size(), local_rank, torch_device, owns)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group if ``ctx`` created it."""
    if ctx.owns_group and is_dist():
        dist.barrier()
        dist.destroy_process_group()


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (a one-element list without DDP)."""
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(values: dict) -> dict:
    """Average a dict of float scalars over ranks (same keys on every rank)."""
    if not is_dist() or not values:
        return values
    keys = sorted(values)
    backend_cuda = dist.get_backend() == "nccl"
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device="cuda" if backend_cuda else "cpu")
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle with ``seed + epoch``, shard by rank) that can start ``start_index``
    samples into this rank's epoch order, so a run resumed mid-epoch sees the remaining samples in the
    same order as an uninterrupted one. Works without a process group (rank 0 of 1)."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start_index = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index:])

    def __len__(self) -> int:
        return self.num_samples - self.start_index
