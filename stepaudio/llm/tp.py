"""Tensor-parallel helpers: slicing a full state dict for one rank, and process-group set-up.

The model itself is TP-aware (see model.py); this file decides which slice of each full tensor a
rank holds, the same rule the lazy safetensors loader applies.
"""

from __future__ import annotations

import os

import torch

from stepaudio.llm.loader import shard_dim
from stepaudio.llm.model import TensorParallel


def shard_tensor(name: str, full: torch.Tensor, local_shape: torch.Size, tp: TensorParallel) -> torch.Tensor:
    dim = shard_dim(name)
    if dim is None or tp.size == 1:
        return full
    n = local_shape[dim]
    return full.narrow(dim, tp.rank * n, n).contiguous()


def shard_state_dict(full: dict[str, torch.Tensor], local: dict[str, torch.Tensor], tp: TensorParallel) -> dict:
    return {name: shard_tensor(name, full[name], local[name].shape, tp) for name in local}


def init_from_env(backend: str | None = None, idle_timeout_s: float = 7 * 24 * 3600) -> TensorParallel:
    """Join the process group torchrun (or the caller) describes with RANK/WORLD_SIZE/MASTER_*.

    gloo on CPU, NCCL when CUDA is available, unless ``backend`` says otherwise.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world == 1:
        return TensorParallel()
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        # Followers wait in a broadcast while the server is idle: the collective timeout must be long.
        from datetime import timedelta

        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=idle_timeout_s))
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    return TensorParallel(rank=rank, size=world)
