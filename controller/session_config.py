"""A session's effective configuration and ``session.update`` parsing (GA shape, and beta's).

Only the fields present in an update change; ``turn_detection: null`` selects manual turns. Invalid
values raise ``ConfigError`` naming the parameter, and leave the configuration as it was.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

# GA format type -> (sample rate, beta name)
FORMATS = {"audio/pcm": (24000, "pcm16"), "audio/pcmu": (8000, "g711_ulaw"), "audio/pcma": (8000, "g711_alaw")}
BETA_FORMATS = {beta: ga for ga, (_rate, beta) in FORMATS.items()}

# semantic_vad has no turn model here: its eagerness picks the end-of-turn silence instead
EAGERNESS_SILENCE_MS = {"low": 1200, "medium": 700, "auto": 700, "high": 400}


class ConfigError(ValueError):
    def __init__(self, param: str, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class TurnDetection:
    type: str = "server_vad"  # or "semantic_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None
    eagerness: str = "auto"

    def end_silence_ms(self) -> int:
        if self.type == "semantic_vad":
            return EAGERNESS_SILENCE_MS[self.eagerness]
        return self.silence_duration_ms

    def to_dict(self) -> dict[str, Any]:
        if self.type == "semantic_vad":
            return {"type": self.type, "eagerness": self.eagerness, "create_response": self.create_response,
                    "interrupt_response": self.interrupt_response}
        return {"type": self.type, "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, "create_response": self.create_response,
                "interrupt_response": self.interrupt_response, "idle_timeout_ms": self.idle_timeout_ms}


@dataclass
class SessionConfig:
    id: str
    model: str
    instructions: str = ""
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: str = "audio/pcm"
    output_format: str = "audio/pcm"
    voice: str = "alloy"
    speed: float = 1.0
    transcription: dict | None = None
    noise_reduction: dict | None = None
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    max_output_tokens: int | str = "inf"
    temperature: float | None = None  # beta only
    tools: list = field(default_factory=list)
    tool_choice: str | dict = "auto"
    tracing: Any = None
    truncation: Any = "auto"
    updated: bool = False  # a session.update has been applied

    # -- wire shapes -------------------------------------------------------------------------------
    def _format(self, name: str) -> dict:
        return {"type": name, "rate": FORMATS[name][0]} if name == "audio/pcm" else {"type": name}

    def to_ga(self) -> dict[str, Any]:
        return {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
            "output_modalities": list(self.output_modalities), "instructions": self.instructions,
            "audio": {
                "input": {"format": self._format(self.input_format), "transcription": self.transcription,
                          "noise_reduction": self.noise_reduction,
                          "turn_detection": self.turn_detection.to_dict() if self.turn_detection else None},
                "output": {"format": self._format(self.output_format), "voice": self.voice, "speed": self.speed},
            },
            "tools": self.tools, "tool_choice": self.tool_choice, "max_output_tokens": self.max_output_tokens,
            "tracing": self.tracing, "truncation": self.truncation, "prompt": None, "include": None,
            "expires_at": 0,
        }

    def to_beta(self) -> dict[str, Any]:
        modalities = ["text", "audio"] if "audio" in self.output_modalities else ["text"]
        return {
            "object": "realtime.session", "id": self.id, "model": self.model, "modalities": modalities,
            "instructions": self.instructions, "voice": self.voice,
            "input_audio_format": FORMATS[self.input_format][1], "output_audio_format": FORMATS[self.output_format][1],
            "input_audio_transcription": self.transcription,
            "turn_detection": self.turn_detection.to_dict() if self.turn_detection else None,
            "tools": self.tools, "tool_choice": self.tool_choice,
            "temperature": 0.8 if self.temperature is None else self.temperature,
            "max_response_output_tokens": self.max_output_tokens,
        }

    # -- updates -----------------------------------------------------------------------------------
    def apply_update(self, update: Any, beta: bool = False) -> SessionConfig:
        """A new config with ``update`` (a session.update's ``session``) applied."""
        if not isinstance(update, dict):
            raise ConfigError("session", "session must be an object")
        new = copy.deepcopy(self)
        if not beta:
            kind = update.get("type")
            if kind is not None and kind != "realtime":
                raise ConfigError("session.type", f"session.type {kind!r} is not supported (only 'realtime')")
        if "instructions" in update:
            new.instructions = _string(update["instructions"], "session.instructions")
        if "model" in update:
            new.model = _string(update["model"], "session.model")
        if "max_output_tokens" in update or "max_response_output_tokens" in update:
            key = "max_output_tokens" if "max_output_tokens" in update else "max_response_output_tokens"
            new.max_output_tokens = parse_max_tokens(update[key], f"session.{key}")
        for key in ("tools", "tool_choice", "tracing", "truncation"):
            if key in update:
                setattr(new, key, update[key])
        if "output_modalities" in update or "modalities" in update:
            key = "output_modalities" if "output_modalities" in update else "modalities"
            new.output_modalities = parse_modalities(update[key], f"session.{key}")
        if beta or any(k in update for k in ("input_audio_format", "output_audio_format", "voice", "turn_detection")):
            _apply_beta_audio(new, update)
        audio = update.get("audio")
        if audio is not None:
            if not isinstance(audio, dict):
                raise ConfigError("session.audio", "session.audio must be an object")
            _apply_audio(new, audio)
        new.updated = True
        return new


def _string(v: Any, param: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(param, f"{param} must be a string")
    return v


def parse_max_tokens(v: Any, param: str) -> int | str:
    if v == "inf":
        return "inf"
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
        raise ConfigError(param, f"{param} must be an integer in [1, 4096] or 'inf'")
    return v


def parse_modalities(v: Any, param: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or any(m not in ("text", "audio") for m in v):
        raise ConfigError(param, f"{param} must be ['audio'] or ['text']")
    return ("audio",) if "audio" in v else ("text",)


def parse_format(v: Any, param: str) -> str:
    if isinstance(v, str):  # beta names, and tolerate a bare GA type string
        name = BETA_FORMATS.get(v, v)
    elif isinstance(v, dict):
        name = v.get("type")
        rate = v.get("rate")
        if name == "audio/pcm" and rate not in (None, 24000):
            raise ConfigError(param, f"{param}: audio/pcm is 24000 Hz only, got rate {rate!r}",
                              code="unsupported_audio_format")
    else:
        name = None
    if name not in FORMATS:
        raise ConfigError(param, f"{param}: unsupported audio format {v!r} (audio/pcm, audio/pcmu, audio/pcma)",
                          code="unsupported_audio_format")
    return name


def parse_turn_detection(v: Any, current: TurnDetection | None, param: str) -> TurnDetection | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ConfigError(param, f"{param} must be an object or null")
    kind = v.get("type", current.type if current else "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise ConfigError(f"{param}.type", f"{param}.type must be server_vad or semantic_vad, got {kind!r}")
    base = current if current is not None and current.type == kind else TurnDetection(type=kind)
    changes: dict[str, Any] = {"type": kind}
    for key, typ, lo, hi in (("threshold", float, 0.0, 1.0), ("prefix_padding_ms", int, 0, 5000),
                             ("silence_duration_ms", int, 0, 10000), ("idle_timeout_ms", int, 5000, 30000)):
        if key in v and v[key] is not None:
            x = v[key]
            if isinstance(x, bool) or not isinstance(x, (int, float)) or (typ is int and x != int(x)) \
                    or not lo <= x <= hi:
                raise ConfigError(f"{param}.{key}", f"{param}.{key} must be a number in [{lo}, {hi}]")
            changes[key] = typ(x)
        elif key == "idle_timeout_ms" and key in v:
            changes[key] = None
    for key in ("create_response", "interrupt_response"):
        if key in v and v[key] is not None:
            if not isinstance(v[key], bool):
                raise ConfigError(f"{param}.{key}", f"{param}.{key} must be a boolean")
            changes[key] = v[key]
    if "eagerness" in v and v["eagerness"] is not None:
        if v["eagerness"] not in EAGERNESS_SILENCE_MS:
            raise ConfigError(f"{param}.eagerness", f"{param}.eagerness must be low, medium, high or auto")
        changes["eagerness"] = v["eagerness"]
    return replace(base, **changes)


def _apply_audio(new: SessionConfig, audio: dict) -> None:
    inp, out = audio.get("input"), audio.get("output")
    if inp is not None:
        if not isinstance(inp, dict):
            raise ConfigError("session.audio.input", "session.audio.input must be an object")
        if "format" in inp:
            new.input_format = parse_format(inp["format"], "session.audio.input.format")
        if "turn_detection" in inp:
            new.turn_detection = parse_turn_detection(inp["turn_detection"], new.turn_detection,
                                                      "session.audio.input.turn_detection")
        if "transcription" in inp:
            new.transcription = inp["transcription"]
        if "noise_reduction" in inp:
            new.noise_reduction = inp["noise_reduction"]
    if out is not None:
        if not isinstance(out, dict):
            raise ConfigError("session.audio.output", "session.audio.output must be an object")
        if "format" in out:
            new.output_format = parse_format(out["format"], "session.audio.output.format")
        if "voice" in out:
            new.voice = _voice(out["voice"], "session.audio.output.voice")
        if "speed" in out:
            s = out["speed"]
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.25 <= s <= 1.5:
                raise ConfigError("session.audio.output.speed", "session.audio.output.speed must be in [0.25, 1.5]")
            new.speed = float(s)


def _apply_beta_audio(new: SessionConfig, update: dict) -> None:
    if "input_audio_format" in update:
        new.input_format = parse_format(update["input_audio_format"], "session.input_audio_format")
    if "output_audio_format" in update:
        new.output_format = parse_format(update["output_audio_format"], "session.output_audio_format")
    if "voice" in update:
        new.voice = _voice(update["voice"], "session.voice")
    if "turn_detection" in update:
        new.turn_detection = parse_turn_detection(update["turn_detection"], new.turn_detection,
                                                  "session.turn_detection")
    if "input_audio_transcription" in update:
        new.transcription = update["input_audio_transcription"]
    if "temperature" in update:
        t = update["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 2.0:
            raise ConfigError("session.temperature", "session.temperature must be in [0, 2]")
        new.temperature = float(t)


def _voice(v: Any, param: str) -> str:
    if isinstance(v, dict) and isinstance(v.get("id"), str):
        return v["id"]
    return _string(v, param)
