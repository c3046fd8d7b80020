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
from collections.abc import AsyncIterator

from stepaudio.llm.engine import Engine, GenerationRequest, TokenEvent

log = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
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
            for ev in events:
                target = self._queues.get(ev.request_id)
                if target is not None:
                    loop, queue = target
                    loop.call_soon_threadsafe(queue.put_nowait, ev)

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
        self._wake.set()
        finished = False
        try:
            while True:
                ev = await queue.get()
                yield ev
                if ev.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self.engine.cancel(req.request_id)
                self._wake.set()
            self._queues.pop(req.request_id, None)

    def cancel(self, request_id: str) -> None:
        self.engine.cancel(request_id)
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
