"""Follower ranks of a tensor-parallel engine, as separate processes.

Rank 0 (the serving process) calls ``launch_followers``; each follower loads its shard of the
checkpoint, builds the same Engine and runs ``follow()`` until rank 0 shuts down. Followers are
plain ``python -m stepaudio.llm.tp_worker`` processes (not multiprocessing), so this also works
inside Triton's Python-backend stub, whose own executable is not a Python interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch

from stepaudio.llm.model import TensorParallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device(device: str, rank: int) -> str:
    return f"cuda:{rank}" if device.startswith("cuda") else "cpu"


def _backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


@dataclass
class TPGroup:
    tp: TensorParallel
    followers: list[subprocess.Popen]
    device: str

    def wait(self, timeout_s: float = 30) -> None:
        for p in self.followers:
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()


def launch(world: int, checkpoint: str, dtype: str | None, device: str, engine_kwargs: dict,
           idle_timeout_s: float = 7 * 24 * 3600) -> TPGroup:
    """Start ranks 1..world-1, then join the group as rank 0."""
    from datetime import timedelta

    import torch.distributed as dist

    init = f"tcp://127.0.0.1:{_free_port()}"
    python = shutil.which("python3") or sys.executable
    spec = json.dumps({"world": world, "init": init, "checkpoint": checkpoint, "dtype": dtype, "device": device,
                       "engine": engine_kwargs, "idle_timeout_s": idle_timeout_s})
    followers = [subprocess.Popen([python, "-m", "stepaudio.llm.tp_worker", "--rank", str(r), "--spec", spec],
                                  env=os.environ.copy()) for r in range(1, world)]
    dist.init_process_group(_backend(device), init_method=init, rank=0, world_size=world,
                            timeout=timedelta(seconds=idle_timeout_s))
    return TPGroup(TensorParallel(0, world), followers, _device(device, 0))


def main(argv: list[str] | None = None) -> int:
    from datetime import timedelta

    import torch.distributed as dist

    from stepaudio.llm.engine import Engine
    from stepaudio.llm.loader import load_step1
    from stepaudio.llm.tp_engine import follow

    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    dist.init_process_group(_backend(spec["device"]), init_method=spec["init"], rank=args.rank,
                            world_size=spec["world"], timeout=timedelta(seconds=spec["idle_timeout_s"]))
    try:
        tp = TensorParallel(args.rank, spec["world"])
        device = _device(spec["device"], args.rank)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        model = load_step1(spec["checkpoint"], dtype=spec["dtype"], device=device, tp=tp)
        follow(Engine(model, **spec["engine"]), tp)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
