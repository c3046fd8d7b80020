"""Streaming token2wav sessions keyed by a stream id: one owner, guaranteed cleanup.

The serving side (the Triton ``token2wav`` model) sees one stream as a sequence of pushes: the
first carries the voice (``StreamVoice``), each carries the speech tokens new since the last, the
last says ``end``. A stream's state (mel and source caches, noise, held-back samples) is freed on
end (after the flush), on cancel, on an error in a push (its caches may be half-updated, so it
cannot go on), and after ``idle_timeout_s`` without a push. ``freed`` counts each reason.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stepaudio.tts.chunking import ChunkPolicy
from stepaudio.tts.token2wav import PromptVoice, Token2Wav, Token2WavStream

N_FLOW_TOKENS = 5120  # flow ids 0..5119: 1024 vq02 + 4096 vq06 codes


class StreamInputError(ValueError):
    """A push that cannot be applied; the message names the problem."""


MAX_FIRST_CHUNK_TOKENS = 1000  # 24 s of speech


@dataclass(frozen=True)
class StreamVoice:
    decoder: str  # "CosyVoice-300M-25Hz" or "CosyVoice-300M-25Hz-Music"
    voice: PromptVoice
    seed: int = 0
    first_chunk_tokens: int | None = None  # this stream's first chunk (None: the policy's)


def check_first_chunk_tokens(value: int | None) -> int | None:
    """A stream's ``first_chunk_tokens`` (None: the policy's), refused when out of range."""
    if value is not None and not 1 <= int(value) <= MAX_FIRST_CHUNK_TOKENS:
        raise StreamInputError(f"first_chunk_tokens must be in 1..{MAX_FIRST_CHUNK_TOKENS}, got {value}")
    return None if value is None else int(value)


@dataclass
class _Entry:
    stream: Token2WavStream
    last_used_s: float
    busy: bool = False  # a push is running: the sweeper must not free it under the pusher


def check_flow_tokens(tokens: np.ndarray) -> np.ndarray:
    t = np.asarray(tokens).reshape(-1)
    if t.size and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= N_FLOW_TOKENS):
        bad = t[(t < 0) | (t >= N_FLOW_TOKENS)] if np.issubdtype(t.dtype, np.integer) else t
        raise StreamInputError(f"flow tokens must be integers in 0..{N_FLOW_TOKENS - 1}, got {bad[:4].tolist()}")
    return t.astype(np.int64)


class Token2WavStreams:
    def __init__(
        self,
        decoders: dict[str, Token2Wav],
        idle_timeout_s: float = 60.0,
        max_streams: int = 64,
        policy: ChunkPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.decoders = decoders
        self.idle_timeout_s = idle_timeout_s
        self.max_streams = max_streams
        self.policy = policy
        self._clock = clock
        self._streams: dict[int | str, _Entry] = {}
        self._lock = threading.Lock()
        self.freed: Counter[str] = Counter()  # reason -> streams freed: end, cancel, error, idle
        self.on_change: Callable[[int], None] | None = None  # called with the open-stream count
        self._stop: threading.Event | None = None

    def __len__(self) -> int:
        return len(self._streams)

    def push(
        self, stream_id: int | str, tokens: np.ndarray, start: StreamVoice | None = None, end: bool = False,
        cancel: bool = False,
    ) -> np.ndarray:
        """Applies one push; returns the audio it completed (22050 Hz float32, possibly empty)."""
        self.expire_idle()
        if cancel:
            self._free(stream_id, "cancel")
            return np.zeros(0, np.float32)
        entry = self._open(stream_id, start)
        try:
            flow_tokens = check_flow_tokens(tokens)
        except StreamInputError:
            if start is not None:  # a stream whose first push failed never really began
                self._free(stream_id, "error")
            raise  # a later bad push leaves the stream as it was: nothing was applied
        try:
            entry.busy = True
            chunks = entry.stream.push(flow_tokens)
            if end:
                chunks += entry.stream.finish()
        except Exception:
            self._free(stream_id, "error")
            raise
        finally:
            entry.busy = False
            entry.last_used_s = self._clock()
        if end:
            self._free(stream_id, "end")
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)

    def _open(self, stream_id: int | str, start: StreamVoice | None) -> _Entry:
        with self._lock:
            entry = self._streams.get(stream_id)
            if start is None:
                if entry is None:
                    raise StreamInputError(
                        f"unknown stream id {stream_id!r}: not started (the first push carries the voice), "
                        f"already ended, or expired after {self.idle_timeout_s:g} s idle")
                entry.last_used_s = self._clock()
                return entry
            policy = self._policy(start)
            t2w = self.decoders.get(start.decoder)
            if t2w is None:
                raise StreamInputError(f"unknown decoder {start.decoder!r} (known: {', '.join(self.decoders)})")
            if entry is None and len(self._streams) >= self.max_streams:
                raise StreamInputError(f"too many open streams ({self.max_streams}); end or cancel some first")
            old = self._streams.pop(stream_id, None)  # a restarted stream replaces the old state
            if old is not None:
                old.stream.close()
            entry = _Entry(t2w.session(start.voice, seed=start.seed, policy=policy), self._clock())
            self._streams[stream_id] = entry
        self._changed()
        return entry

    def _policy(self, start: StreamVoice) -> ChunkPolicy | None:
        first = check_first_chunk_tokens(start.first_chunk_tokens)
        if first is None:
            return self.policy
        return (self.policy or ChunkPolicy()).with_first(first)

    def _free(self, stream_id: int | str, reason: str) -> bool:
        with self._lock:
            entry = self._streams.pop(stream_id, None)
            if entry is not None:
                self.freed[reason] += 1
        if entry is None:
            return False
        entry.stream.close()
        self._changed()
        return True

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(len(self._streams))

    def expire_idle(self) -> int:
        now = self._clock()
        with self._lock:
            stale = [k for k, e in self._streams.items()
                     if not e.busy and now - e.last_used_s > self.idle_timeout_s]
        return sum(self._free(k, "idle") for k in stale)

    def start_sweeper(self, interval_s: float | None = None) -> None:
        """Expires idle streams in the background, so memory is freed even when no push arrives."""
        interval = interval_s if interval_s is not None else max(0.05, min(5.0, self.idle_timeout_s / 4))
        stop = self._stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval):
                self.expire_idle()

        self._sweeper = threading.Thread(target=run, name="token2wav-sweeper", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._sweeper.join(timeout=5)
            self._stop = None
        for key in list(self._streams):
            self._free(key, "shutdown")
