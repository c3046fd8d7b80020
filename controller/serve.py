"""Starting the controller: in the foreground (``python -m controller serve``) or in a thread of its
own (tests and benchmarks, which then talk to it over real sockets like any client)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from controller.config import ControllerConfig
from controller.server import ControllerServer

log = logging.getLogger("controller")


@dataclass
class RunningController:
    server: ControllerServer
    runner: web.AppRunner
    port: int

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stops serving; with ``drain_s``, first refuses new sessions and gives the open ones that long to end."""
        if drain_s > 0:
            left = await self.server.drain(drain_s)
            if left:
                log.info("drain time over: closing %d session(s)", left)
        await self.runner.cleanup()  # the server's on_shutdown closes the sessions and their WebSockets first
        await self.server.backend.close()


async def connect_backend(cfg: ControllerConfig, wait_s: float = 60.0):
    """The Triton backend, once the server answers (it may still be starting)."""
    from tritonclient.utils import InferenceServerException

    from controller.triton_backend import TritonBackend

    deadline = time.monotonic() + wait_s
    while True:
        backend = TritonBackend(cfg.triton_url, response_timeout_s=cfg.response_timeout_s)
        try:
            await backend.start()
            return backend
        except InferenceServerException as exc:
            await backend.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"Triton at {cfg.triton_url} did not answer within {wait_s:.0f} s: "
                                   f"{exc.message()}") from exc
            await asyncio.sleep(1.0)


async def start(cfg: ControllerConfig, backend=None, vad=None, triton_wait_s: float = 60.0) -> RunningController:
    from controller.vad import SileroVad

    cfg.check()
    if cfg.open_access:
        log.warning("no API keys configured: anyone who can reach %s:%d may use this controller",
                    cfg.host, cfg.port)
    vad = vad or SileroVad(cfg.vad_model, batch_window_s=cfg.vad_batch_ms / 1000)
    backend = backend or await connect_backend(cfg, triton_wait_s)
    server = ControllerServer(cfg, backend, vad)
    runner = web.AppRunner(server.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else cfg.port
    return RunningController(server, runner, port)


class ControllerThread:
    """A controller with its own event loop in a daemon thread: ``with ControllerThread(cfg) as c: c.port``."""

    def __init__(self, cfg: ControllerConfig, **start_kw: Any):
        self.cfg, self._start_kw = cfg, start_kw
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="controller", daemon=True)
        self.running: RunningController | None = None

    def __enter__(self) -> ControllerThread:
        self._thread.start()
        self.running = self.call(start(self.cfg, **self._start_kw), timeout_s=120)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def server(self) -> ControllerServer:
        return self.running.server

    def call(self, coro: Coroutine, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self, drain_s: float = 0.0) -> None:
        if self.running is not None:
            self.call(self.running.stop(drain_s), timeout_s=30 + drain_s)
            self.running = None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
