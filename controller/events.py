"""Server events of the Realtime protocol: ids, the ``error`` event, and the beta names.

Events are built as plain dicts in the GA shape; a session whose client sent ``OpenAI-Beta:
realtime=v1`` has them renamed on the way out (``to_beta``).
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

_counter = itertools.count(1)


def new_id(prefix: str) -> str:
    """Ids in the shape the protocol's clients are used to (``event_...``, ``item_...``, ...)."""
    return f"{prefix}_{secrets.token_hex(6)}{next(_counter):06x}"


def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "event_id": new_id("event"), **fields}


# Error codes of this server (the protocol fixes only a few; clients match on code).
INVALID_JSON = "invalid_json"
UNKNOWN_EVENT = "unknown_event_type"
MISSING_FIELD = "missing_required_parameter"
INVALID_VALUE = "invalid_value"
INVALID_BASE64 = "invalid_base64"
INVALID_AUDIO = "invalid_audio"
FRAME_TOO_LARGE = "frame_too_large"
SESSION_NOT_CONFIGURED = "session_not_configured"
SESSION_AUDIO_LIMIT = "session_audio_limit_exceeded"
UNSUPPORTED_FORMAT = "unsupported_audio_format"
ITEM_NOT_FOUND = "item_not_found"
INVALID_AUDIO_END = "invalid_audio_end_ms"
COMMIT_EMPTY = "input_audio_buffer_commit_empty"
ACTIVE_RESPONSE = "conversation_already_has_active_response"
CANCEL_NOT_ACTIVE = "response_cancel_not_active"
BACKEND_ERROR = "backend_error"
UNSUPPORTED = "unsupported_feature"


def error(code: str, message: str, param: str | None = None, client_event_id: str | None = None,
          type_: str = "invalid_request_error") -> dict[str, Any]:
    return event("error", error={"type": type_, "code": code, "message": message, "param": param,
                                 "event_id": client_event_id})


# -- beta shape ------------------------------------------------------------------------------------
_BETA_NAMES = {
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "conversation.item.added": "conversation.item.created",
}
_BETA_DROPPED = {"conversation.item.done"}  # beta has no such event
_BETA_CONTENT = {"output_audio": "audio", "output_text": "text"}


def _beta_item(item: dict[str, Any]) -> dict[str, Any]:
    content = [{**c, "type": _BETA_CONTENT.get(c.get("type"), c.get("type"))} for c in item.get("content", [])]
    return {**item, "content": content}


def to_beta(ev: dict[str, Any]) -> dict[str, Any] | None:
    """The beta form of a GA event (None: beta has no such event)."""
    t = ev["type"]
    if t in _BETA_DROPPED:
        return None
    out = {**ev, "type": _BETA_NAMES.get(t, t)}
    if "item" in out and isinstance(out["item"], dict):
        out["item"] = _beta_item(out["item"])
    if t in ("response.created", "response.done"):
        resp = dict(out["response"])
        resp["output"] = [_beta_item(i) for i in resp.get("output", [])]
        resp["modalities"] = ["text", "audio"] if "audio" in resp.pop("output_modalities", []) else ["text"]
        out["response"] = resp
    return out
