"""The prompt mel the flow decoder conditions on (the yaml's ``feat_extractor``, a matcha-style mel).

For the CosyVoice-300M configuration: 22050 Hz, n_fft 1024, hop 256, window 1024 (periodic Hann),
80 Slaney mel filters (librosa's defaults) over 0..8000 Hz. The waveform is reflect-padded by
(n_fft - hop) / 2 samples on both sides and framed without centring, so a signal of N samples gives
1 + (N + 2 * pad - n_fft) // hop frames (86.13 frames/s); with ``center`` (never set by the
official configs) the STFT pads n_fft / 2 more on each side, as ``torch.stft`` would. Each bin's magnitude is
sqrt(re^2 + im^2 + 1e-9) (the reference keeps that small epsilon inside the square root), the mel
energies are clamped at 1e-5 and their natural log is taken. Output: (T, n_mels) float32, the
``prompt_feat`` layout the flow takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

MAGNITUDE_EPS = 1e-9  # inside the sqrt of |X|^2
LOG_FLOOR = 1e-5  # mel energies are clamped here before the log


@dataclass(frozen=True)
class MelConfig:
    n_fft: int = 1024
    num_mels: int = 80
    sampling_rate: int = 22050
    hop_size: int = 256
    win_size: int = 1024
    fmin: float = 0.0
    fmax: float | None = 8000.0
    center: bool = False

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> MelConfig:
        """From the ``feat_extractor`` node's arguments (the names of matcha's ``mel_spectrogram``)."""
        known = {f: kwargs[f] for f in cls.__dataclass_fields__ if f in kwargs}
        cfg = cls(**known)
        if cfg.win_size > cfg.n_fft:
            raise ValueError(f"win_size {cfg.win_size} is larger than n_fft {cfg.n_fft}")
        if cfg.n_fft < cfg.hop_size:
            raise ValueError(f"n_fft {cfg.n_fft} is smaller than hop_size {cfg.hop_size}")
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> MelConfig:
        """From ``cosyvoice.yaml``: the ``feat_extractor`` block (a ``!name:`` node)."""
        from stepaudio.tokenizer.files import CheckpointError
        from stepaudio.tts.cosyvoice_yaml import Node, load_cosyvoice_yaml

        node = load_cosyvoice_yaml(path).get("feat_extractor")
        if not isinstance(node, Node):
            raise CheckpointError(f"{path}: missing the 'feat_extractor' block")
        try:
            return cls.from_kwargs(node.kwargs)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad feat_extractor arguments ({exc})") from exc

    @property
    def pad(self) -> int:
        return (self.n_fft - self.hop_size) // 2

    @property
    def frame_rate_hz(self) -> float:
        return self.sampling_rate / self.hop_size

    def num_frames(self, n_samples: int) -> int:
        """Frames for a signal of ``n_samples`` (0 when it is too short to frame)."""
        n = n_samples + 2 * self.pad
        if self.center:  # the STFT pads again, by n_fft // 2 on each side
            return 1 + n // self.hop_size
        return max(0, 1 + (n - self.n_fft) // self.hop_size)

    def min_samples(self) -> int:
        """The shortest signal this config accepts (reflect padding needs more samples than the pad)."""
        n = self.pad + 1
        while self.num_frames(n) < 1 or (self.center and n + 2 * self.pad <= self.n_fft // 2):
            n += 1
        return n


@lru_cache(maxsize=8)
def mel_basis(cfg: MelConfig) -> np.ndarray:
    """(num_mels, n_fft // 2 + 1) float32: librosa's default (Slaney scale and area normalisation)."""
    from librosa.filters import mel

    return mel(sr=cfg.sampling_rate, n_fft=cfg.n_fft, n_mels=cfg.num_mels, fmin=cfg.fmin, fmax=cfg.fmax).astype(
        np.float32
    )


@lru_cache(maxsize=8)
def _window(cfg: MelConfig) -> np.ndarray:
    """Periodic Hann of ``win_size`` zero-padded (centred) to ``n_fft``, as the STFT applies it."""
    n = np.arange(cfg.win_size, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / cfg.win_size)
    left = (cfg.n_fft - cfg.win_size) // 2
    out = np.zeros(cfg.n_fft, dtype=np.float64)
    out[left : left + cfg.win_size] = w
    return out


def prompt_mel(audio: np.ndarray, cfg: MelConfig | None = None) -> np.ndarray:
    """Log-mel of a mono waveform already at ``cfg.sampling_rate``: (T,) -> (frames, num_mels) float32."""
    cfg = cfg or MelConfig()
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform (T,), got shape {x.shape}")
    if len(x) < cfg.min_samples():
        raise ValueError(
            f"audio of {len(x)} samples is too short for the prompt mel (at least {cfg.min_samples()} "
            f"samples at {cfg.sampling_rate} Hz)"
        )
    x = np.pad(x.astype(np.float64), (cfg.pad, cfg.pad), mode="reflect")
    if cfg.center:
        x = np.pad(x, (cfg.n_fft // 2, cfg.n_fft // 2), mode="reflect")
    n_frames = 1 + (len(x) - cfg.n_fft) // cfg.hop_size
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft)[:: cfg.hop_size][:n_frames]
    spec = np.fft.rfft(frames * _window(cfg), axis=-1)  # (frames, n_fft // 2 + 1)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + MAGNITUDE_EPS)
    mel = mag @ mel_basis(cfg).astype(np.float64).T
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


class PromptMel:
    """The ``feat_extractor`` of one ``cosyvoice.yaml``, callable on a waveform at its sample rate."""

    def __init__(self, cfg: MelConfig | None = None):
        self.cfg = cfg or MelConfig()

    @classmethod
    def from_yaml(cls, path: str | Path) -> PromptMel:
        return cls(MelConfig.from_yaml(path))

    @property
    def sample_rate_hz(self) -> int:
        return self.cfg.sampling_rate

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return prompt_mel(audio, self.cfg)
