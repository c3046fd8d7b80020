"""WAV reading for clients (soundfile + numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate; multi-channel files are mixed."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    return data.mean(axis=1).astype(np.float32), int(sr)
