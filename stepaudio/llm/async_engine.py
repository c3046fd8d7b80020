"""Runs an Engine in its own thread and streams its events to asyncio consumers.

The thread sleeps on an Event while there is no work (no polling). Each request gets an asyncio
queue; leaving the ``async for`` early (client cancellation, task cancel) cancels the request in
the engine, which frees its slot and K/V at the next step boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from stepaudio.llm.engine import Engine, GenerationRequest, TokenEvent

log = logging.getLogger(__name__)

# A cancel can overtake its request (both travel separately, e.g. through BLS): it is remembered this
# long, for at most this many ids, and applied when the request arrives.
EARLY_CANCEL_TTL_S = 30.0
EARLY_CANCEL_MAX = 1024


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._early_cancels: OrderedDict[str, float] = OrderedDict()  # request id -> when cancelled
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.engine.has_work() and not self.engine._cancelled:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                events = self.engine.step()
            except Exception as exc:  # a failing step must not strand the waiting consumers
                log.exception("engine step failed")
                events = self._fail_all(str(exc))
            # One wake-up per consumer loop and step (not one per event: each costs a self-pipe write).
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, TokenEvent]]] = {}
            for ev in events:
                target = self._queues.get(ev.request_id)
                if target is not None:
                    by_loop.setdefault(target[0], []).append((target[1], ev))
            for loop, items in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that consumer's loop is closed: nobody listens
                    loop.call_soon_threadsafe(_deliver, items)

    def _fail_all(self, message: str) -> list[TokenEvent]:
        events = []
        for rid in list(self._queues):
            self.engine.cancel(rid)
            events.append(TokenEvent(rid, None, True, "error", error=f"engine error: {message}"))
        with contextlib.suppress(Exception):
            self.engine._drop_cancelled()
        return events

    async def generate(self, req: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Yields the request's events; the last one has ``finished=True``. Raises RequestError
        (before any event) for a request the engine cannot take."""
        batches = self.generate_batches(req)
        try:
            async for batch in batches:
                for ev in batch:
                    yield ev
        finally:
            await batches.aclose()

    async def generate_batches(self, req: GenerationRequest, min_tokens: int = 1) -> AsyncIterator[list[TokenEvent]]:
        """Like ``generate``, but yields every event that is ready at once: a consumer that fell
        behind the engine (a busy server) catches up in one response instead of one per token.
        A batch holds at least ``min_tokens`` token events, except the last one (``finished``)."""
        if min_tokens < 1:
            from stepaudio.llm.engine import RequestError

            raise RequestError(f"min_tokens_per_response must be >= 1, got {min_tokens}")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        if req.request_id in self._queues:
            from stepaudio.llm.engine import RequestError

            raise RequestError(f"request id {req.request_id!r} is already active")
        self._queues[req.request_id] = (loop, queue)  # before add(): the first event may come at once
        try:
            self.engine.add(req)
        except Exception:
            self._queues.pop(req.request_id, None)
            raise
        if self._take_early_cancel(req.request_id):  # after add(): a step in between would forget it
            self.engine.cancel(req.request_id)
        self._wake.set()
        finished = False
        try:
            while True:
                batch, tokens = [], 0
                while not batch or not (batch[-1].finished or tokens >= min_tokens):
                    batch.append(await queue.get())
                    while not batch[-1].finished and not queue.empty():
                        batch.append(queue.get_nowait())
                    tokens = sum(ev.token_id is not None for ev in batch)
                finished = batch[-1].finished
                yield batch
                if finished:
                    return
        finally:
            if not finished:
                self.engine.cancel(req.request_id)
                self._wake.set()
            self._queues.pop(req.request_id, None)

    @property
    def active(self) -> int:
        """Requests whose streams are open."""
        return len(self._queues)

    def cancel(self, request_id: str) -> bool:
        """Cancels a running request; returns False when none runs with that id (the cancel is then
        kept for a while, in case the request itself is still on its way)."""
        if request_id not in self._queues:
            self._early_cancels[request_id] = time.monotonic()
            self._early_cancels.move_to_end(request_id)
            while len(self._early_cancels) > EARLY_CANCEL_MAX:
                self._early_cancels.popitem(last=False)
            return False
        self.engine.cancel(request_id)
        self._wake.set()
        return True

    def _take_early_cancel(self, request_id: str) -> bool:
        now = time.monotonic()
        while self._early_cancels:
            oldest, when = next(iter(self._early_cancels.items()))
            if now - when <= EARLY_CANCEL_TTL_S:
                break
            self._early_cancels.pop(oldest)
        return self._early_cancels.pop(request_id, None) is not None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)


def _deliver(items: list[tuple[asyncio.Queue, TokenEvent]]) -> None:
    for queue, ev in items:
        queue.put_nowait(ev)
