"""A user turn's audio: the session's 16 kHz log, and the turn's tokenizer runs.

Each run of speech (from the turn's start, or from a resume after a pause, to the next pause) is one
sequence in the streaming tokenizer, finished when the pause begins, so the tokens of everything said
so far are ready while the user is still silent: that is what a speculative reply is made from.
The turn's tokens are the runs' tokens in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from controller.backend import TokenizerStream

RATE_HZ = 16000


def ms(samples: int) -> int:
    return samples * 1000 // RATE_HZ


def samples(ms_: int) -> int:
    return ms_ * RATE_HZ // 1000


class AudioLog:
    """The session's 16 kHz input by absolute sample index; holds only what may still be needed."""

    def __init__(self) -> None:
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self.end = 0  # samples appended in all

    def append(self, x: np.ndarray) -> None:
        if len(x):
            self._chunks.append((self.end, x))
            self.end += len(x)

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) that the log still holds (the caller must not write to the result)."""
        parts = []
        for s, x in reversed(self._chunks):  # newest first: pushes ask for the last append or two
            if s + len(x) <= start:
                break
            a, b = max(start, s), min(stop, s + len(x))
            if a < b:
                parts.append(x[a - s : b - s])
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts[::-1]) if parts else np.zeros(0, np.float32)

    def trim(self, keep_from: int) -> None:
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= keep_from:
            self._chunks.popleft()


@dataclass
class Run:
    stream: TokenizerStream
    start: int
    pushed: int  # samples sent so far (absolute index of the next one)
    end: int | None = None
    tokens: list[int] | None = None
    error: str | None = None
    task: asyncio.Task | None = None

    @property
    def open(self) -> bool:
        return self.end is None


@dataclass
class UserTurn:
    n: int
    item_id: str
    start: int  # sample where the turn's audio begins (speech onset minus the prefix padding)
    runs: list[Run] = field(default_factory=list)
    revision: int = 0  # bumped when the user resumes after a pause
    ended: bool = False
    end: int | None = None
    respond: bool = False  # a response waits for this turn's tokens
    t_ended: float | None = None  # perf_counter when the end of the turn was processed
    t_flush: float | None = None  # perf_counter when the last run was asked to finish

    @property
    def current(self) -> Run | None:
        return self.runs[-1] if self.runs and self.runs[-1].open else None

    def tokens_ready(self) -> bool:
        return bool(self.runs) and all(r.tokens is not None or r.error is not None for r in self.runs)

    def failed(self) -> str | None:
        return next((r.error for r in self.runs if r.error), None)

    def tokens(self) -> list[int]:
        return [t for r in self.runs for t in (r.tokens or ())]
