"""Streaming client of the ``tts`` Triton model (gRPC, tritonclient only)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import numpy as np
import tritonclient.grpc as grpcclient

from client import tensors as T


def _inp(spec: T.TensorSpec, value: np.ndarray) -> grpcclient.InferInput:
    i = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
    i.set_data_from_numpy(value)
    return i


def tts_inputs(text: str, speaker: str | None = None, clone_audio: np.ndarray | None = None,
               clone_sample_rate_hz: int | None = None, clone_text: str | None = None, stream: bool = True,
               seed: int | None = None, max_new_tokens: int | None = None) -> list[grpcclient.InferInput]:
    inputs = [_inp(T.TTS_TEXT, np.array([text.encode()], dtype=np.object_)),
              _inp(T.TTS_STREAM, np.array([stream], dtype=np.bool_))]
    if speaker is not None:
        inputs.append(_inp(T.TTS_SPEAKER, np.array([speaker.encode()], dtype=np.object_)))
    if clone_audio is not None:
        inputs += [_inp(T.CLONE_AUDIO, np.asarray(clone_audio, dtype=np.float32)),
                   _inp(T.CLONE_SAMPLE_RATE_HZ, np.array([clone_sample_rate_hz], dtype=np.int32)),
                   _inp(T.CLONE_TEXT, np.array([(clone_text or "").encode()], dtype=np.object_))]
    if seed is not None:
        inputs.append(_inp(T.SEED, np.array([seed], dtype=np.int64)))
    if max_new_tokens is not None:
        inputs.append(_inp(T.MAX_NEW_TOKENS, np.array([max_new_tokens], dtype=np.int32)))
    return inputs


def stream_tts(client: grpcclient.InferenceServerClient, inputs: list[grpcclient.InferInput],
               timeout_s: float = 300.0) -> Iterator[tuple[np.ndarray, int, float]]:
    """Yields (audio chunk, sample rate, seconds since the request) until the final response."""
    q: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    t0 = time.perf_counter()
    done = False
    try:
        client.async_stream_infer(T.TTS, inputs, enable_empty_final_response=True)
        while True:
            result, error = q.get(timeout=timeout_s)
            if error is not None:
                done = True
                raise error
            final = result.get_response().parameters.get("triton_final_response")
            done = bool(final and final.bool_param)
            audio = result.as_numpy(T.AUDIO_OUT.name)
            if audio is not None:
                yield audio, int(result.as_numpy(T.AUDIO_SAMPLE_RATE_HZ.name)[0]), time.perf_counter() - t0
            if done:
                return
    finally:
        client.stop_stream(cancel_requests=not done)
