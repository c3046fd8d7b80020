"""The controller's HTTP side over real sockets (fake backend and VAD): auth, limits, health, metrics."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
import websockets

from controller.config import ControllerConfig
from controller.serve import ControllerThread
from tests.controller_fakes import FakeBackend, FakeVad, pcm16_b64, silence, speech


def controller(**cfg) -> ControllerThread:
    cfg.setdefault("port", 0)
    return ControllerThread(ControllerConfig(**cfg), backend=FakeBackend(), vad=FakeVad())


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def recv_type(ws, type_: str) -> dict:
    while True:
        ev = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if ev["type"] == type_:
            return ev


async def speak_turn(ws) -> dict:
    """Speech then silence in 40 ms frames (24 kHz); the turn's ``response.done``."""
    for chunk in (speech(800), silence(800)):
        for i in range(0, len(chunk), 960):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16_b64(chunk[i:i + 960])}))
    return await recv_type(ws, "response.done")


async def expect_going_away(ws) -> None:
    """The server closes the connection with 1001 (going away)."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv_type(ws, "never")
    assert closed.value.rcvd.code == 1001


def test_keys_are_checked():
    with controller(api_keys=("k1", "k2")) as c:
        url = f"ws://127.0.0.1:{c.port}/v1/realtime?model=x"

        async def go():
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                with pytest.raises(websockets.InvalidStatus) as e:
                    async with websockets.connect(url, additional_headers=headers):
                        pass
                assert e.value.response.status_code == 401
            async with websockets.connect(url, additional_headers={"Authorization": "Bearer k2"}) as ws:
                assert (await recv_type(ws, "session.created"))["session"]["model"] == "x"
            # the browser form: the key in a subprotocol
            async with websockets.connect(url, subprotocols=["realtime", "openai-insecure-api-key.k1"]) as ws:
                await recv_type(ws, "session.created")

        asyncio.run(go())
        _status, text = get(c.port, "/metrics")
        assert 'controller_sessions_rejected_total{reason="auth"} 2.0' in text


def test_open_access_only_on_localhost():
    with pytest.raises(ValueError, match="without API keys"):
        ControllerConfig(host="0.0.0.0").check()
    ControllerConfig(host="0.0.0.0", api_keys=("k",)).check()


def test_later_clause_first_chunk_is_checked():
    from controller.__main__ import main
    from controller.clauses import ClausePolicy

    for bad in (-5, 1001):
        with pytest.raises(ValueError, match=r"later-clause first chunk must be 1\.\.1000"):
            ControllerConfig(clause_policy=ClausePolicy(later_first_chunk_tokens=bad)).check()
    ControllerConfig(clause_policy=ClausePolicy(later_first_chunk_tokens=None)).check()
    assert main(["serve", "--tts-later-first-chunk-tokens", "-5"]) == 2  # a clear error, not a traceback
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="later-clause min ahead"):
            ControllerConfig(clause_policy=ClausePolicy(later_min_ahead_s=bad)).check()
    assert main(["serve", "--tts-later-min-ahead-s", "-1"]) == 2


def test_later_clause_policy_comes_from_the_command_line():
    from controller.__main__ import _config, _parser

    cfg = _config(_parser().parse_args(["serve", "--tts-later-first-chunk-tokens", "40", "--tts-later-min-ahead-s", "1.2"]))
    assert (cfg.clause_policy.later_first_chunk_tokens, cfg.clause_policy.later_min_ahead_s) == (40, 1.2)
    off = _config(_parser().parse_args(["serve", "--tts-later-first-chunk-tokens", "0"]))
    assert off.clause_policy.later_first_chunk_tokens is None
    assert not cfg.clause_policy.tts_ahead
    assert _config(_parser().parse_args(["serve", "--tts-ahead"])).clause_policy.tts_ahead


def test_session_limit_and_frame_limits():
    with controller(max_sessions=1, max_frame_bytes=4096) as c:
        url = f"ws://127.0.0.1:{c.port}/v1/realtime"

        async def go():
            async with websockets.connect(url) as ws:
                await recv_type(ws, "session.created")
                with pytest.raises(websockets.InvalidStatus) as e:
                    async with websockets.connect(url):
                        pass
                assert e.value.response.status_code == 503
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 8000}))
                assert (await recv_type(ws, "error"))["error"]["code"] == "frame_too_large"
                assert (await speak_turn(ws))["response"]["status"] == "completed"  # the session still works
                # past four times the limit the connection is closed (1009: message too big)
                await ws.send("x" * (4 * 4096 + 1))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await recv_type(ws, "never")
                assert closed.value.rcvd.code == 1009

        asyncio.run(go())


def test_session_audio_limit():
    with controller(max_session_audio_s=1.0) as c:
        async def go():
            async with websockets.connect(f"ws://127.0.0.1:{c.port}/v1/realtime") as ws:
                await recv_type(ws, "session.created")
                for _ in range(3):
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16_b64(silence(400))}))
                assert (await recv_type(ws, "error"))["error"]["code"] == "session_audio_limit_exceeded"

        asyncio.run(go())


def test_healthz_and_metrics():
    with controller() as c:
        status, body = get(c.port, "/healthz")
        assert status == 200 and json.loads(body) == {"ok": True, "sessions": 0}
        status, text = get(c.port, "/metrics")
        assert status == 200
        for name in ("controller_sessions_active", "controller_turns_total", "controller_speculation_total",
                     "controller_stage_latency_seconds_bucket", "controller_triton_streams_open"):
            assert name in text


def test_shutdown_closes_a_speaking_session_and_its_tokenizer_stream_at_once():
    """Stopping the server while a client is connected, mid-utterance: the session is closed (its open
    tokenizer stream cancelled) before the backend goes, and the client gets 1001 at once, instead of
    aiohttp waiting for the WebSocket handler (the client) up to its 60 s shutdown timeout."""
    backend = FakeBackend()
    c = ControllerThread(ControllerConfig(port=0), backend=backend, vad=FakeVad())
    c.__enter__()

    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{c.port}/v1/realtime") as ws:
            await recv_type(ws, "session.created")
            x = speech(600)
            for i in range(0, len(x), 2400):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16_b64(x[i:i + 2400])}))
            await recv_type(ws, "input_audio_buffer.speech_started")
            assert backend.open == 1  # the speech run's tokenizer stream
            t0 = time.monotonic()
            await asyncio.wait_for(asyncio.to_thread(c.stop), 10)
            assert time.monotonic() - t0 < 5
            await expect_going_away(ws)

    try:
        asyncio.run(go())
    finally:
        c.stop()
    assert backend.open == 0 and backend.tokenizer_cancels == 1


def test_drain_refuses_new_sessions_and_lets_open_ones_finish():
    """A planned stop with drain: new sessions get 503 ``draining`` and /healthz 503 (a load balancer sends
    them elsewhere); the open conversation goes on (a whole turn answered) and, once it ends, the stop
    completes without waiting out the drain time."""
    c = controller()
    c.__enter__()
    url = f"ws://127.0.0.1:{c.port}/v1/realtime"

    async def go():
        async with websockets.connect(url) as ws:
            await recv_type(ws, "session.created")
            stopping = asyncio.ensure_future(asyncio.to_thread(c.stop, 20.0))
            for _ in range(100):  # until the server drains
                if get(c.port, "/healthz")[0] == 503:
                    break
                await asyncio.sleep(0.05)
            status, body = get(c.port, "/healthz")
            assert status == 503 and json.loads(body)["draining"] is True
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(url):
                    pass
            assert refused.value.response.status_code == 503 and b"draining" in refused.value.response.body
            assert (await speak_turn(ws))["response"]["status"] == "completed"  # the open session still holds a turn
            assert not stopping.done()
            t0 = time.monotonic()
        await asyncio.wait_for(stopping, 10)  # the client left: the stop ends now, not after 20 s
        assert time.monotonic() - t0 < 5

    try:
        asyncio.run(go())
    finally:
        c.stop()


def test_drain_time_over_closes_the_remaining_sessions():
    c = controller()
    c.__enter__()

    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{c.port}/v1/realtime") as ws:
            await recv_type(ws, "session.created")
            t0 = time.monotonic()
            await asyncio.wait_for(asyncio.to_thread(c.stop, 1.0), 15)
            assert 1.0 <= time.monotonic() - t0 < 8
            await expect_going_away(ws)

    try:
        asyncio.run(go())
    finally:
        c.stop()


def test_drain_option_is_checked():
    from controller.__main__ import main

    assert main(["serve", "--drain-s", "-1"]) == 2
