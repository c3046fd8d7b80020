"""Streaming client of the ``chat_llm`` / ``tts_lm`` Triton models (gRPC, tritonclient only)."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from client import tensors as T


@dataclass
class Chunk:
    token_ids: list[int]
    text: str
    finish_reason: str  # "" until the last chunk
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    t_s: float  # seconds since the request was sent


def _inp(spec: T.TensorSpec, value: np.ndarray) -> grpcclient.InferInput:
    i = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
    i.set_data_from_numpy(value)
    return i


def build_inputs(
    messages: list[dict] | None = None,
    prompt_ids: list[int] | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    request_id: str | None = None,
) -> list[grpcclient.InferInput]:
    inputs = []
    if messages is not None:
        inputs.append(_inp(T.MESSAGES_JSON, np.array([json.dumps(messages, ensure_ascii=False).encode()],
                                                     dtype=np.object_)))
    if prompt_ids is not None:
        inputs.append(_inp(T.PROMPT_IDS, np.asarray(prompt_ids, dtype=np.int32)))
    for spec, value, dtype in ((T.MAX_NEW_TOKENS, max_new_tokens, np.int32), (T.TEMPERATURE, temperature, np.float32),
                               (T.TOP_K, top_k, np.int32), (T.TOP_P, top_p, np.float32), (T.SEED, seed, np.int64)):
        if value is not None:
            inputs.append(_inp(spec, np.array([value], dtype=dtype)))
    if request_id is not None:
        inputs.append(_inp(T.REQUEST_ID, np.array([request_id.encode()], dtype=np.object_)))
    return inputs


def stream_generate(
    client: grpcclient.InferenceServerClient, model: str, inputs: list[grpcclient.InferInput],
    timeout_s: float = 300.0,
) -> Iterator[Chunk]:
    """Yields the chunks of one generation; raises the server's error if the request failed."""
    q: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    t0 = time.perf_counter()
    done = False  # the server closed the stream: nothing left to cancel
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        while True:
            result, error = q.get(timeout=timeout_s)
            if error is not None:
                done = True
                raise error
            final = result.get_response().parameters.get("triton_final_response")
            is_final = bool(final and final.bool_param)
            done = is_final
            if result.as_numpy(T.TOKEN_IDS.name) is None:  # the empty final response
                if is_final:
                    return
                continue
            reason = result.as_numpy(T.FINISH_REASON.name)[0].decode()
            yield Chunk(
                result.as_numpy(T.TOKEN_IDS.name).tolist(), result.as_numpy(T.TEXT_DELTA.name)[0].decode(), reason,
                int(result.as_numpy(T.PROMPT_TOKENS.name)[0]), int(result.as_numpy(T.COMPLETION_TOKENS.name)[0]),
                int(result.as_numpy(T.CACHED_PROMPT_TOKENS.name)[0]), time.perf_counter() - t0,
            )
            if is_final:
                return
    finally:
        # Cancel only a request still running (the caller stopped early); cancelling one the server
        # already finished has been seen to leave tritonserver 2.51 unable to unload the model.
        client.stop_stream(cancel_requests=not done)
