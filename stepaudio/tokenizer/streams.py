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
class Chunk:
    stream_id: int | str
    audio: np.ndarray
    sample_rate_hz: int
    start: bool
    end: bool
    cancel: bool = False


@dataclass
class _Entry:
    session: TokenizerSession
    sample_rate_hz: int
    last_used_s: float


class StreamRegistry:
    def __init__(
        self,
        new_session: Callable[[int], TokenizerSession],
        tokenize_segments: Callable[[list[np.ndarray]], list[np.ndarray]],
        idle_timeout_s: float = 60.0,
        max_streams: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._new_session = new_session
        self._tokenize_segments = tokenize_segments
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
        [out] = self.process_batch([Chunk(stream_id, audio, sample_rate_hz, start, end, cancel)])
        if isinstance(out, Exception):
            raise out
        return out

    def process_batch(self, chunks: list[Chunk]) -> list[np.ndarray | Exception]:
        """Apply chunks of different streams together: the vq06 segments they complete go to the
        speech tokenizer as one batch. Each chunk gets its tokens or its own exception."""
        results: list[np.ndarray | Exception] = []
        group: list[Chunk] = []
        for chunk in chunks:  # a stream appearing twice is applied in order, in a later group
            if any(c.stream_id == chunk.stream_id for c in group):
                results += self._process_group(group)
                group = []
            group.append(chunk)
        return results + self._process_group(group)

    def _process_group(self, chunks: list[Chunk]) -> list[np.ndarray | Exception]:
        self.expire_idle()
        results: list[np.ndarray | Exception] = [np.zeros(0, dtype=np.int64)] * len(chunks)
        pending: list[tuple[int, Chunk, _Entry, list[np.ndarray]]] = []
        for i, chunk in enumerate(chunks):
            try:
                entry = self._open(chunk)
                if entry is None:  # cancelled
                    continue
                pending.append((i, chunk, entry, entry.session.prepare(chunk.audio, final=chunk.end)))
            except Exception as exc:
                results[i] = exc
                if chunk.start:  # a stream whose first chunk failed never really began
                    self.drop(chunk.stream_id)
        segments = [seg for *_, segs in pending for seg in segs]
        try:
            codes = self._tokenize_segments(segments) if segments else []
        except Exception as exc:  # the streams' vq06 state is now incomplete: they cannot go on
            for i, chunk, _, _ in pending:
                results[i] = exc
                self.drop(chunk.stream_id)
            return results
        offset = 0
        for i, chunk, entry, segs in pending:
            try:
                results[i] = entry.session.complete(codes[offset : offset + len(segs)])
            except Exception as exc:
                results[i] = exc
            offset += len(segs)
            if chunk.end:
                self.drop(chunk.stream_id)
        return results

    def _open(self, chunk: Chunk) -> _Entry | None:
        started = False
        with self._lock:
            entry = self._streams.get(chunk.stream_id)
            if chunk.start:
                if entry is not None:  # a restarted sequence replaces the old state
                    self._streams.pop(chunk.stream_id)
                elif len(self._streams) >= self.max_streams:
                    raise StreamError(f"too many open streams ({self.max_streams}); end or cancel some first")
                entry = _Entry(self._new_session(chunk.sample_rate_hz), int(chunk.sample_rate_hz), self._clock())
                self._streams[chunk.stream_id] = entry
                started = True
            elif entry is None:
                raise StreamError(
                    f"unknown stream id {chunk.stream_id!r}: not started, already ended, or expired after "
                    f"{self.idle_timeout_s:g} s idle"
                )
            entry.last_used_s = self._clock()
        if started:
            self._changed()
        if chunk.cancel:
            self.drop(chunk.stream_id)
            return None
        if int(chunk.sample_rate_hz) != entry.sample_rate_hz:
            raise StreamError(
                f"sample_rate_hz changed within stream {chunk.stream_id!r}: "
                f"{chunk.sample_rate_hz} != {entry.sample_rate_hz}"
            )
        return entry

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
