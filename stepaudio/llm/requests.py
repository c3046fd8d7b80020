"""Turning the inputs of a generation request (plain numpy arrays) into a GenerationRequest.

Kept free of Triton so it is tested directly; the Triton adapter only extracts the arrays.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np

from stepaudio.llm.engine import GenerationRequest, RequestError
from stepaudio.llm.sampling import SamplingParams
from stepaudio.llm.text_tokenizer import TextTokenizer


def _scalar(arrays: dict[str, np.ndarray | None], name: str) -> Any:
    a = arrays.get(name)
    if a is None:
        return None
    a = np.asarray(a).reshape(-1)
    if a.size != 1:
        raise RequestError(f"{name} must hold one value, got {a.size}")
    v = a[0]
    return v.decode("utf-8") if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v


def parse_request(
    arrays: dict[str, np.ndarray | None],
    mode: str,  # "chat" or "tts"
    tokenizer: TextTokenizer | None,
    defaults: SamplingParams,
) -> GenerationRequest:
    prompt = arrays.get("prompt_ids")
    messages = _scalar(arrays, "messages_json")
    if (prompt is None) == (messages is None):
        raise RequestError("give exactly one of prompt_ids and messages_json")
    if messages is not None:
        if mode != "chat" or tokenizer is None:
            raise RequestError("messages_json is only accepted by the chat model")
        try:
            parsed = json.loads(messages)
        except json.JSONDecodeError as exc:
            raise RequestError(f"messages_json is not valid JSON: {exc}") from exc
        if not isinstance(parsed, list) or not parsed:
            raise RequestError("messages_json must be a non-empty JSON list of {role, content} objects")
        try:
            ids = tokenizer.encode_chat(parsed)
        except (ValueError, TypeError) as exc:
            raise RequestError(f"messages_json: {exc}") from exc
    else:
        ids = np.asarray(prompt).reshape(-1).astype(np.int64).tolist()
    over: dict[str, Any] = {}
    for name, cast in (("max_new_tokens", int), ("temperature", float), ("top_k", int), ("top_p", float),
                       ("seed", int)):
        value = _scalar(arrays, name)
        if value is not None:
            over[name] = cast(value)
    params = SamplingParams(**{**defaults.__dict__, **over}).validate()
    request_id = _scalar(arrays, "request_id") or uuid.uuid4().hex
    return GenerationRequest(str(request_id), ids, params)


MAX_TOKENS_PER_RESPONSE = 1024


def min_tokens_per_response(arrays: dict[str, np.ndarray | None]) -> int:
    """The request's ``min_tokens_per_response`` (1 when absent): responses gather that many new ids."""
    value = _scalar(arrays, "min_tokens_per_response")
    if value is None:
        return 1
    if not 1 <= int(value) <= MAX_TOKENS_PER_RESPONSE:
        raise RequestError(f"min_tokens_per_response must be in 1..{MAX_TOKENS_PER_RESPONSE}, got {value}")
    return int(value)
