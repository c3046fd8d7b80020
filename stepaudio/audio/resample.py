"""Band-limited resampling (windowed sinc, Hann window), whole-signal and streaming.

The kernel is the one torchaudio's ``Resample`` uses by default (``sinc_interp_hann``,
``lowpass_filter_width=6``, ``rolloff=0.99``), so tokens computed from resampled input match
the reference pipeline. The streaming resampler produces exactly the samples of the
whole-signal resampler, whatever the chunking of its input.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


@lru_cache(maxsize=32)
def _kernel(orig_hz: int, new_hz: int) -> tuple[np.ndarray, int]:
    """Polyphase kernel (new_hz, 2*width + orig_hz) for the reduced rates, and width."""
    base_hz = min(orig_hz, new_hz) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig_hz / base_hz)
    # Input offsets relative to the first input sample of a block, in units of input samples.
    offsets = np.arange(-width, width + orig_hz, dtype=np.float64)[None, :] / orig_hz
    # Output phase p sits at time p / new_hz (in input-block units); the kernel is evaluated
    # at (input time - output time).
    phases = -np.arange(new_hz, dtype=np.float64)[:, None] / new_hz
    t = (phases + offsets) * base_hz
    t = np.clip(t, -LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = np.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(t == 0, 1.0, np.sin(t) / np.where(t == 0, 1.0, t))
    kernel = sinc * window * (base_hz / orig_hz)
    return kernel.astype(np.float32), width


def _reduced(orig_hz: int, new_hz: int) -> tuple[int, int]:
    g = math.gcd(int(orig_hz), int(new_hz))
    return int(orig_hz) // g, int(new_hz) // g


def resample(x: np.ndarray, orig_hz: int, new_hz: int) -> np.ndarray:
    """Resample a mono float32 signal; output length ceil(len(x) * new_hz / orig_hz)."""
    if orig_hz == new_hz:
        return np.asarray(x, dtype=np.float32)
    stream = StreamingResampler(orig_hz, new_hz)
    return np.concatenate([stream.process(x), stream.flush()])


class StreamingResampler:
    """Feeds arbitrary chunks; returns every output sample whose input window is complete.

    The whole-signal definition pads ``width`` zeros on the left and ``width + orig`` on the
    right (in reduced-rate units), convolves with stride ``orig`` and keeps
    ceil(n_in * new / orig) samples. Block k of outputs (``new`` samples) needs padded input
    [k*orig, k*orig + 2*width + orig), i.e. real input up to k*orig + width + orig.
    """

    def __init__(self, orig_hz: int, new_hz: int):
        self.orig_hz, self.new_hz = int(orig_hz), int(new_hz)
        self._orig, self._new = _reduced(self.orig_hz, self.new_hz)
        self._identity = self.orig_hz == self.new_hz
        if not self._identity:
            self._kernel, self._width = _kernel(self._orig, self._new)
        self._buf = np.zeros(0 if self._identity else self._width, dtype=np.float32)  # left zero pad
        self._n_in = 0  # real input samples seen
        self._n_out = 0  # output samples emitted
        self._blocks_done = 0

    def _emit(self, n_blocks: int) -> np.ndarray:
        if n_blocks <= 0:
            return np.zeros(0, dtype=np.float32)
        span = 2 * self._width + self._orig
        start = 0
        # (n_blocks, span) windows with stride orig over the buffer
        idx = start + np.arange(n_blocks)[:, None] * self._orig + np.arange(span)[None, :]
        frames = self._buf[idx]
        out = (frames @ self._kernel.T).reshape(-1)  # (n_blocks * new,)
        self._buf = self._buf[n_blocks * self._orig :]
        self._blocks_done += n_blocks
        return out.astype(np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self._identity:
            self._n_in += len(x)
            self._n_out += len(x)
            return x.copy()
        self._n_in += len(x)
        self._buf = np.concatenate([self._buf, x])
        span = 2 * self._width + self._orig
        n_blocks = 0 if len(self._buf) < span else (len(self._buf) - span) // self._orig + 1
        out = self._emit(n_blocks)
        # Never emit past the final length; the tail is trimmed at flush.
        self._n_out += len(out)
        return out

    def flush(self) -> np.ndarray:
        """Emit the remaining samples (zero-padding the end) and reset."""
        if self._identity:
            self.__init__(self.orig_hz, self.new_hz)
            return np.zeros(0, dtype=np.float32)
        total_out = math.ceil(self._n_in * self._new / self._orig)
        span = 2 * self._width + self._orig
        self._buf = np.concatenate([self._buf, np.zeros(self._width + self._orig + span, dtype=np.float32)])
        need = total_out - self._n_out
        n_blocks = max(0, math.ceil(need / self._new))
        out = self._emit(n_blocks)[: max(need, 0)]
        if need < 0:  # emitted more than the final length during process(): cannot happen
            raise AssertionError("resampler emitted past the end of the signal")
        self.__init__(self.orig_hz, self.new_hz)
        return out
