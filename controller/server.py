"""The controller's HTTP/WebSocket server (aiohttp): /v1/realtime, /healthz, /metrics, the demo page at /.

Auth: ``Authorization: Bearer <key>`` (or the browser form, a ``openai-insecure-api-key.<key>``
WebSocket subprotocol) against the configured keys; with no keys the server only binds to localhost.
Limits: at most ``max_sessions`` sessions (more get HTTP 503); a frame over ``max_frame_bytes`` gets an
error event and is dropped, and one over four times that closes the connection (1009).
Draining (``drain``, before a planned stop): new sessions get HTTP 503 ``draining`` and ``/healthz`` 503,
so a load balancer sends them elsewhere, while the open conversations go on until they end or time runs out.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

from aiohttp import WSCloseCode, WSMsgType, web

from controller.backend import Backend
from controller.config import ControllerConfig
from controller.metrics import Metrics
from controller.session import ClientFrame, OversizedFrame, Session
from controller.vad import VadModel
from controller.web import add_routes as add_web_routes

log = logging.getLogger("controller.server")
KEY_SUBPROTOCOL = "openai-insecure-api-key."
HEARTBEAT_S = 30.0
SHUTDOWN_SESSION_WAIT_S = 10.0  # at shutdown, how long sessions get to cancel their Triton requests


class ControllerServer:
    def __init__(self, cfg: ControllerConfig, backend: Backend, vad: VadModel, metrics: Metrics | None = None):
        self.cfg, self.backend, self.vad = cfg, backend, vad
        self.metrics = metrics or Metrics()
        self.sessions: dict[str, Session] = {}
        self._connections: dict[str, tuple[web.WebSocketResponse, asyncio.Task]] = {}
        self.draining = False
        self._session_closed = asyncio.Event()  # set at each session's end, for drain()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.on_shutdown.append(self._on_shutdown)
        app.router.add_get("/v1/realtime", self._realtime)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        add_web_routes(app)  # the browser demo at /
        return app

    # -- auth --------------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        if self.cfg.open_access:
            return True
        offered = []
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(auth[7:].strip())
        for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            if proto.strip().startswith(KEY_SUBPROTOCOL):
                offered.append(proto.strip()[len(KEY_SUBPROTOCOL):])
        return any(hmac.compare_digest(o.encode(), k.encode()) for o in offered for k in self.cfg.api_keys)

    @staticmethod
    def _reject(status: int, code: str, message: str) -> web.Response:
        body = {"error": {"type": "invalid_request_error", "code": code, "message": message}}
        return web.json_response(body, status=status)

    # -- endpoints ---------------------------------------------------------------------------------
    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            self.metrics.sessions_rejected.labels("auth").inc()
            return self._reject(401, "invalid_api_key", "missing or wrong API key (Authorization: Bearer <key>)")
        if self.draining:
            self.metrics.sessions_rejected.labels("draining").inc()
            return self._reject(503, "draining", "the server is shutting down: connect again to reach another")
        if len(self.sessions) >= self.cfg.max_sessions:
            self.metrics.sessions_rejected.labels("capacity").inc()
            return self._reject(503, "session_limit", f"the server has its {self.cfg.max_sessions} sessions")
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        ws = web.WebSocketResponse(max_msg_size=4 * self.cfg.max_frame_bytes, heartbeat=HEARTBEAT_S,
                                   protocols=[p for p in protocols if p == "realtime"], compress=self.cfg.ws_compress)
        await ws.prepare(request)
        beta = "realtime=v1" in request.headers.get("OpenAI-Beta", "")

        async def send(ev: dict) -> None:
            await ws.send_str(json.dumps(ev, ensure_ascii=False))

        session = Session(self.cfg, self.backend, self.vad, self.metrics, send,
                          model=request.query.get("model", "step-audio"), beta=beta)
        self.sessions[session.id] = session
        self.metrics.sessions.inc()
        log.info("session %s opened (%s, %d open)", session.id, "beta" if beta else "GA", len(self.sessions))
        runner = asyncio.create_task(session.run(), name=session.id)
        self._connections[session.id] = (ws, runner)
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    data = msg.data if msg.type is WSMsgType.TEXT else msg.data.decode("utf-8", "replace")
                    size = len(msg.data) if msg.type is WSMsgType.BINARY else len(data)
                    if size > self.cfg.max_frame_bytes // 4 and msg.type is WSMsgType.TEXT:
                        size = len(data.encode("utf-8"))
                    if size > self.cfg.max_frame_bytes:
                        session.queue.put_nowait(OversizedFrame(size))
                    else:
                        session.queue.put_nowait(ClientFrame(data))
                elif msg.type is WSMsgType.ERROR:
                    log.info("session %s: connection error %s", session.id, ws.exception())
                    break
                if runner.done():
                    break
        finally:
            session.queue.put_nowait(None)
            try:
                await runner
            except Exception:
                log.exception("session %s failed", session.id)
            self.sessions.pop(session.id, None)
            self._connections.pop(session.id, None)
            log.info("session %s closed (%d open)", session.id, len(self.sessions))
            self._session_closed.set()
            await ws.close()
        return ws

    async def _on_shutdown(self, app: web.Application) -> None:
        """Server shutdown: every session closes (cancelling what it runs in Triton, its open tokenizer
        sequences included) before the backend goes, and its client is told (1001, going away). Without
        this, aiohttp waits for each WebSocket handler, that is for the client, up to its shutdown timeout."""
        connections = list(self._connections.items())
        if not connections:
            return
        log.info("shutting down: closing %d session(s)", len(connections))
        for sid, _ in connections:
            session = self.sessions.get(sid)
            if session is not None:
                session.queue.put_nowait(None)
        _done, late = await asyncio.wait([r for _, (_, r) in connections], timeout=SHUTDOWN_SESSION_WAIT_S)
        for runner in late:
            log.warning("session %s did not close within %.0f s of shutdown", runner.get_name(),
                        SHUTDOWN_SESSION_WAIT_S)
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
                               for _, (ws, _) in connections), return_exceptions=True)

    async def drain(self, timeout_s: float) -> int:
        """Refuses new sessions and waits up to ``timeout_s`` for the open ones to end; returns how many are
        still open (the shutdown that follows closes them)."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + timeout_s
        if self.sessions:
            log.info("draining: %d session(s) open, waiting up to %.0f s", len(self.sessions), timeout_s)
        while self.sessions and (left := deadline - asyncio.get_running_loop().time()) > 0:
            self._session_closed.clear()
            try:
                await asyncio.wait_for(self._session_closed.wait(), left)
            except asyncio.TimeoutError:  # (not the builtin before Python 3.11)
                break
        return len(self.sessions)

    async def _healthz(self, request: web.Request) -> web.Response:
        health = await self.backend.health()
        health["sessions"] = len(self.sessions)
        if self.draining:
            health.update(ok=False, draining=True)
        return web.json_response(health, status=200 if health.get("ok") else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.sessions_active.set(len(self.sessions))
        self.metrics.triton_streams.set(self.backend.open_streams())
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})
