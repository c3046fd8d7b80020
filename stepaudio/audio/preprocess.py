"""Input checks and the reference's waveform preprocessing (mono mix, 16 kHz, peak normalisation)."""

from __future__ import annotations

import numpy as np

from stepaudio.audio.resample import resample

TOKENIZER_SAMPLE_RATE_HZ = 16000
MIN_INPUT_SAMPLE_RATE_HZ = 8000
MAX_INPUT_SAMPLE_RATE_HZ = 48000
PEAK_FLOOR = 0.01
PEAK_TARGET = 0.999


class AudioInputError(ValueError):
    """Bad audio from a caller: the message names the problem."""


def check_sample_rate(sample_rate_hz: int) -> int:
    sr = int(sample_rate_hz)
    if not MIN_INPUT_SAMPLE_RATE_HZ <= sr <= MAX_INPUT_SAMPLE_RATE_HZ:
        raise AudioInputError(
            f"sample_rate_hz={sr} is outside the supported range "
            f"{MIN_INPUT_SAMPLE_RATE_HZ}-{MAX_INPUT_SAMPLE_RATE_HZ} Hz"
        )
    return sr


def check_waveform(audio: np.ndarray, *, allow_empty: bool = False, name: str = "audio") -> np.ndarray:
    """Return ``audio`` as mono float32 (T,). Multi-channel (C, T) input is mixed by the mean,
    as the reference does. Raises AudioInputError on wrong dtype, shape, NaN/inf or emptiness."""
    a = np.asarray(audio)
    if a.dtype.kind not in "f":
        raise AudioInputError(f"{name} must be floating point PCM in [-1, 1], got dtype {a.dtype}")
    if a.ndim == 2:
        a = a.mean(axis=0)
    elif a.ndim != 1:
        raise AudioInputError(f"{name} must have shape (T,) or (channels, T), got {a.shape}")
    if a.size == 0 and not allow_empty:
        raise AudioInputError(f"{name} is empty")
    if a.size and not np.isfinite(a).all():
        raise AudioInputError(f"{name} contains NaN or inf samples")
    return a.astype(np.float32, copy=False)


def to_16k(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Resample to 16 kHz. Unlike the reference, 8-16 kHz input is accepted (upsampled)."""
    return resample(audio, check_sample_rate(sample_rate_hz), TOKENIZER_SAMPLE_RATE_HZ)


def peak_gain(peak: float) -> float:
    """Gain of the reference's ``energy_norm_fn``: x / max(peak, 0.01) * 0.999."""
    return PEAK_TARGET / max(float(peak), PEAK_FLOOR)


def peak_normalize(audio: np.ndarray) -> np.ndarray:
    if audio.size == 0:
        return audio
    # Same operation order as the reference: divide by the floored peak, then scale.
    return (audio / np.float32(max(float(np.abs(audio).max()), PEAK_FLOOR)) * np.float32(PEAK_TARGET)).astype(
        np.float32
    )
