"""Streaming rational resampling (polyphase windowed sinc) in numpy.

One ``StreamingResampler`` per direction of a session: 24 kHz or 8 kHz client audio -> 16 kHz for
the VAD and the tokenizer, and the TTS's 22.05 kHz -> the client's 24 kHz or 8 kHz. Fed in pieces of
any size it returns exactly what one call over the whole signal returns (the state is the input
tail the filter still needs and the position of the next output sample), and the output is aligned
like ``scipy.signal.resample_poly``: output n is the filtered input at time n * M / L, so there is
no delay to compensate, at the price of holding back ``half_len / L`` input samples until ``flush``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import gcd

import numpy as np

# The filter of scipy.signal.resample_poly's default: a Kaiser-windowed sinc of 10 zero crossings on
# each side at the lower of the two rates, beta 5.0. About 60 dB of stop-band rejection; plenty for
# speech going into a VAD and a tokenizer, and for telephone-band G.711.
ZERO_CROSSINGS = 10
KAISER_BETA = 5.0
# How outputs are computed, without gathering copies of the input (numpy's einsum, never BLAS, whose
# threads would spin between the small calls here):
# - ratios with few phases (24 -> 16 kHz has two): the outputs of one phase advance through the input by
#   ``down`` samples each, so they are one strided (outputs, taps) view of it, times that phase's taps;
# - many phases (22.05 -> 24 kHz has 160): output q * up + j of period q reads the input from
#   q * down + offset[j]; a band of BAND_OUTPUTS consecutive j reads one short stretch of it, so each band
#   is a strided (periods, stretch) view times a (stretch, band) matrix holding the band's taps.
STRIDED_MAX_UP = 8
BAND_OUTPUTS = 16


def design_filter(up: int, down: int) -> np.ndarray:
    """Low-pass prototype at the upsampled rate, gain ``up`` (the zero-stuffing loss)."""
    max_rate = max(up, down)
    half_len = ZERO_CROSSINGS * max_rate
    n = np.arange(-half_len, half_len + 1, dtype=np.float64)
    cutoff = 1.0 / max_rate  # of the upsampled Nyquist
    h = np.sinc(cutoff * n) * np.kaiser(2 * half_len + 1, KAISER_BETA)
    return h / h.sum() * up  # unit gain at DC, as firwin scales it


@dataclass(frozen=True)
class _Band:
    j0: int  # the outputs j0 .. j1 - 1 of each period
    j1: int
    first: int  # their inputs start at q * down + first
    taps: np.ndarray  # (j1 - j0, stretch): taps[j - j0, s] meets input q * down + first + s


@dataclass(frozen=True)
class _Plan:
    """What every resampler of one ratio shares (read-only)."""

    phases: np.ndarray  # (up, taps): phases[r, k] = h[r + (taps - 1 - k) * up], oldest input first
    delay: int  # in upsampled samples: centres the filter on the output time
    bands: tuple[_Band, ...]  # empty for ratios with few phases


@lru_cache(maxsize=32)
def _plan(up: int, down: int) -> _Plan:
    h = design_filter(up, down)
    taps = -(-len(h) // up)
    padded = np.zeros(taps * up)
    padded[: len(h)] = h
    # h[r + k * up] meets the input k samples before the newest one of an output of phase r
    phases = np.ascontiguousarray(padded.reshape(taps, up).T[:, ::-1], dtype=np.float32)  # (up, taps)
    delay = (len(h) - 1) // 2
    bands = []
    if up > STRIDED_MAX_UP:
        t = np.arange(up) * down + delay  # output j of period 0 (the pattern repeats every up outputs)
        oldest, phase = t // up - (taps - 1), t % up
        for j0 in range(0, up, BAND_OUTPUTS):
            j1 = min(up, j0 + BAND_OUTPUTS)
            first = int(oldest[j0])
            m = np.zeros((j1 - j0, int(oldest[j1 - 1]) + taps - first), np.float32)
            for j in range(j0, j1):
                m[j - j0, oldest[j] - first : oldest[j] - first + taps] = phases[phase[j]]
            m.setflags(write=False)
            bands.append(_Band(j0, j1, first, m))
    phases.setflags(write=False)
    return _Plan(phases, delay, tuple(bands))


class StreamingResampler:
    """``process(x)`` returns the output samples that ``x`` completes; ``flush()`` the rest."""

    def __init__(self, rate_in_hz: int, rate_out_hz: int):
        g = gcd(rate_in_hz, rate_out_hz)
        self.up, self.down = rate_out_hz // g, rate_in_hz // g
        self.rate_in_hz, self.rate_out_hz = rate_in_hz, rate_out_hz
        self.identity = self.up == self.down
        self._plan = _plan(self.up, self.down) if not self.identity else _Plan(np.ones((1, 1), np.float32), 0, ())
        self.delay = self._plan.delay
        self.taps = self._plan.phases.shape[1]  # per phase
        self._buf = np.zeros(self.taps - 1, np.float32)  # the input tail, preceded by zeros at the start
        self._buf_start = -(self.taps - 1)  # absolute index of _buf[0]
        self._n_in = 0
        self._n_out = 0
        self._flushed = False

    def _available_outputs(self, n_in: int) -> int:
        # output n needs input up to (n * down + delay) // up, i.e. n * down + delay < n_in * up
        return max(0, -(-(n_in * self.up - self.delay) // self.down))

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self._flushed:
            raise RuntimeError("the resampler was flushed")
        if self.identity:
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        self._n_in += len(x)
        return self._produce(self._available_outputs(self._n_in))

    def flush(self) -> np.ndarray:
        """The outputs that need input beyond the end (taken as zeros): ceil(n_in * L / M) in all."""
        if self.identity or self._flushed:
            self._flushed = True
            return np.zeros(0, np.float32)
        self._flushed = True
        total = -(-self._n_in * self.up // self.down)
        need_in = (max(total - 1, 0) * self.down + self.delay) // self.up + 1
        pad = max(0, need_in - self._n_in)
        self._buf = np.concatenate([self._buf, np.zeros(pad, np.float32)])
        return self._produce(total)

    def _produce(self, n_end: int) -> np.ndarray:
        if n_end <= self._n_out:
            out = np.zeros(0, np.float32)
        elif self._plan.bands:
            out = self._produce_banded(n_end)
        else:
            out = self._produce_strided(n_end)
        self._n_out = max(self._n_out, n_end)
        # keep only what the next output still needs
        next_newest = (self._n_out * self.down + self.delay) // self.up
        keep_from = max(self._buf_start, next_newest - (self.taps - 1))
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return out

    def _produce_strided(self, n_end: int) -> np.ndarray:
        n0, count = self._n_out, n_end - self._n_out
        buf, taps, up, down = np.ascontiguousarray(self._buf), self.taps, self.up, self.down
        item = buf.itemsize
        out = np.empty(count, np.float32)
        for j in range(min(up, count)):  # outputs n0 + j, n0 + j + up, ...: one phase
            t = (n0 + j) * down + self.delay
            oldest = t // up - (taps - 1) - self._buf_start  # index in _buf of the oldest input of output n0 + j
            m = (count - j - 1) // up + 1
            # rows[i, k] = buf[oldest + i * down + k]; the last row ends at the newest input there is
            rows = np.ndarray((m, taps), np.float32, buf, oldest * item, (down * item, item))
            out[j::up] = np.einsum("mk,k->m", rows, self._plan.phases[t % up])
        return out

    def _produce_banded(self, n_end: int) -> np.ndarray:
        n0, up, down, bands = self._n_out, self.up, self.down, self._plan.bands
        q0, q1 = n0 // up, (n_end - 1) // up + 1  # the periods holding outputs n0 .. n_end - 1
        # Whole periods are computed, and the outputs before n0 or from n_end on dropped; the inputs they
        # alone read may be gone or not there yet: zeros stand in for them.
        lo = q0 * down + bands[0].first
        hi = (q1 - 1) * down + bands[-1].first + bands[-1].taps.shape[1]
        buf, start = self._buf, self._buf_start
        if lo < start or hi > start + len(buf):
            front, back = max(0, start - lo), max(0, hi - start - len(buf))
            buf = np.concatenate([np.zeros(front, np.float32), buf, np.zeros(back, np.float32)])
            start -= front
        buf = np.ascontiguousarray(buf)
        item = buf.itemsize
        y = np.empty((q1 - q0, up), np.float32)
        for b in bands:
            # rows[q, s] = input (q0 + q) * down + b.first + s
            a = (q0 * down + b.first - start) * item
            rows = np.ndarray((q1 - q0, b.taps.shape[1]), np.float32, buf, a, (down * item, item))
            y[:, b.j0 : b.j1] = np.einsum("qs,js->qj", rows, b.taps)
        return y.reshape(-1)[n0 - q0 * up : n_end - q0 * up]
