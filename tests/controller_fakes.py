"""Scripted stand-ins for the controller's backend and VAD, and a harness that runs one Session.

The fake VAD calls a window speech when its mean magnitude is above 0.01, so a test's timeline is
just audio: ``speech(ms)`` (a tone) and ``silence(ms)`` (zeros) at 24 kHz, on the session's audio clock.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field

import numpy as np

from controller.backend import BackendError, ChatDelta, TtsChunk
from controller.config import ControllerConfig
from controller.metrics import Metrics
from controller.session import ClientFrame, Session
from controller.vad import WINDOW_SAMPLES

WIRE_RATE_HZ = 24000


def speech(ms: int, rate_hz: int = WIRE_RATE_HZ) -> np.ndarray:
    t = np.arange(rate_hz * ms // 1000) / rate_hz
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(ms: int, rate_hz: int = WIRE_RATE_HZ) -> np.ndarray:
    return np.zeros(rate_hz * ms // 1000, np.float32)


def pcm16_b64(x: np.ndarray) -> str:
    return base64.b64encode((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()).decode()


class FakeVadStream:
    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def feed(self, audio_16k: np.ndarray) -> list[float]:
        buf = np.concatenate([self._pending, audio_16k])
        n = len(buf) // WINDOW_SAMPLES
        probs = [1.0 if np.abs(buf[k * WINDOW_SAMPLES:(k + 1) * WINDOW_SAMPLES]).mean() > 0.01 else 0.0
                 for k in range(n)]
        self._pending = buf[n * WINDOW_SAMPLES:]
        return probs

    async def feed_async(self, audio_16k: np.ndarray) -> list[float]:
        return self.feed(audio_16k)


class FakeVad:
    def new_stream(self) -> FakeVadStream:
        return FakeVadStream()


@dataclass
class Call:
    kind: str  # chat | tts | asr
    payload: object
    request_id: str = ""
    finished: bool = False  # the stream ran to its final response
    cancelled: bool = False  # left before its final response (cancelled in the server)


class FakeTokenizerStream:
    def __init__(self, backend: FakeBackend):
        self.backend = backend
        self.samples = 0
        self.closed = False
        backend.open += 1

    def push(self, audio_16k: np.ndarray) -> None:
        assert not self.closed
        self.samples += len(audio_16k)

    async def finish(self) -> list[int]:
        await asyncio.sleep(0)
        self.closed = True
        self.backend.open -= 1
        if self.backend.tokenizer_error:
            raise BackendError(self.backend.tokenizer_error)
        return [self.samples // 1600 % 1024] * max(1, self.samples // 1600)  # one token per 100 ms

    async def cancel(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend.open -= 1
            self.backend.tokenizer_cancels += 1


@dataclass
class FakeBackend:
    reply_text: tuple[str, ...] = ("Hello", " there.", " How are", " you today?")
    tts_chunks: int = 2
    tts_chunk_s: float = 0.1
    chat_gate: asyncio.Event | None = None  # set: chat streams may produce their deltas
    tts_gate: asyncio.Event | None = None
    tts_free_calls: int = 0  # this many TTS calls pass without waiting for tts_gate
    tokenizer_error: str | None = None
    chat_error: str | None = None
    has_asr: bool = True
    calls: list[Call] = field(default_factory=list)
    open: int = 0
    tokenizer_cancels: int = 0

    def open_tokenizer_stream(self) -> FakeTokenizerStream:
        return FakeTokenizerStream(self)

    def chats(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "chat"]

    async def _stream(self, call: Call, items, gate):
        self.calls.append(call)
        self.open += 1
        try:
            if gate is not None:
                await gate.wait()
            for it in items:
                await asyncio.sleep(0)
                yield it
            call.finished = True
        finally:
            self.open -= 1
            call.cancelled = not call.finished

    def chat(self, messages, params, request_id):
        call = Call("chat", {"messages": messages, "params": params}, request_id)
        if self.chat_error:
            return self._failing(call, self.chat_error)
        n = len(self.reply_text)
        deltas = [ChatDelta(t, 1, "stop" if i == n - 1 else "", 10, i + 1, 0) for i, t in enumerate(self.reply_text)]
        return self._stream(call, deltas, self.chat_gate)

    async def _failing(self, call: Call, message: str):
        self.calls.append(call)
        call.finished = True
        raise BackendError(message)
        yield  # an async generator

    def tts(self, text, params, request_id):
        call = Call("tts", {"text": text, "params": params}, request_id)
        n = int(22050 * self.tts_chunk_s)
        chunks = [TtsChunk(np.full(n, 0.1, np.float32), 22050, "") for _ in range(self.tts_chunks)]
        chunks.append(TtsChunk(np.zeros(0, np.float32), 22050, "stop"))
        n_before = sum(1 for c in self.calls if c.kind == "tts")
        return self._stream(call, chunks, None if n_before < self.tts_free_calls else self.tts_gate)

    async def asr(self, audio_16k):
        self.calls.append(Call("asr", len(audio_16k), finished=True))
        await asyncio.sleep(0)
        return f"transcript of {len(audio_16k) * 1000 // 16000} ms"

    async def health(self):
        return {"ok": True}

    def open_streams(self) -> int:
        return self.open

    async def close(self) -> None:
        pass


class Harness:
    """One Session over the fakes; ``events`` collects what it sends."""

    def __init__(self, backend: FakeBackend | None = None, beta: bool = False, **cfg):
        cfg.setdefault("pause_ms", 200)
        self.backend = backend or FakeBackend()
        self.metrics = Metrics()
        self.events: list[dict] = []
        self._new_event = asyncio.Event()

        async def send(ev):
            self.events.append(ev)
            self._new_event.set()

        self.session = Session(ControllerConfig(**cfg), self.backend, FakeVad(), self.metrics, send, beta=beta)
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.session.run())
        await self.settle()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        self.session.queue.put_nowait(None)
        await asyncio.wait_for(self.task, 10)

    def _idle(self) -> bool:
        if self.task.done():
            self.task.result()  # the session died: raise its error
            raise RuntimeError("the session stopped")
        return self.session.queue.empty() and not self.session.busy

    async def settle(self, rounds: int = 50) -> None:
        """Lets the session and its tasks run until nothing is left to do: the fakes never wait on time,
        but the session hands long appends to a worker thread, which does."""
        quiet = 0
        while quiet < 2:  # idle twice in a row: the tasks it spawned have had their turn too
            for _ in range(rounds):
                await asyncio.sleep(0)
            if self._idle():
                quiet += 1
            else:
                quiet = 0
                await asyncio.sleep(0.001)

    async def send(self, ev: dict | str) -> None:
        self.session.queue.put_nowait(ClientFrame(ev if isinstance(ev, str) else json.dumps(ev)))
        await self.settle()

    async def audio(self, x: np.ndarray, chunk_ms: int = 100) -> None:
        """Appends ``x`` (24 kHz) in chunks, letting the session work after each (as at real-time pace)."""
        step = WIRE_RATE_HZ * chunk_ms // 1000
        for i in range(0, len(x), step):
            await self.send({"type": "input_audio_buffer.append", "audio": pcm16_b64(x[i:i + step])})

    async def wait_for(self, type_: str, count: int = 1, timeout_s: float = 5.0) -> dict:
        async def poll():
            while len(self.of(type_)) < count:
                self._new_event.clear()
                await self._new_event.wait()
        await asyncio.wait_for(poll(), timeout_s)
        return self.of(type_)[count - 1]

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def spec(self, outcome: str) -> float:
        return self.metrics.speculation.labels(outcome)._value.get()
