"""Small helpers the Python-backend adapters share (no Triton import here)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque


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


class LoopThread:
    """An asyncio event loop on a thread of its own, for a decoupled model with a synchronous ``execute``
    that hands each request to a coroutine and returns at once.

    Triton 2.51's ``async def execute`` keeps its loop thread alive through the stub's finalization (a
    segfault at every unload was seen, "Cannot remove future from background" now and then); this loop is
    the model's own, and ``close`` stops it before the interpreter goes away.
    """

    def __init__(self, name: str):
        import asyncio

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro):
        """Schedules ``coro`` on the loop (thread-safe); returns its concurrent future."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self, timeout_s: float = 10.0) -> None:
        import asyncio

        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout_s)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.loop.close()


class Graveyard:
    """Keeps objects alive for ``hold_s`` after they are handed in, so that the last reference to them is
    dropped here, by a Python thread holding the GIL.

    Triton 2.51's Python stub (python_backend before commit b771f4f, "Fix requested output deleting
    extra outputs") frees the numpy arrays behind its tensors without the GIL in two places: a BLS
    decoupled response iterator that the stub's own C++ thread destroys when its stream ends (after
    Python let go of it), and outputs pruned from a response because the requester did not ask for
    them. Either corrupts the interpreter's heap under load and kills the stub. Burying every BLS
    iterator here means the stub never holds the last reference."""

    def __init__(self, hold_s: float = 30.0, clock=None):
        self.hold_s = hold_s
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._graves: deque[tuple[float, object]] = deque()

    def bury(self, obj: object) -> object:
        """Holds ``obj`` for ``hold_s`` (and drops what was held longer); returns it."""
        now = self._clock()
        with self._lock:
            self._graves.append((now, obj))
            expired = []
            while self._graves and now - self._graves[0][0] > self.hold_s:
                expired.append(self._graves.popleft()[1])
        del expired  # the last references go here, outside the lock
        return obj

    def __len__(self) -> int:
        return len(self._graves)

    def clear(self) -> None:
        with self._lock:
            self._graves.clear()


class Gauge:
    """One labelled gauge of a custom Triton metric family, released in ``close()``.

    Triton 2.51's stub tells the server about a metric's end from the metric's destructor, through its
    shared-memory pool. A metric still referenced when the stub tears down (after ``finalize``) is
    destroyed after that pool is gone: the stub then segfaults in ``Metric::SaveToSharedMemory`` (at
    every unload, for every model holding a metric). ``close()`` from ``finalize`` drops it in time.
    ``pb_utils`` is passed in (it exists only inside the stub); without custom metrics the gauge is a
    no-op and says so in ``available``."""

    def __init__(self, pb_utils, name: str, description: str, labels: dict[str, str], log=None):
        self._family = self._metric = None
        try:
            self._family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
            self._metric = self._family.Metric(labels=labels)
        except Exception as exc:  # custom metrics are optional (e.g. disabled on the server)
            self._family = self._metric = None
            if log is not None:
                log.warning("custom metric %s unavailable: %s", name, exc)

    @property
    def available(self) -> bool:
        return self._metric is not None

    def set(self, value: float) -> None:
        metric = self._metric
        if metric is not None:
            metric.set(value)

    def close(self) -> None:
        """Releases the metric, then its family (a family must outlive its metrics)."""
        self._metric = None
        self._family = None
