"""Streaming client of the ``tts`` Triton model (gRPC, tritonclient only)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tritonclient.grpc as grpcclient

from client import tensors as T
from client.grpc_stream import decoupled_responses


def _inp(spec: T.TensorSpec, value: np.ndarray) -> grpcclient.InferInput:
    i = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
    i.set_data_from_numpy(value)
    return i


def tts_inputs(text: str, speaker: str | None = None, clone_audio: np.ndarray | None = None,
               clone_sample_rate_hz: int | None = None, clone_text: str | None = None, stream: bool = True,
               seed: int | None = None, max_new_tokens: int | None = None,
               request_id: str | None = None, first_chunk_tokens: int | None = None) -> list[grpcclient.InferInput]:
    """Inputs of one ``tts`` request; ``request_id`` lets ``client.chat.cancel(client, "tts", id)`` stop it."""
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
    if request_id is not None:
        inputs.append(_inp(T.REQUEST_ID, np.array([request_id.encode()], dtype=np.object_)))
    if first_chunk_tokens is not None:
        inputs.append(_inp(T.FIRST_CHUNK_TOKENS, np.array([first_chunk_tokens], dtype=np.int32)))
    return inputs


def stream_tts(client: grpcclient.InferenceServerClient, inputs: list[grpcclient.InferInput],
               timeout_s: float = 300.0) -> Iterator[tuple[np.ndarray, int, float]]:
    """Yields (audio chunk, sample rate, seconds since the request) until the final response."""
    for result, _final, t_s in decoupled_responses(client, T.TTS, inputs, timeout_s):
        yield result.as_numpy(T.AUDIO_OUT.name), int(result.as_numpy(T.AUDIO_SAMPLE_RATE_HZ.name)[0]), t_s
