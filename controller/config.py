"""The controller's own settings (the server's, not a session's): limits, auth, turns, generation."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.clauses import ClausePolicy

# The reference app's default system prompt ("adapt to the user's language, answer briefly and colloquially").
DEFAULT_INSTRUCTIONS = "适配用户的语言，用简短口语化的文字回答"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ControllerConfig:
    triton_url: str = "127.0.0.1:8001"
    host: str = "127.0.0.1"
    port: int = 8765
    api_keys: tuple[str, ...] = ()
    # limits
    max_sessions: int = 64
    max_frame_bytes: int = 16 * 1024 * 1024  # larger frames get an error event and are dropped
    max_session_audio_s: float = 4 * 3600.0  # input audio one session may send in all
    require_session_update: bool = False  # reject audio until the client has sent session.update
    # permessage-deflate on the WebSocket: base64 audio shrinks by about a quarter, for zlib's CPU on every
    # frame both ways (a tenth of the controller's CPU when on); off unless asked for
    ws_compress: bool = False
    # turns
    vad_model: str | None = None  # silero_vad.onnx; None: $SILERO_VAD_ONNX or the environment's copy
    # Sessions' VAD windows that arrive within this long are classified in one batch (the same probabilities,
    # a third of the CPU per window in batches of 8); the turn events of an append come up to this much later.
    vad_batch_ms: int = 30
    pause_ms: int = 200  # silence that makes UserPaused (a speculative reply starts)
    min_speech_ms: int = 64  # speech needed before it counts as started (filters clicks)
    speculation: bool = True
    speculate_tts: bool = True  # a speculation also synthesises its first clause
    # generation
    default_instructions: str = DEFAULT_INSTRUCTIONS
    max_reply_tokens: int = 256  # chat tokens per reply unless the session asks for fewer
    temperature: float | None = None  # None: the chat model's default
    top_p: float | None = None
    seed: int | None = None
    tts_max_new_tokens: int | None = 1024  # per clause; None: the tts model's default
    speakers: tuple[str, ...] = ("Tingting",)  # session voices passed to TTS as speakers; others: its default
    max_context_tokens: int = 4096  # system prompt + history + reply must fit the chat model's context
    clause_policy: ClausePolicy = field(default_factory=ClausePolicy)
    audio_delta_ms: int = 100  # the longest output audio delta
    response_timeout_s: float = 30.0  # a Triton stream silent this long fails its reply (and is cancelled)

    @property
    def open_access(self) -> bool:
        return not self.api_keys

    def check(self) -> None:
        if self.open_access and self.host not in LOCAL_HOSTS:
            raise ValueError(f"refusing to serve {self.host} without API keys: give --api-key (or "
                             "CONTROLLER_API_KEYS), or bind to 127.0.0.1")
        if self.pause_ms < 32:
            raise ValueError("pause_ms must be at least one VAD window (32 ms)")
        if self.vad_batch_ms < 0:
            raise ValueError("vad_batch_ms must be >= 0")
        if self.max_sessions < 1 or self.max_frame_bytes < 1024:
            raise ValueError("max_sessions must be >= 1 and max_frame_bytes >= 1024")
        first = self.clause_policy.later_first_chunk_tokens
        if first is not None and not 1 <= first <= 1000:  # the tts model's range for first_chunk_tokens
            raise ValueError(f"tts later-clause first chunk must be 1..1000 speech tokens (0: off), got {first}")
        ahead = self.clause_policy.later_min_ahead_s
        if not 0 <= ahead < float("inf"):
            raise ValueError(f"tts later-clause min ahead must be a finite number of seconds >= 0, got {ahead}")
