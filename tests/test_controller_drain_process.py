"""`python -m controller serve --drain-s` as a process against the real tiny tritonserver: SIGTERM starts
the drain (the path a Kubernetes pod stop takes), an open session keeps the process up, its end lets it exit."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
import websockets

from export.controller_sidecar import ControllerSidecar

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_sigterm_drains_then_exits_when_the_last_session_ends(tiny_server, tmp_path):
    port = _free_port()
    ctl = ControllerSidecar(tiny_server.grpc_url, port, extra_args=("--drain-s", "60"),
                            log_path=tmp_path / "controller.log").start(timeout_s=120)
    try:
        assert _health(port)[0] == 200

        async def go():
            async with websockets.connect(ctl.url) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
                ctl.proc.send_signal(signal.SIGTERM)
                for _ in range(100):
                    status, body = _health(port)
                    if status == 503:
                        break
                    await asyncio.sleep(0.05)
                assert status == 503 and body.get("draining") is True
                with pytest.raises(websockets.InvalidStatus) as refused:
                    async with websockets.connect(ctl.url):
                        pass
                assert refused.value.response.status_code == 503
                await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "still here"}}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.updated"
                assert ctl.proc.poll() is None  # the open session keeps it serving
            t0 = time.monotonic()
            await asyncio.to_thread(ctl.proc.wait, 30)
            return time.monotonic() - t0

        waited_s = asyncio.run(go())
        assert ctl.proc.returncode == 0 and waited_s < 15  # not the 60 s drain: the session had ended
        assert "draining: 1 session(s) open" in (tmp_path / "controller.log").read_text()
    finally:
        ctl.stop()
