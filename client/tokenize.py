"""Clients of the Triton audio tokenizer models (tritonclient only)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from client import tensors as T


@dataclass
class TokenizeReply:
    audio_tokens: np.ndarray  # (N,) int32, N of <audio_N>
    token_string: str
    latency_s: float


def _input(spec: T.TensorSpec, value: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
    inp.set_data_from_numpy(value)
    return inp


def tokenize(
    client: grpcclient.InferenceServerClient,
    audio: np.ndarray,
    sample_rate_hz: int,
    segment_ms: int | None = None,
    normalization: str | None = None,
) -> TokenizeReply:
    """One whole utterance through ``audio_tokenizer``."""
    inputs = [
        _input(T.AUDIO, np.ascontiguousarray(audio, dtype=np.float32)),
        _input(T.SAMPLE_RATE_HZ, np.array([sample_rate_hz], dtype=np.int32)),
    ]
    if segment_ms is not None:
        inputs.append(_input(T.SEGMENT_MS, np.array([segment_ms], dtype=np.int32)))
    if normalization is not None:
        inputs.append(_input(T.NORMALIZATION, np.array([normalization.encode()], dtype=np.object_)))
    t0 = time.perf_counter()
    res = client.infer(T.AUDIO_TOKENIZER, inputs)
    dt = time.perf_counter() - t0
    return TokenizeReply(
        res.as_numpy(T.AUDIO_TOKENS.name), res.as_numpy(T.AUDIO_TOKEN_STRING.name)[0].decode(), dt
    )


_ids = itertools.count(1)


def new_stream_id() -> int:
    """A correlation id unlikely to collide with other processes' streams."""
    return (os.getpid() << 32 | (time.monotonic_ns() & 0xFFFF) << 16 | next(_ids)) & 0x7FFFFFFFFFFFFFFF


class TokenizerStream:
    """One utterance through ``audio_tokenizer_stream``: send chunks, receive completed tokens."""

    def __init__(self, client: grpcclient.InferenceServerClient, sample_rate_hz: int, stream_id: int | None = None):
        self.client = client
        self.sample_rate_hz = sample_rate_hz
        self.stream_id = stream_id or new_stream_id()
        self._started = False
        self.closed = False

    def _send(self, chunk: np.ndarray, end: bool, cancel: bool = False) -> TokenizeReply:
        inputs = [
            _input(T.STREAM_AUDIO, np.ascontiguousarray(chunk, dtype=np.float32).reshape(1, -1)),
            _input(T.STREAM_SAMPLE_RATE_HZ, np.array([[self.sample_rate_hz]], dtype=np.int32)),
        ]
        if cancel:
            inputs.append(_input(T.STREAM_CANCEL, np.array([[True]], dtype=np.bool_)))
        t0 = time.perf_counter()
        res = self.client.infer(
            T.AUDIO_TOKENIZER_STREAM, inputs, sequence_id=self.stream_id,
            sequence_start=not self._started, sequence_end=end,
        )
        dt = time.perf_counter() - t0
        self._started = True
        if end:
            self.closed = True
        return TokenizeReply(
            res.as_numpy(T.AUDIO_TOKENS.name).reshape(-1),
            res.as_numpy(T.AUDIO_TOKEN_STRING.name).reshape(-1)[0].decode(),
            dt,
        )

    def send(self, chunk: np.ndarray) -> TokenizeReply:
        return self._send(chunk, end=False)

    def finish(self, chunk: np.ndarray | None = None) -> TokenizeReply:
        return self._send(np.zeros(0, np.float32) if chunk is None else chunk, end=True)

    def cancel(self) -> None:
        if self._started and not self.closed:
            self._send(np.zeros(0, np.float32), end=True, cancel=True)
        self.closed = True


def chunks(audio: np.ndarray, chunk_samples: int) -> Iterator[np.ndarray]:
    for i in range(0, len(audio), chunk_samples):
        yield audio[i : i + chunk_samples]


def tokenize_streaming(
    client: grpcclient.InferenceServerClient, pieces: Iterable[np.ndarray], sample_rate_hz: int
) -> tuple[list[TokenizeReply], TokenizeReply]:
    stream = TokenizerStream(client, sample_rate_hz)
    replies = [stream.send(p) for p in pieces]
    return replies, stream.finish()
