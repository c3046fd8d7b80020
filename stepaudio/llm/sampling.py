"""Sampling: greedy, temperature, top-k, top-p, per-request seed, and the reference TTS
repetition-aware processor (ban the last token for one step when it fills > threshold of the
last ``window`` tokens, prompt included, as the reference's logits processor sees them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

EOT_ID = 3


class SamplingError(ValueError):
    """Invalid sampling parameters; the message names the field."""


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 256
    stop_ids: tuple[int, ...] = (EOT_ID,)
    repetition_window: int = 0  # 0 = off; the TTS LM uses 10
    repetition_threshold: float = 0.1
    logprobs: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> SamplingParams:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0 or not math.isfinite(self.top_p):
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.repetition_window < 0 or not 0.0 <= self.repetition_threshold < 1.0:
            raise SamplingError("repetition_window must be >= 0 and repetition_threshold in [0, 1)")
        return self

    @classmethod
    def for_tts(cls, **kw) -> SamplingParams:
        """The reference's TTS decoding: temperature 0.7, HF's default top_k 50, repetition window 10."""
        base = {"temperature": 0.7, "top_k": 50, "top_p": 1.0, "repetition_window": 10, "max_new_tokens": 4096}
        return cls(**{**base, **kw})

    @classmethod
    def for_chat(cls, **kw) -> SamplingParams:
        """The reference's chat decoding: temperature 0.7, top_p 0.9, HF's default top_k 50."""
        base = {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "max_new_tokens": 2048}
        return cls(**{**base, **kw})


def apply_repetition_ban(logits: torch.Tensor, history: list[int], window: int, threshold: float) -> None:
    if window <= 0 or len(history) < window:
        return
    recent = history[-window:]
    last = recent[-1]
    if recent.count(last) / window > threshold:
        logits[last] = float("-inf")


def sample(logits: torch.Tensor, params: SamplingParams, history: list[int], generator: torch.Generator | None) -> int:
    """Pick the next token from (V,) float32 logits."""
    logits = logits.float().clone()
    apply_repetition_ban(logits, history, params.repetition_window, params.repetition_threshold)
    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop tokens once the mass before them already exceeds top_p (always keep the first)
        drop = (cum - torch.softmax(sorted_logits, dim=-1)) > params.top_p
        logits[order[drop]] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
