"""Silence trimming of the reference's TTS-prompt path: keep 50 ms before and 220 ms after speech."""

from __future__ import annotations

import math

import numpy as np

TOP_DB = 20
FRAME_SAMPLES = 512
HOP_SAMPLES = 128
KEEP_LEFT_S = 0.05
KEEP_RIGHT_S = 0.22
SPAN_GRID_SAMPLES = 240  # the speech span is rounded up to a multiple of this


def speech_span(audio: np.ndarray) -> tuple[int, int]:
    """[start, end) of the non-silent part: frames within TOP_DB of the loudest (librosa's trim)."""
    import librosa

    _, (start, end) = librosa.effects.trim(audio, top_db=TOP_DB, frame_length=FRAME_SAMPLES, hop_length=HOP_SAMPLES)
    return int(start), int(end)


def trim_silence(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    start, end = speech_span(audio)
    n_grid = math.ceil((end - start) / SPAN_GRID_SAMPLES)
    left = int(KEEP_LEFT_S * sample_rate_hz)
    out_len = int(n_grid * SPAN_GRID_SAMPLES + (KEEP_LEFT_S + KEEP_RIGHT_S) * sample_rate_hz)
    first = start - left
    x = audio[first:] if first > 0 else np.pad(audio, (-first, 0))
    x = x[:out_len] if out_len < len(x) else np.pad(x, (0, out_len - len(x)))
    return x.astype(np.float32)
