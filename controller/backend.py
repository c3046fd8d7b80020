"""What the controller needs from the model server, as one small interface.

``TritonBackend`` (``controller.triton_backend``) implements it over tritonclient's gRPC asyncio
client; the unit tests use a scripted fake. Streams are async iterators: leaving one early (break,
``aclose``, task cancellation) cancels the request in the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class BackendError(RuntimeError):
    """The model server refused or failed a request (the message is the server's)."""


@dataclass(frozen=True)
class ChatParams:
    max_new_tokens: int = 256
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class ChatDelta:
    text: str
    token_count: int
    finish_reason: str  # "" until the last delta
    prompt_tokens: int = 0  # the counts: on the last delta
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class TtsParams:
    speaker: str | None = None
    max_new_tokens: int | None = None
    seed: int | None = None
    first_chunk_tokens: int | None = None  # None: the model's first chunk


@dataclass(frozen=True)
class TtsChunk:
    audio: np.ndarray  # (T,) float32 in [-1, 1]
    sample_rate_hz: int
    finish_reason: str


class TokenizerStream(Protocol):
    """One utterance through the streaming audio tokenizer. Chunks are sent in order, in the background;
    ``finish`` flushes and returns every token of the stream."""

    def push(self, audio_16k: np.ndarray) -> None: ...

    async def finish(self) -> list[int]: ...  # N of <audio_N>

    async def cancel(self) -> None: ...


class Backend(Protocol):
    def open_tokenizer_stream(self) -> TokenizerStream: ...

    def chat(self, messages: list[dict[str, Any]], params: ChatParams, request_id: str) -> AsyncIterator[ChatDelta]:
        ...

    def tts(self, text: str, params: TtsParams, request_id: str) -> AsyncIterator[TtsChunk]: ...

    async def asr(self, audio_16k: np.ndarray) -> str: ...

    @property
    def has_asr(self) -> bool: ...

    async def health(self) -> dict[str, Any]: ...

    def open_streams(self) -> int: ...  # requests this process has running in the server now

    async def close(self) -> None: ...
