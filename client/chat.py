"""Streaming client of the ``chat_llm`` / ``tts_lm`` Triton models (gRPC, tritonclient only)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from client import tensors as T
from client.grpc_stream import decoupled_responses


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
    min_tokens_per_response: int | None = None,
) -> list[grpcclient.InferInput]:
    inputs = []
    if messages is not None:
        inputs.append(_inp(T.MESSAGES_JSON, np.array([json.dumps(messages, ensure_ascii=False).encode()],
                                                     dtype=np.object_)))
    if prompt_ids is not None:
        inputs.append(_inp(T.PROMPT_IDS, np.asarray(prompt_ids, dtype=np.int32)))
    for spec, value, dtype in ((T.MAX_NEW_TOKENS, max_new_tokens, np.int32), (T.TEMPERATURE, temperature, np.float32),
                               (T.TOP_K, top_k, np.int32), (T.TOP_P, top_p, np.float32), (T.SEED, seed, np.int64),
                               (T.MIN_TOKENS_PER_RESPONSE, min_tokens_per_response, np.int32)):
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
    for result, _final, t_s in decoupled_responses(client, model, inputs, timeout_s):
        yield Chunk(
            result.as_numpy(T.TOKEN_IDS.name).tolist(), result.as_numpy(T.TEXT_DELTA.name)[0].decode(),
            result.as_numpy(T.FINISH_REASON.name)[0].decode(),
            int(result.as_numpy(T.PROMPT_TOKENS.name)[0]), int(result.as_numpy(T.COMPLETION_TOKENS.name)[0]),
            int(result.as_numpy(T.CACHED_PROMPT_TOKENS.name)[0]), t_s,
        )


def cancel(client: grpcclient.InferenceServerClient, model: str, request_id: str, timeout_s: float = 30.0) -> None:
    """Cancels the running request of ``model`` (chat_llm, tts_lm or tts) started with ``request_id``,
    from any connection: a control request holding only ``cancel_request_id``."""
    inputs = [_inp(T.CANCEL_REQUEST_ID, np.array([request_id.encode()], dtype=np.object_))]
    for _ in decoupled_responses(client, model, inputs, timeout_s):
        pass  # the control request answers with an empty final response only
