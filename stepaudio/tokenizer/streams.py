"""Per-stream tokenizer sessions keyed by a correlation id: one owner, guaranteed cleanup.

A stream is freed on end (flush), on cancel, and after ``idle_timeout_s`` without a chunk.
Errors in a chunk are reported and leave the stream as it was, so no audio already accepted
is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stepaudio.audio.preprocess import AudioInputError
from stepaudio.tokenizer.session import Normalization, TokenizerSession


class StreamError(AudioInputError):
    pass


@dataclass
class _Entry:
    session: TokenizerSession
    sample_rate_hz: int
    last_used_s: float


class StreamRegistry:
    def __init__(
        self,
        new_session: Callable[[int], TokenizerSession],
        idle_timeout_s: float = 60.0,
        max_streams: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._new_session = new_session
        self.idle_timeout_s = idle_timeout_s
        self.max_streams = max_streams
        self._clock = clock
        self._streams: dict[int | str, _Entry] = {}
        self._lock = threading.Lock()
        self.expired_total = 0
        self.on_change: Callable[[int], None] | None = None  # called with the open-stream count

    def __len__(self) -> int:
        return len(self._streams)

    def process(
        self, stream_id: int | str, audio: np.ndarray, sample_rate_hz: int, start: bool, end: bool,
        cancel: bool = False,
    ) -> np.ndarray:
        """Apply one chunk; returns the N values completed by it (all remaining ones at end)."""
        self.expire_idle()
        started = False
        with self._lock:
            entry = self._streams.get(stream_id)
            if start:
                if entry is not None:  # a restarted sequence replaces the old state
                    self._streams.pop(stream_id)
                elif len(self._streams) >= self.max_streams:
                    raise StreamError(f"too many open streams ({self.max_streams}); end or cancel some first")
                entry = _Entry(self._new_session(sample_rate_hz), int(sample_rate_hz), self._clock())
                self._streams[stream_id] = entry
                started = True
            elif entry is None:
                raise StreamError(
                    f"unknown stream id {stream_id!r}: not started, already ended, or expired after "
                    f"{self.idle_timeout_s:g} s idle"
                )
            entry.last_used_s = self._clock()
        if started:
            self._changed()
        if cancel:
            self.drop(stream_id)
            return np.zeros(0, dtype=np.int64)
        if int(sample_rate_hz) != entry.sample_rate_hz:
            raise StreamError(
                f"sample_rate_hz changed within stream {stream_id!r}: {sample_rate_hz} != {entry.sample_rate_hz}"
            )
        try:
            out = entry.session.feed(audio)
            if end:
                out = np.concatenate([out, entry.session.flush()])
        except Exception:
            if start:  # a stream whose first chunk failed never really began
                self.drop(stream_id)
            raise
        if end:
            self.drop(stream_id)
        return out

    def drop(self, stream_id: int | str) -> bool:
        with self._lock:
            dropped = self._streams.pop(stream_id, None) is not None
        self._changed()
        return dropped

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(len(self._streams))

    def expire_idle(self) -> int:
        now = self._clock()
        with self._lock:
            stale = [k for k, e in self._streams.items() if now - e.last_used_s > self.idle_timeout_s]
            for k in stale:
                del self._streams[k]
        self.expired_total += len(stale)
        if stale:
            self._changed()
        return len(stale)

    def clear(self) -> None:
        self.stop_sweeper()
        with self._lock:
            self._streams.clear()

    def start_sweeper(self, interval_s: float | None = None) -> None:
        """Expire idle streams in the background, so memory is freed even when no chunk arrives."""
        interval = interval_s if interval_s is not None else max(0.05, min(5.0, self.idle_timeout_s / 4))
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.wait(interval):
                self.expire_idle()

        self._sweeper = threading.Thread(target=run, name="stream-sweeper", daemon=True)
        self._sweeper.start()

    def stop_sweeper(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._sweeper.join(timeout=5)
            self._stop = None


def session_factory(tokenizer, segment_ms: int, normalization: Normalization) -> Callable[[int], TokenizerSession]:
    return lambda sample_rate_hz: tokenizer.session(sample_rate_hz, segment_ms, normalization)
