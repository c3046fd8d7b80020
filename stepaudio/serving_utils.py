"""Small helpers the Python-backend adapters share (no Triton import here)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict


def model_parameters(args: dict) -> dict[str, str]:
    """The ``parameters`` block of a Triton model config, as plain strings."""
    conf = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in conf.get("parameters", {}).items()}


def instance_device(args: dict, configured: str) -> str:
    """torch device for this instance: cuda:<id> for KIND_GPU instances, else cpu."""
    if configured == "cuda" and args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    return "cuda" if configured == "cuda" else "cpu"


def providers(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


class CancelBoard:
    """Cancel flags of running requests, keyed by request id, for cancels that arrive as requests of
    their own (Triton 2.51 cannot cancel a request started through BLS). A cancel that overtakes its
    request is remembered for ``early_ttl_s`` (at most ``max_early`` ids) and applied on arrival."""

    def __init__(self, early_ttl_s: float = 30.0, max_early: int = 1024, clock=None):
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}
        self._early: OrderedDict[str, float] = OrderedDict()
        self.early_ttl_s, self.max_early = early_ttl_s, max_early

    def register(self, request_id: str) -> threading.Event:
        """The flag of a starting request (already set if its cancel came first)."""
        flag = threading.Event()
        with self._lock:
            if request_id in self._running:
                raise ValueError(f"request id {request_id!r} is already active")
            self._running[request_id] = flag
            now = self._clock()
            while self._early and now - next(iter(self._early.values())) > self.early_ttl_s:
                self._early.popitem(last=False)
            if self._early.pop(request_id, None) is not None:
                flag.set()
        return flag

    def cancel(self, request_id: str) -> bool:
        """True when a running request was flagged; else the cancel is kept for a while."""
        with self._lock:
            flag = self._running.get(request_id)
            if flag is None:
                self._early[request_id] = self._clock()
                self._early.move_to_end(request_id)
                while len(self._early) > self.max_early:
                    self._early.popitem(last=False)
                return False
        flag.set()
        return True

    def release(self, request_id: str) -> None:
        with self._lock:
            self._running.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._running)
