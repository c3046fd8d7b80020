"""Step-1 decoder (Step-Audio-Chat 130B and Step-Audio-TTS-3B), inference only, tensor-parallel ready.

Pre-norm blocks: RMSNorm (fp32) -> attention (bias-free q/k/v/o, grouped KV heads) -> residual ->
RMSNorm -> SwiGLU MLP -> residual; final norm; untied lm_head. No rotary or learned positions:
attention adds the sqrt-ALiBi bias -slope_h * sqrt(i - j) to the scaled scores.

Tensor parallelism (``tp_size`` ranks): q/k/v and gate/up are column-parallel (each rank holds whole
KV groups and the query heads that use them, and its slice of the ALiBi slopes), o and down are
row-parallel (an all-reduce after each), the embedding is replicated (one lookup, no collective;
it is 1/70 of the 130B model) and lm_head is split over the vocabulary (an all-gather of logits).

Attention is written over explicit absolute positions, so callers can pass cached keys from any
earlier computation of the same prefix: cached K/V depend on the tokens before them, never on the
batch they were computed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stepaudio.llm.config import Step1Config
from stepaudio.llm.sampling import OutputColumns


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Standard ALiBi slopes, including the interleaved extension for non-power-of-two head counts."""
    n = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-8.0 / n)
    slopes = [base**i for i in range(1, n + 1)]
    if n < n_heads:
        extra = 2.0 ** (-4.0 / n)
        slopes += [extra**k for k in range(1, 2 * (n_heads - n), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


@dataclass
class TensorParallel:
    rank: int = 0
    size: int = 1
    group: object | None = None  # a torch.distributed process group; None = the default group

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


@dataclass
class LayerCache:
    """Keys/values a layer attends to besides the new tokens (already gathered for the batch)."""

    k: torch.Tensor  # (B, G_local, T_past, D)
    v: torch.Tensor  # (B, G_local, T_past, D)

    def extend(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values to attend to: the past, then the new tokens' (B, G_local, T, D).
        (A cache may instead write the new ones into its own storage: see ``SlotKV.step``.)"""
        if not self.k.shape[2]:
            return k_new, v_new
        return torch.cat([self.k.to(k_new.dtype), k_new], dim=2), torch.cat([self.v.to(v_new.dtype), v_new], dim=2)


def attention_bias(q_pos: torch.Tensor, k_pos: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """(B, H, Tq, Tk) float32: -slope * sqrt(i - j) where 0 <= j <= i, -inf elsewhere.

    Positions < 0 mark padding (never attended to).
    """
    dist = q_pos[:, :, None] - k_pos[:, None, :]  # (B, Tq, Tk)
    allowed = (dist >= 0) & (k_pos[:, None, :] >= 0)
    bias = -slopes[None, :, None, None] * dist.clamp(min=0).float().sqrt()[:, None]
    return bias.masked_fill(~allowed[:, None], float("-inf"))


class Attention(nn.Module):
    def __init__(self, cfg: Step1Config, tp: TensorParallel):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        if cfg.num_attention_groups % tp.size:
            raise ValueError(f"{cfg.num_attention_groups} KV groups cannot be split over {tp.size} ranks")
        self.tp = tp
        self.head_dim = d
        self.n_groups = cfg.num_attention_groups // tp.size
        self.n_heads = cfg.num_attention_heads // tp.size
        self.q_proj = nn.Linear(h, self.n_heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.n_groups * d, bias=False)
        self.v_proj = nn.Linear(h, self.n_groups * d, bias=False)
        self.o_proj = nn.Linear(self.n_heads * d, h, bias=False)
        slopes = alibi_slopes(cfg.num_attention_heads)[tp.rank * self.n_heads : (tp.rank + 1) * self.n_heads]
        self.register_buffer("slopes", slopes, persistent=False)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, cache: LayerCache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        d = self.head_dim
        q = self.q_proj(x).view(b, t, self.n_heads, d).transpose(1, 2)  # (B, H, T, D)
        k_new = self.k_proj(x).view(b, t, self.n_groups, d).transpose(1, 2)  # (B, G, T, D)
        v_new = self.v_proj(x).view(b, t, self.n_groups, d).transpose(1, 2)
        k, v = (k_new, v_new) if cache is None else cache.extend(k_new, v_new)  # (B, G, Tk, D)
        # Head h uses group h // rep. Instead of copying K/V for every head, fold a group's heads into
        # the query rows: (B, G, rep * T, D) against (B, G, Tk, D), one matmul per group.
        rep = self.n_heads // self.n_groups
        tk = k.shape[2]
        qg = q.reshape(b, self.n_groups, rep * t, d)
        scores = torch.matmul(qg.float(), k.float().transpose(-1, -2)) / math.sqrt(d)  # (B, G, rep*T, Tk)
        scores = scores + bias.reshape(b, self.n_groups, rep * t, tk)  # bias (B, H, T, Tk) in the same order
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows of padding queries are all -inf
        out = torch.matmul(probs.to(v.dtype), v).reshape(b, self.n_heads, t, d)  # (B, H, T, D)
        out = self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * d))
        return self.tp.all_reduce(out), k_new, v_new


class MLP(nn.Module):
    def __init__(self, cfg: Step1Config, tp: TensorParallel):
        super().__init__()
        if cfg.intermediate_size % tp.size:
            raise ValueError(f"intermediate_size {cfg.intermediate_size} cannot be split over {tp.size} ranks")
        inter = cfg.intermediate_size // tp.size
        self.tp = tp
        self.gate_proj = nn.Linear(cfg.hidden_size, inter, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, inter, bias=False)
        self.down_proj = nn.Linear(inter, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Step1Config, tp: TensorParallel):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, tp)

    def forward(self, x, bias, cache):
        attn, k, v = self.self_attn(self.input_layernorm(x), bias, cache)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class Step1Model(nn.Module):
    def __init__(self, cfg: Step1Config, tp: TensorParallel):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, tp) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # (B, T, V) float32
    new_k: list[torch.Tensor]  # per layer (B, G_local, T, D)
    new_v: list[torch.Tensor]


class Step1ForCausalLM(nn.Module):
    def __init__(self, cfg: Step1Config, tp: TensorParallel | None = None):
        super().__init__()
        self.config = cfg
        self.tp = tp or TensorParallel()
        if cfg.vocab_size % self.tp.size:
            raise ValueError(f"vocab_size {cfg.vocab_size} cannot be split over {self.tp.size} ranks")
        self.model = Step1Model(cfg, self.tp)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size // self.tp.size, bias=False)
        self.output_columns: OutputColumns | None = None  # set by restrict_head: logits for these ids only

    def restrict_head(self, ids) -> OutputColumns:
        """Keeps only the ``lm_head`` rows of ``ids``: logits then have one column per kept id (ascending
        ids; ``output_columns`` maps them back), and sampling can only pick those ids.

        For the TTS LM, whose output the flow decoder reads as audio ids (65536 + 0..5119) ended by the
        stop id: the head is then 5121 rows instead of 74752, which on a small model is most of a
        decode step. The distribution over the kept ids is renormalised, which is the reference's
        whenever top-k picks only kept ids (a TTS LM puts next to no mass elsewhere).
        """
        if self.tp.size > 1:
            raise ValueError("a restricted head is not supported with tensor parallelism")
        if self.output_columns is not None:
            raise ValueError("the head is already restricted")
        columns = OutputColumns(ids)
        if int(columns.ids[0]) < 0 or int(columns.ids[-1]) >= self.config.vocab_size:
            raise ValueError(f"output ids must be in [0, {self.config.vocab_size}), got "
                             f"{int(columns.ids[0])}..{int(columns.ids[-1])}")
        w = self.lm_head.weight
        column_major = w.dim() == 2 and w.stride(0) == 1 and w.shape[1] > 1
        kept = w.data.index_select(0, columns.ids.to(w.device))
        w.data = kept.t().contiguous().t() if column_major else kept
        self.lm_head.out_features = len(columns)
        self.output_columns = columns
        return columns

    def column_major_head(self) -> None:
        """Stores lm_head's weight (V, H) column-major, (H, V) row-major underneath: the same values.

        On the CPU the decode batch is small (a TTS stream spends most of its life in token2wav, so
        ~3 sequences decode at once) and the head is most of a tiny model's step: a (B, H) x (H, V)
        product over row-major (H, V) storage takes 0.8 / 1.4 / 2.2 ms at B = 1 / 2 / 3 where the
        row-major (V, H) layout takes 2.5 / 3.4 / 5.0 ms (74752 x 64 fp32, one core); at B >= 4 the two
        are within ~10%. Logits can differ from the other layout in the last bits (another summation order).
        """
        w = self.lm_head.weight
        w.data = w.data.t().contiguous().t()

    @property
    def n_local_groups(self) -> int:
        return self.model.layers[0].self_attn.n_groups

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        positions: torch.Tensor,  # (B, T) absolute positions; < 0 marks padding
        caches: list[LayerCache] | None = None,
        cache_positions: torch.Tensor | None = None,  # (B, T_past); < 0 marks padding
        logits_for: str = "all",  # "all" or "last": the last non-padding token of each row
        key_positions: torch.Tensor | None = None,  # (B, Tk): of the keys the caches' extend() returns
    ) -> ForwardOutput:
        """``key_positions`` defaults to ``cache_positions`` then ``positions``, the order ``LayerCache.extend``
        returns keys in; caches that place the new keys elsewhere give their own."""
        x = self.model.embed_tokens(input_ids.clamp(min=0))
        k_pos = key_positions
        if k_pos is None:
            k_pos = positions if cache_positions is None else torch.cat([cache_positions, positions], dim=1)
        bias = attention_bias(positions, k_pos, self.model.layers[0].self_attn.slopes)
        new_k, new_v = [], []
        for i, layer in enumerate(self.model.layers):
            x, k, v = layer(x, bias, None if caches is None else caches[i])
            new_k.append(k)
            new_v.append(v)
        x = self.model.norm(x)
        if logits_for == "last":
            last = (positions >= 0).sum(dim=1) - 1  # (B,)
            x = x[torch.arange(x.shape[0]), last.clamp(min=0)][:, None]  # (B, 1, h)
        logits = self.tp.all_gather_last(self.lm_head(x).float())
        return ForwardOutput(logits, new_k, new_v)
