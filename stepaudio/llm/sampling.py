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


def apply_repetition_ban(logits: torch.Tensor, history: list[int], window: int, threshold: float,
                         columns: OutputColumns | None = None) -> None:
    if window <= 0 or len(history) < window:
        return
    recent = history[-window:]
    last = recent[-1]
    if recent.count(last) / window > threshold:
        col = last if columns is None else columns.column(last)
        if col is not None:  # an id outside the output columns cannot be drawn anyway
            logits[col] = float("-inf")


class OutputColumns:
    """The vocabulary ids a restricted head computes logits for: column j is id ``ids[j]`` (ascending)."""

    def __init__(self, ids):
        self.ids = torch.as_tensor(sorted({int(i) for i in ids}), dtype=torch.long)
        if self.ids.numel() == 0:
            raise ValueError("a restricted head needs at least one output id")
        self._column = {int(t): j for j, t in enumerate(self.ids.tolist())}

    def __len__(self) -> int:
        return self.ids.numel()

    def column(self, token_id: int) -> int | None:
        return self._column.get(token_id)

    def __contains__(self, token_id: int) -> bool:
        return token_id in self._column


def _top_p_keep(sorted_logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask over logits sorted in descending order: drop a token once the mass before it already
    exceeds top_p (the first is always kept)."""
    probs = torch.softmax(sorted_logits, dim=-1)
    return (probs.cumsum(-1) - probs) <= top_p


def sample(logits: torch.Tensor, params: SamplingParams, history: list[int], generator: torch.Generator | None,
           columns: OutputColumns | None = None) -> int:
    """Pick the next token from (V,) float32 logits."""
    return sample_rows(logits[None], [params], [history], [generator], columns)[0]


def _rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    # indexing with a Python list copies through a slow path (~5 ms for 16 x 74752)
    return x if len(rows) == x.shape[0] else x.index_select(0, torch.tensor(rows))


def _draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One index per row of (B, K) probabilities, row i drawn with ``generators[i]`` (None: torch's default).

    torch.multinomial(p, 1, generator=g) draws argmax(p / q), q exponential noise from g (its one-sample
    path): the same noise, row by row, then one argmax for the batch picks the very indices a multinomial
    per row picks, without a call per row. The noise is drawn where each generator lives (a request's
    seeded generator is a CPU one), so seeded draws are the same whether the logits are on a CPU or a GPU.
    """
    k = probs.shape[-1]
    noise = [torch.empty(k, dtype=probs.dtype, device=probs.device if g is None else g.device).exponential_(
        generator=g) for g in generators]
    return torch.argmax(probs / torch.stack([q.to(probs.device) for q in noise]), dim=-1)


def sample_rows(
    logits: torch.Tensor,  # (B, V)
    params: list[SamplingParams],
    histories: list[list[int]],
    generators: list[torch.Generator | None],
    columns: OutputColumns | None = None,  # logits cover these ids only (None: the whole vocabulary)
) -> list[int]:
    """Next tokens for a decode batch, one row per sequence (vocabulary ids).

    The distribution is the usual temperature -> top-k -> top-p -> softmax. With top-k on (the TTS and
    chat defaults), a row is sampled among its k candidates only: one batched top-k, then a softmax
    and a draw over k values instead of the whole vocabulary (74752 ids), which dominated decoding.
    """
    logits = logits.float().clone()
    for i, (p, h) in enumerate(zip(params, histories, strict=True)):
        apply_repetition_ban(logits[i], h, p.repetition_window, p.repetition_threshold, columns)
    out: list[int | None] = [None] * len(params)
    vocab = logits.shape[-1]
    greedy = [i for i, p in enumerate(params) if p.temperature == 0]
    if greedy:
        picks = torch.argmax(_rows(logits, greedy), dim=-1).tolist()
        for i, t in zip(greedy, picks, strict=True):
            out[i] = t
    topk = [i for i, p in enumerate(params) if p.temperature > 0 and 0 < p.top_k < vocab]
    if topk:
        k_max = max(params[i].top_k for i in topk)
        temps = torch.tensor([params[i].temperature for i in topk])[:, None]
        vals, idx = torch.topk(_rows(logits, topk), k_max, dim=-1)  # sorted, descending
        vals = vals / temps  # a positive temperature keeps the order: scale the k values only
        ks = torch.tensor([params[i].top_k for i in topk])[:, None]
        vals = vals.masked_fill(torch.arange(k_max)[None] >= ks, float("-inf"))
        for row, i in enumerate(topk):
            if params[i].top_p < 1.0:
                vals[row] = vals[row].masked_fill(~_top_p_keep(vals[row], params[i].top_p), float("-inf"))
        probs = torch.softmax(vals, dim=-1)
        picks = idx.gather(1, _draw(probs, [generators[i] for i in topk])[:, None]).reshape(-1).tolist()
        for i, t in zip(topk, picks, strict=True):
            out[i] = t
    for i, p in enumerate(params):  # top-k off: the whole vocabulary
        if out[i] is not None:
            continue
        row = logits[i] / p.temperature
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(row, descending=True)
            row[order[~_top_p_keep(sorted_logits, p.top_p)]] = float("-inf")
        out[i] = int(_draw(torch.softmax(row, dim=-1)[None], [generators[i]])[0])
    if columns is not None:
        return columns.ids[torch.tensor(out)].tolist()
    return out  # type: ignore[return-value]
