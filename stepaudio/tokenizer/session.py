"""Streaming tokenization: feed audio in any chunk sizes, get the newly completed <audio_N> tokens.

Both streams consume the 16 kHz signal on fixed grids: vq02 in strides of 3840 samples (the
encoder is causal, so this is exact), vq06 in independent segments of ``segment_ms`` (the
speech tokenizer sees a whole segment). Because the grids and the normalisation gains depend
only on the signal, never on how it was chunked, a session fed 20 ms pieces returns the same
tokens as one fed the whole file; with ``segment_ms=30000`` and ``normalization="utterance"``
the result equals the reference tokenizer's.

Normalisation (the reference divides by the utterance's peak, which needs the whole utterance):
- ``utterance``: the reference's global peak; tokens are only produced at flush().
- ``running``: each block (stride or segment) uses the peak of the signal up to its end; streams.
- ``none``: no gain; streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from stepaudio.audio.preprocess import (
    PEAK_FLOOR,
    PEAK_TARGET,
    TOKENIZER_SAMPLE_RATE_HZ,
    AudioInputError,
    check_sample_rate,
    check_waveform,
)
from stepaudio.audio.resample import StreamingResampler
from stepaudio.tokenizer import tokens
from stepaudio.tokenizer.linguistic import STRIDE_SAMPLES

if TYPE_CHECKING:
    from stepaudio.tokenizer.tokenizer import AudioTokenizer

Normalization = Literal["utterance", "running", "none"]
NORMALIZATIONS = ("utterance", "running", "none")
SEGMENT_GRID_MS = tokens.GROUP_MS


def check_segment_ms(segment_ms: int) -> int:
    seg = int(segment_ms)
    if seg <= 0 or seg % SEGMENT_GRID_MS:
        raise AudioInputError(f"segment_ms={segment_ms} must be a positive multiple of {SEGMENT_GRID_MS} ms")
    return seg


def apply_peak(x: np.ndarray, peak: float | None) -> np.ndarray:
    """The reference's energy normalisation with a given peak, in its operation order."""
    if peak is None:
        return x
    return (x / np.float32(max(peak, PEAK_FLOOR)) * np.float32(PEAK_TARGET)).astype(np.float32)


@dataclass
class TokenizeResult:
    vq02: np.ndarray  # (T02,) codes 0..1023
    vq06: np.ndarray  # (T06,) codes 0..4095
    audio_n: np.ndarray  # (5 * groups,) N values

    @property
    def token_string(self) -> str:
        return tokens.token_string(self.audio_n)

    @property
    def llm_ids(self) -> np.ndarray:
        return tokens.llm_ids(self.audio_n)


class TokenizerSession:
    def __init__(
        self,
        tokenizer: AudioTokenizer,
        sample_rate_hz: int,
        segment_ms: int,
        normalization: Normalization = "running",
        max_audio_s: float = 600.0,
    ):
        if normalization not in NORMALIZATIONS:
            raise AudioInputError(f"normalization '{normalization}' is not one of {NORMALIZATIONS}")
        self.tokenizer = tokenizer
        self.sample_rate_hz = check_sample_rate(sample_rate_hz)
        self.segment_samples = check_segment_ms(segment_ms) * TOKENIZER_SAMPLE_RATE_HZ // 1000
        self.normalization = normalization
        self.max_audio_s = float(max_audio_s)
        self._resampler = StreamingResampler(self.sample_rate_hz, TOKENIZER_SAMPLE_RATE_HZ)
        self._ling = tokenizer.linguistic.new_state()
        self._buf = np.zeros(0, dtype=np.float32)  # 16 kHz samples from absolute position _base
        self._base = 0
        self._peak_before_base = 0.0
        self._pos02 = 0  # absolute 16 kHz position consumed by vq02 strides
        self._pos06 = 0  # ... by vq06 segments
        self._input_samples = 0
        self.vq02: list[int] = []
        self.vq06: list[int] = []
        self._groups_emitted = 0
        self.closed = False

    @property
    def audio_s(self) -> float:
        return self._input_samples / self.sample_rate_hz

    def feed(self, audio: np.ndarray) -> np.ndarray:
        """Add audio at the session's sample rate; returns N values of newly completed groups."""
        return self.complete(self.tokenizer.semantic.tokenize(self.prepare(audio)))

    def flush(self) -> np.ndarray:
        """End of utterance: tokenize what remains; returns the last N values. Closes the session."""
        return self.complete(self.tokenizer.semantic.tokenize(self.prepare(None, final=True)))

    # Two-phase form of feed/flush, so a server can batch the vq06 segments of many sessions
    # into one speech-tokenizer call: prepare() runs vq02 and returns the completed segments,
    # complete() takes their codes (in order) and returns the newly completed groups.
    def prepare(self, audio: np.ndarray | None, final: bool = False) -> list[np.ndarray]:
        if self.closed:
            raise AudioInputError("session already flushed")
        if audio is not None:
            x = check_waveform(audio, allow_empty=True)
            if (self._input_samples + len(x)) / self.sample_rate_hz > self.max_audio_s:
                raise AudioInputError(
                    f"audio exceeds the maximum of {self.max_audio_s:g} s per utterance "
                    f"({(self._input_samples + len(x)) / self.sample_rate_hz:.1f} s)"
                )
            self._input_samples += len(x)
            self._append(self._resampler.process(x))
        if final:
            self._append(self._resampler.flush())
            self.closed = True
        elif self.normalization == "utterance":
            return []  # the gain needs the whole utterance: everything waits for flush
        self._run_vq02(final)
        return self._take_segments(final)

    def complete(self, segment_codes: list[np.ndarray]) -> np.ndarray:
        for codes in segment_codes:
            self.vq06.extend(np.asarray(codes).tolist())
        self._trim()
        return self._emit()

    def result(self) -> TokenizeResult:
        vq02 = np.asarray(self.vq02, dtype=np.int64)
        vq06 = np.asarray(self.vq06, dtype=np.int64)
        return TokenizeResult(vq02, vq06, tokens.interleave(vq02, vq06))

    # -- internals -------------------------------------------------------------------------
    def _append(self, y: np.ndarray) -> None:
        if len(y):
            self._buf = np.concatenate([self._buf, y])

    @property
    def _end(self) -> int:
        return self._base + len(self._buf)

    def _peak(self, end: int) -> float | None:
        """The gain's peak for a block ending at absolute position ``end``."""
        if self.normalization == "none":
            return None
        if self.normalization == "utterance":  # only reached at flush, with the whole utterance buffered
            end = self._end
        head = self._buf[: end - self._base]
        return max(self._peak_before_base, float(np.abs(head).max()) if len(head) else 0.0)

    def _slice(self, start: int, end: int) -> np.ndarray:
        return self._buf[start - self._base : end - self._base]

    def _run_vq02(self, final: bool) -> None:
        ling = self.tokenizer.linguistic
        enc_parts = []
        while self._end - self._pos02 >= STRIDE_SAMPLES or (final and self._pos02 < self._end):
            end = min(self._pos02 + STRIDE_SAMPLES, self._end)
            is_final = final and end == self._end
            block = apply_peak(self._slice(self._pos02, end), self._peak(end))
            enc_parts.append(ling.encode_stride(self._ling, block, is_final=is_final))
            self._pos02 = end
        if enc_parts:
            self.vq02.extend(ling.quantize(np.concatenate(enc_parts)).tolist())

    def _take_segments(self, final: bool) -> list[np.ndarray]:
        segments = []
        while self._end - self._pos06 >= self.segment_samples or (final and self._pos06 < self._end):
            end = min(self._pos06 + self.segment_samples, self._end)
            segments.append(apply_peak(self._slice(self._pos06, end), self._peak(end)))
            self._pos06 = end
        return segments

    def _trim(self) -> None:
        cut = min(self._pos02, self._pos06) - self._base
        if cut > 0:
            if self.normalization != "none":
                self._peak_before_base = max(self._peak_before_base, float(np.abs(self._buf[:cut]).max()))
            self._buf = self._buf[cut:]
            self._base += cut

    def _emit(self) -> np.ndarray:
        n = tokens.n_complete_groups(len(self.vq02), len(self.vq06))
        out = tokens.interleave(np.asarray(self.vq02), np.asarray(self.vq06), self._groups_emitted, n)
        self._groups_emitted = n
        return out
