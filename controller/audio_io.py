"""Audio between the wire and the models: base64 in the session's format <-> float32 samples.

In: ``audio/pcm`` (PCM16 little-endian, 24 kHz) or G.711 ``audio/pcmu`` / ``audio/pcma`` (8 kHz) ->
float32 at 16 kHz, the rate of the VAD and the tokenizer. Out: the TTS's float32 (22.05 kHz) -> the
session's output format, cut into deltas of at most ``max_delta_ms`` so that clients with a 1 MiB
frame limit are safe.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from controller import g711
from controller.resample import StreamingResampler
from controller.session_config import FORMATS

MODEL_RATE_HZ = 16000


class AudioFormatError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


def decode_bytes(data: bytes, fmt: str) -> np.ndarray:
    """Raw wire bytes of ``fmt`` -> float32 at the format's rate."""
    if fmt == "audio/pcm":
        if len(data) % 2:
            raise AudioFormatError("invalid_audio", f"PCM16 audio has an odd number of bytes ({len(data)})")
        return pcm16_to_float(np.frombuffer(data, dtype="<i2"))
    codes = np.frombuffer(data, dtype=np.uint8)
    table = g711.ulaw_decode if fmt == "audio/pcmu" else g711.alaw_decode
    return pcm16_to_float(table(codes))


def encode_bytes(x: np.ndarray, fmt: str) -> bytes:
    pcm = float_to_pcm16(x)
    if fmt == "audio/pcm":
        return pcm.astype("<i2").tobytes()
    return (g711.ulaw_encode(pcm) if fmt == "audio/pcmu" else g711.alaw_encode(pcm)).tobytes()


def decode_base64(audio_b64: object) -> bytes:
    if not isinstance(audio_b64, str):
        raise AudioFormatError("invalid_base64", "audio must be a base64 string")
    try:
        return base64.b64decode(audio_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioFormatError("invalid_base64", f"audio is not valid base64: {exc}") from exc


class InputAudio:
    """One session's incoming audio: wire format -> 16 kHz, streaming across appends."""

    def __init__(self, fmt: str):
        self.format = fmt
        self.rate_hz = FORMATS[fmt][0]
        self._resampler = StreamingResampler(self.rate_hz, MODEL_RATE_HZ)

    def decode(self, audio_b64: object) -> np.ndarray:
        """Checks and decodes one append (at the wire rate); raises AudioFormatError."""
        return decode_bytes(decode_base64(audio_b64), self.format)

    def to_model_rate(self, x: np.ndarray) -> np.ndarray:
        return self._resampler.process(x)


class OutputAudio:
    """One reply's outgoing audio: model output -> wire format, in base64 deltas."""

    def __init__(self, fmt: str, max_delta_ms: int = 100):
        self.format = fmt
        self.rate_hz = FORMATS[fmt][0]
        self.max_delta_samples = self.rate_hz * max_delta_ms // 1000
        self._resampler: StreamingResampler | None = None
        self.samples_out = 0

    @property
    def duration_ms(self) -> int:
        return self.samples_out * 1000 // self.rate_hz

    def convert(self, x: np.ndarray, rate_hz: int) -> np.ndarray:
        """Samples at the wire rate (held back by the resampler until ``flush``)."""
        if self._resampler is None or self._resampler.rate_in_hz != rate_hz:
            self._resampler = StreamingResampler(rate_hz, self.rate_hz)
        return self._resampler.process(x)

    def flush(self) -> np.ndarray:
        """The held-back tail; the next ``convert`` starts a new utterance."""
        resampler, self._resampler = self._resampler, None
        return resampler.flush() if resampler is not None else np.zeros(0, np.float32)

    def deltas(self, samples: np.ndarray) -> list[tuple[str, int]]:
        """(base64 delta, samples in it) pieces of wire-rate samples."""
        data = encode_bytes(samples, self.format)  # all at once, then cut
        width = len(data) // len(samples) if len(samples) else 1  # bytes per sample
        out = []
        for i in range(0, len(samples), self.max_delta_samples):
            n = min(self.max_delta_samples, len(samples) - i)
            out.append((base64.b64encode(data[i * width : (i + n) * width]).decode("ascii"), n))
            self.samples_out += n
        return out
