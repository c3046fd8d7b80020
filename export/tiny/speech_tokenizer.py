"""A random-weight stand-in for CosyVoice's 25 Hz speech tokenizer v1 (``speech_tokenizer_v1.onnx``).

Interface of the official ONNX file:

* input ``feats`` float32 (B, 128, T): Whisper-style log-mel frames at 100 frames/s;
* input ``feats_length`` int32 (B,): valid frames per row;
* output ``indices`` int64 (B, ceil(T/4)): codes 0..4095 at 25 tokens/s.

The network belongs to the same family as the real one: a Whisper-style audio encoder whose two
convolutions both have stride 2 (so 100 -> 25 frames/s), sinusoidal positions, pre-norm transformer
blocks and a final LayerNorm, followed by a nearest-neighbour (L2) vector quantiser over 4096 codes.
The tiny size projects to a small codebook dimension first; the full size quantises the encoder
output directly (1280-d), as the official model does.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

INPUT_NAMES = ("feats", "feats_length")
OUTPUT_NAMES = ("indices",)
OPSET = 17


@dataclass(frozen=True)
class SpeechTokenizerDims:
    n_mels: int = 128
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 2
    d_ffn: int = 128
    n_ctx: int = 1500  # positional table length (tokens): 60 s at 25 Hz
    codebook_size: int = 4096
    codebook_dim: int | None = 8  # None: quantise the d_model-dim encoder output directly


TINY_DIMS = SpeechTokenizerDims()
# CosyVoice-300M-25Hz speech_tokenizer_v1: 6 layers, 1280-d, 20 heads, 4096 x 1280 codebook.
FULL_DIMS = SpeechTokenizerDims(d_model=1280, n_heads=20, n_layers=6, d_ffn=5120, codebook_dim=None)


def sinusoid_table(length: int, channels: int) -> torch.Tensor:
    """(length, channels) table: sines in the first half of the channels, cosines in the second."""
    half = channels // 2
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
    angle = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1).to(torch.float32)


class _SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d // h)) + key_bias
        y = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(d)
        self.attn = _SelfAttention(d, heads)
        self.mlp_ln = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_bias)
        return x + self.mlp(self.mlp_ln(x))


class SpeechTokenizer(nn.Module):
    """Whisper-style encoder + L2 vector quantiser, with the official ONNX interface."""

    def __init__(self, dims: SpeechTokenizerDims = TINY_DIMS) -> None:
        super().__init__()
        self.dims = dims
        d = dims.d_model
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoid_table(dims.n_ctx, d))
        self.blocks = nn.ModuleList(_Block(d, dims.n_heads, dims.d_ffn) for _ in range(dims.n_layers))
        self.ln_post = nn.LayerNorm(d)
        cb_dim = d if dims.codebook_dim is None else dims.codebook_dim
        self.project = None if dims.codebook_dim is None else nn.Linear(d, cb_dim)
        # Codebook rows: random directions, all of norm sqrt(dim).
        codebook = torch.randn(dims.codebook_size, cb_dim)
        codebook = codebook / codebook.norm(dim=1, keepdim=True) * math.sqrt(cb_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("codebook_sqnorm", (codebook * codebook).sum(dim=1))

    @staticmethod
    def _mask(lengths: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
        steps = torch.arange(t, device=lengths.device)
        return (steps[None, :] < lengths[:, None]).to(dtype)

    def embed(self, feats: torch.Tensor, feats_length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output before the quantiser: (B, ceil(T/4), codebook dim) and the token mask."""
        lengths = feats_length.to(torch.int64)
        x = feats * self._mask(lengths, feats.shape[2], feats.dtype)[:, None, :]
        x = F.gelu(self.conv1(x))
        lengths = torch.div(lengths + 1, 2, rounding_mode="floor")  # ceil(L/2)
        x = x * self._mask(lengths, x.shape[2], x.dtype)[:, None, :]
        x = F.gelu(self.conv2(x))
        lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
        mask = self._mask(lengths, x.shape[2], x.dtype)  # (B, T')
        x = x * mask[:, None, :]

        x = x.transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]]
        key_bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_bias)
        x = self.ln_post(x)
        if self.project is not None:
            x = self.project(x)
        return x, mask

    def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
        x, _ = self.embed(feats, feats_length)
        # argmin_c |x - c|^2 = argmin_c (|c|^2 - 2 x.c); |x|^2 is the same for every code.
        dist = self.codebook_sqnorm - 2.0 * torch.matmul(x, self.codebook.t())
        return torch.argmin(dist, dim=-1)

    @torch.no_grad()
    def standardise_output(self, feats: torch.Tensor, feats_length: torch.Tensor) -> None:
        """Fold a per-dimension standardisation, measured on ``feats``, into the last affine layer.

        Random weights give encoder outputs that sit in one corner of the codebook's space; after this
        the quantiser input has zero mean and unit variance per dimension on speech-like input, so
        the codes spread over the codebook.
        """
        x, mask = self.embed(feats, feats_length)
        valid = x[mask.bool()].double()
        mean, std = valid.mean(dim=0), valid.std(dim=0).clamp_min(1e-6)
        last = self.project if self.project is not None else self.ln_post
        w, b = last.weight.double(), last.bias.double()
        scale = (1.0 / std).unsqueeze(1) if w.ndim == 2 else 1.0 / std
        last.weight.copy_((w * scale).float())
        last.bias.copy_(((b - mean) / std).float())


def build_speech_tokenizer(seed: int, dims: SpeechTokenizerDims, calib_feats: np.ndarray) -> SpeechTokenizer:
    """Seeded random module, standardised on ``calib_feats`` (128, T) log-mel frames."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SpeechTokenizer(dims).eval()
    feats = torch.from_numpy(np.ascontiguousarray(calib_feats, dtype=np.float32))[None]
    model.standardise_output(feats, torch.tensor([feats.shape[2]], dtype=torch.int32))
    return model


def export_onnx(model: SpeechTokenizer, path: Path) -> None:
    """Export with the TorchScript-based exporter (no onnxscript needed); dynamic batch and time."""
    t = 64
    args = (torch.zeros(1, model.dims.n_mels, t), torch.tensor([t], dtype=torch.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                "feats": {0: "batch", 2: "frames"},
                "feats_length": {0: "batch"},
                "indices": {0: "batch", 1: "tokens"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
        )


def whisper_like_log_mel(wav: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """(n_mels, T) log-mel in Whisper's value range: 16 kHz, 400-point Hann STFT, hop 160, log10,
    floor at (max - 8), then (x + 4) / 4.  The mel filters are plain triangular HTK-scale filters:
    close enough to calibrate the random model, not a replacement for Whisper's features."""
    n_fft, hop, sr = 400, 160, 16000
    x = torch.from_numpy(np.asarray(wav, dtype=np.float32))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=True, return_complex=True)
    power = spec.abs()[:, :-1] ** 2  # (201, T)

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges_mel = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sr / 2)), n_mels + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    tri *= 2.0 / (hi - lo)  # equal-area filters
    mel = torch.from_numpy(tri.astype(np.float32)) @ power
    log = torch.clamp(mel, min=1e-10).log10()
    log = torch.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).numpy()
