"""Streaming rational resampling (polyphase windowed sinc) in numpy.

One ``StreamingResampler`` per direction of a session: 24 kHz or 8 kHz client audio -> 16 kHz for
the VAD and the tokenizer, and the TTS's 22.05 kHz -> the client's 24 kHz or 8 kHz. Fed in pieces of
any size it returns exactly what one call over the whole signal returns (the state is the input
tail the filter still needs and the position of the next output sample), and the output is aligned
like ``scipy.signal.resample_poly``: output n is the filtered input at time n * M / L, so there is
no delay to compensate, at the price of holding back ``half_len / L`` input samples until ``flush``.
"""

from __future__ import annotations

from math import gcd

import numpy as np

# The filter of scipy.signal.resample_poly's default: a Kaiser-windowed sinc of 10 zero crossings on
# each side at the lower of the two rates, beta 5.0. About 60 dB of stop-band rejection; plenty for
# speech going into a VAD and a tokenizer, and for telephone-band G.711.
ZERO_CROSSINGS = 10
KAISER_BETA = 5.0
BLOCK_OUT = 16384  # output samples per vectorised block: bounds the (n, taps) gather matrix


def design_filter(up: int, down: int) -> np.ndarray:
    """Low-pass prototype at the upsampled rate, gain ``up`` (the zero-stuffing loss)."""
    max_rate = max(up, down)
    half_len = ZERO_CROSSINGS * max_rate
    n = np.arange(-half_len, half_len + 1, dtype=np.float64)
    cutoff = 1.0 / max_rate  # of the upsampled Nyquist
    h = np.sinc(cutoff * n) * np.kaiser(2 * half_len + 1, KAISER_BETA)
    return h / h.sum() * up  # unit gain at DC, as firwin scales it


class StreamingResampler:
    """``process(x)`` returns the output samples that ``x`` completes; ``flush()`` the rest."""

    def __init__(self, rate_in_hz: int, rate_out_hz: int):
        g = gcd(rate_in_hz, rate_out_hz)
        self.up, self.down = rate_out_hz // g, rate_in_hz // g
        self.rate_in_hz, self.rate_out_hz = rate_in_hz, rate_out_hz
        self.identity = self.up == self.down
        h = design_filter(self.up, self.down) if not self.identity else np.ones(1)
        self.delay = (len(h) - 1) // 2  # in upsampled samples: centres the filter on the output time
        self.taps = -(-len(h) // self.up)  # per phase
        padded = np.zeros(self.taps * self.up)
        padded[: len(h)] = h
        # phases[r, k] = h[r + k * up]: the taps that meet input samples for output phase r
        self.phases = np.ascontiguousarray(padded.reshape(self.taps, self.up).T, dtype=np.float32)  # (up, taps)
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
        out = []
        # windows[i] = _buf[i + taps - 1], ..., _buf[i]: the taps that meet an output whose newest input is i + taps - 1
        windows = np.lib.stride_tricks.sliding_window_view(self._buf, self.taps)[:, ::-1]
        while self._n_out < n_end:
            n = np.arange(self._n_out, min(n_end, self._n_out + BLOCK_OUT), dtype=np.int64)
            t = n * self.down + self.delay
            newest = t // self.up - self._buf_start  # index in _buf of the newest input each output uses
            rows = windows[newest - (self.taps - 1)]  # (n, taps), newest first
            out.append(np.einsum("nk,nk->n", rows, self.phases[t % self.up]))
            self._n_out = int(n[-1]) + 1
        # keep only what the next output still needs
        next_newest = (self._n_out * self.down + self.delay) // self.up
        keep_from = max(self._buf_start, next_newest - (self.taps - 1))
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
