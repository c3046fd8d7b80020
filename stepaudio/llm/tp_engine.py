"""Tensor-parallel serving: one Engine per rank, driven in lockstep by rank 0.

Every rank holds the model shard and K/V of its heads. Rank 0 owns the requests: at each step it
broadcasts what changed (new requests, cancellations), every rank applies the same changes and
runs the same ``Engine.step()``. Scheduling is deterministic and the logits are identical on all
ranks after the lm_head all-gather, so every rank samples the same tokens, provided every request
has its own seeded generator: rank 0 gives a seed to requests that came without one.
"""

from __future__ import annotations

import random
import threading
from dataclasses import replace

from stepaudio.llm.engine import Engine, GenerationRequest, TokenEvent
from stepaudio.llm.model import TensorParallel

_STOP = ("stop",)


class LockstepEngine:
    """Rank 0's face of a TP engine: the Engine API (add, cancel, step, has_work)."""

    def __init__(self, engine: Engine, tp: TensorParallel):
        if tp.rank != 0:
            raise ValueError("LockstepEngine runs on rank 0; other ranks run follow()")
        self.engine = engine
        self.tp = tp
        self._ops: list[tuple] = []
        self._lock = threading.Lock()
        self._rng = random.Random()

    # The Engine interface, as AsyncEngine uses it.
    @property
    def max_batch_size(self) -> int:
        return self.engine.max_batch_size

    @property
    def _cancelled(self) -> bool:
        return any(op[0] == "cancel" for op in self._ops)

    def validate(self, req: GenerationRequest) -> None:
        self.engine.validate(req)

    def add(self, req: GenerationRequest) -> None:
        self.engine.validate(req)
        if req.params.seed is None:
            req = replace(req, params=replace(req.params, seed=self._rng.getrandbits(63)))
        with self._lock:
            self._ops.append(("add", req))

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._ops.append(("cancel", request_id))

    def has_work(self) -> bool:
        return bool(self._ops) or self.engine.has_work()

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    def step(self) -> list[TokenEvent]:
        with self._lock:
            ops, self._ops = self._ops, []
        _broadcast(ops, self.tp)
        return _apply_and_step(self.engine, ops)

    def _drop_cancelled(self) -> list[TokenEvent]:
        return []

    def shutdown(self) -> None:
        """Release the followers (they return from follow())."""
        _broadcast([_STOP], self.tp)


def follow(engine: Engine, tp: TensorParallel, on_events=None) -> None:
    """The loop of ranks > 0: apply rank 0's changes and step, until rank 0 shuts down."""
    while True:
        ops = _broadcast(None, tp)
        if _STOP in ops:
            return
        events = _apply_and_step(engine, ops)
        if on_events is not None:
            on_events(events)


def _broadcast(ops: list | None, tp: TensorParallel) -> list:
    import torch.distributed as dist

    box = [ops]
    dist.broadcast_object_list(box, src=0, group=tp.group)
    return box[0]


def _apply_and_step(engine: Engine, ops: list) -> list[TokenEvent]:
    for op in ops:
        if op[0] == "add":
            engine.add(op[1])
        elif op[0] == "cancel":
            engine.cancel(op[1])
    if not engine.has_work() and not engine._cancelled:
        return []
    return engine.step()
