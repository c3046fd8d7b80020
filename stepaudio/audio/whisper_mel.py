"""Whisper-style 128-bin log-mel spectrogram (the speech tokenizer's input features).

16 kHz, n_fft 400, hop 160 (100 frames/s), periodic Hann window, centred reflect-padded STFT,
power spectrum with the last frame dropped, Slaney mel filters, log10 with a 1e-10 floor,
dynamic range clipped to (max - 8), then (x + 4) / 4.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE_HZ = 16000
N_FFT = 400
HOP_SAMPLES = 160
N_MELS = 128


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mel)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, (n_mels, n_fft // 2 + 1) float32."""
    fft_hz = np.linspace(0, sample_rate_hz / 2, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(sample_rate_hz / 2), n_mels + 2)
    hz_pts = _mel_to_hz_slaney(mel_pts)
    fdiff = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2 : n_mels + 2] - hz_pts[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel_spectrogram(audio_16k: np.ndarray, n_mels: int = N_MELS) -> np.ndarray:
    """(T,) float32 at 16 kHz -> (n_mels, T // 160) float32."""
    x = torch.from_numpy(np.ascontiguousarray(audio_16k, dtype=np.float32))
    window = torch.hann_window(N_FFT)
    spec = torch.stft(x, N_FFT, HOP_SAMPLES, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2  # (201, frames)
    mel = torch.from_numpy(mel_filters(n_mels)) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()
