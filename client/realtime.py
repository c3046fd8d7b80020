"""A Realtime conversation over the unmodified ``openai`` SDK: stream audio in (optionally at real-time
pace), record every server event with its arrival time, collect the reply audio and transcripts.

Used by ``python -m client talk`` and by ``make demo``. The SDK is the client: nothing here speaks the
wire format itself, so what works here works for any application built on the SDK.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RATE_HZ = 24000  # audio/pcm is always 24 kHz PCM16 mono


def base_url(url: str) -> str:
    """``ws://HOST:PORT/v1/realtime`` (or ``.../v1``) -> the SDK's ``websocket_base_url`` (``.../v1``)."""
    url = url.rstrip("/")
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
    return url[: -len("/realtime")] if url.endswith("/realtime") else url


def to_pcm16_b64(x: np.ndarray) -> str:
    return base64.b64encode((np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()).decode()


def from_pcm16_b64(data: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype="<i2").astype(np.float32) / 32768.0


def resample(audio: np.ndarray, sample_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    """Mono float audio from one rate to another (the controller's own streaming resampler, numpy only)."""
    if sample_rate_hz == to_rate_hz:
        return np.asarray(audio, dtype=np.float32)
    from controller.resample import StreamingResampler

    r = StreamingResampler(sample_rate_hz, to_rate_hz)
    return np.concatenate([r.process(np.asarray(audio, dtype=np.float32)), r.flush()]).astype(np.float32)


def to_24k(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Mono float audio at any rate -> 24 kHz, the Realtime protocol's rate."""
    return resample(audio, sample_rate_hz, RATE_HZ)


@dataclass
class Received:
    t_s: float  # seconds since the conversation began
    type: str
    event: Any  # the SDK's parsed event model


@dataclass
class Conversation:
    """One connection: ``await conv.say(audio)``, ``await conv.until("response.done")``, ``conv.events``."""

    conn: Any
    t0: float = field(default_factory=time.perf_counter)
    events: list[Received] = field(default_factory=list)
    on_event: Callable[[Received], None] | None = None
    audio_sent_s: float = 0.0  # input audio sent so far
    speech_end_t_s: dict[int, float] = field(default_factory=dict)  # mark -> wall time it was sent

    def __post_init__(self) -> None:
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def _read(self) -> None:
        async for event in self.conn:
            r = Received(self.now(), event.type, event)
            self.events.append(r)
            if self.on_event is not None:
                self.on_event(r)
            self._changed.set()

    async def update_session(self, **session: Any) -> None:
        n = len(self.of("session.updated"))
        await self.conn.session.update(session={"type": "realtime", **session})
        await self.until("session.updated", count=n + 1)

    async def say(self, audio_24k: np.ndarray, realtime: bool = True, chunk_ms: int = 40,
                  stop: Callable[[], bool] | None = None) -> float:
        """Appends audio in ``chunk_ms`` pieces, paced in real time if asked; returns the wall time (s since
        the start) when the last piece left. ``stop()`` true ends it early (e.g. the reply began)."""
        step = RATE_HZ * chunk_ms // 1000
        start_wall, start_audio = self.now(), self.audio_sent_s
        for i in range(0, len(audio_24k), step):
            if stop is not None and stop():
                break
            piece = audio_24k[i:i + step]
            await self.conn.input_audio_buffer.append(audio=to_pcm16_b64(piece))
            self.audio_sent_s += len(piece) / RATE_HZ
            if realtime:  # pace against the audio clock, not per piece, so delays do not accumulate
                ahead = (self.audio_sent_s - start_audio) - (self.now() - start_wall)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            else:
                await asyncio.sleep(0)
        return self.now()

    async def silence(self, ms: int, realtime: bool = True, stop: Callable[[], bool] | None = None) -> float:
        return await self.say(np.zeros(RATE_HZ * ms // 1000, np.float32), realtime, stop=stop)

    def of(self, type_: str, since: int = 0) -> list[Received]:
        return [e for e in self.events[since:] if e.type == type_]

    async def until(self, type_: str, count: int = 1, since: int = 0, timeout_s: float = 120.0) -> Received:
        """The ``count``-th event of ``type_`` after index ``since`` (waits for it)."""
        async def wait() -> Received:
            while True:
                found = self.of(type_, since)
                if len(found) >= count:
                    return found[count - 1]
                if self._reader.done():
                    self._reader.result()  # raises the reader's error, if any
                    raise ConnectionError(f"connection closed before {type_}")
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(wait(), timeout_s)

    def reply_audio(self, response_id: str) -> np.ndarray:
        parts = [from_pcm16_b64(e.event.delta) for e in self.of("response.output_audio.delta")
                 if e.event.response_id == response_id]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def transcript(self, response_id: str) -> str:
        return "".join(e.event.delta for e in self.of("response.output_audio_transcript.delta")
                       if e.event.response_id == response_id)

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def describe(r: Received) -> str:
    """One readable line for an event, or "" for the ones a timeline skips (deltas)."""
    e = r.event
    t = r.type
    if t.endswith(".delta") or t in ("conversation.item.added", "conversation.item.done",
                                     "response.output_item.added", "response.output_item.done",
                                     "response.content_part.added", "response.content_part.done"):
        return ""
    if t == "error":
        return f"error {e.error.code}: {e.error.message}"
    if t == "response.done":
        details = e.response.status_details
        why = f" ({details.reason})" if details is not None and getattr(details, "reason", None) else ""
        return f"response.done {e.response.status}{why}"
    if t == "conversation.item.input_audio_transcription.completed":
        return f"user said (asr): {e.transcript!r}"
    if t == "response.output_audio_transcript.done":
        return f"assistant said: {e.transcript!r}"
    if t == "input_audio_buffer.speech_started":
        return f"speech_started (audio {e.audio_start_ms} ms)"
    if t == "input_audio_buffer.speech_stopped":
        return f"speech_stopped (audio {e.audio_end_ms} ms)"
    return t
