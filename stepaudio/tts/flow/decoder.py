"""The flow-matching estimator: a 1-D U-Net with transformer blocks (``ConditionalDecoder``).

It predicts the velocity field v(x_t, t | mu, spks, cond). Input channels are the stacked
[x, mu, spks broadcast over time, cond] (4 x 80 = 320 for the 80-bin mel). Layout per level:
ResNet block (time-conditioned) -> n transformer blocks -> down/up-sampling (a plain k3 conv
at the last level). Skip connections join down level i with up level (L-1-i).

Module names match the official state_dict (``down_blocks.0.0.block1.block.0``,
``down_blocks.0.1.0.attn1.to_q``, ``up_blocks.0.2.conv``, ``time_mlp.linear_1``, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t (B,) in [0, 1] -> (B, dim) = [sin(1000 t f), cos(1000 t f)], f geometric from 1 to 1e-4.

    ``1000 * t`` is rounded in t's dtype first, then promoted to float32 by the frequencies,
    the order the reference uses (it matters for bf16).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    arg = (1000 * t)[:, None] * freqs[None, :]
    return torch.cat([arg.sin(), arg.cos()], dim=-1).to(t.dtype)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Block1D(nn.Module):
    """Conv1d k3 -> GroupNorm(8) -> Mish, on masked input, masked output (mask None: no padding)."""

    def __init__(self, dim: int, dim_out: int, groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return _masked(self.block(_masked(x, mask)), mask)


class ResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int = 8):
        super().__init__()
        # index 0 is a Mish (no weights): the Linear is "mlp.1" in the checkpoint.
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = Block1D(dim, dim_out, groups)
        self.block2 = Block1D(dim_out, dim_out, groups)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(t_emb).unsqueeze(-1)  # time shifts every channel
        h = self.block2(h, mask)
        return h + self.res_conv(_masked(x, mask))

    # The two input convolutions are linear in their input channels: over stacked [x; c],
    # conv(W, [x; c]) + b = conv(W_x, x) + (conv(W_c, c) + b). When c is fixed across calls (the
    # estimator's mu / spks / cond during one ODE solve), its terms are computed once.
    def input_terms(self, c: torch.Tensor, n_x: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, dim_out, T) each: block1's k3 conv and res_conv over input channels n_x.. (= c), biases included."""
        conv = self.block1.block[0]
        return (F.conv1d(c, conv.weight[:, n_x:], conv.bias, padding=conv.padding),
                F.conv1d(c, self.res_conv.weight[:, n_x:], self.res_conv.bias))

    def forward_split(self, x: torch.Tensor, terms: tuple[torch.Tensor, torch.Tensor], t_emb: torch.Tensor) -> torch.Tensor:
        """``forward`` (no padding) on [x; c], given ``input_terms(c, x.size(1))``."""
        conv, norm, act = self.block1.block
        n_x = x.size(1)
        h = act(norm(F.conv1d(x, conv.weight[:, :n_x], None, padding=conv.padding) + terms[0]))
        h = self.block2(h + self.mlp(t_emb).unsqueeze(-1), None)
        return h + F.conv1d(x, self.res_conv.weight[:, :n_x]) + terms[1]


class Downsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)  # T -> ceil(T / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)  # T -> 2T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Attention(nn.Module):
    """Multi-head self-attention: q/k/v without bias, output projection with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # "to_out.0" in the checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, -1).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, head_dim), scale 1/sqrt(head_dim)
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, -1))


class GELUProj(nn.Module):
    """Linear then GELU (``gelu``, ``gelu-approximate``) or gated GELU (``geglu``)."""

    def __init__(self, dim: int, inner: int, kind: str):
        super().__init__()
        self.gated = kind == "geglu"
        self.approximate = "tanh" if kind == "gelu-approximate" else "none"
        self.proj = nn.Linear(dim, inner * 2 if self.gated else inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if self.gated:
            x, gate = x.chunk(2, dim=-1)
            return x * F.gelu(gate)
        return F.gelu(x, approximate=self.approximate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, act_fn: str, mult: int = 4):
        super().__init__()
        if act_fn not in ("gelu", "gelu-approximate", "geglu"):
            raise ValueError(f"unsupported estimator act_fn {act_fn!r} (gelu, gelu-approximate, geglu)")
        # Index 1 (dropout) has no weights: the checkpoint names net.0.proj and net.2.
        self.net = nn.ModuleList([GELUProj(dim, dim * mult, act_fn), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Pre-norm self-attention and feed-forward over time (x: (B, T, C))."""

    def __init__(self, dim: int, heads: int, head_dim: int, act_fn: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)  # "norm3": the reference's block reserves norm2 for cross-attention
        self.ff = FeedForward(dim, act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        return self.ff(self.norm3(x)) + x


def _transformers(n: int, dim: int, heads: int, head_dim: int, act_fn: str) -> nn.ModuleList:
    return nn.ModuleList(TransformerBlock(dim, heads, head_dim, act_fn) for _ in range(n))


def _run_transformers(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    x = x.transpose(1, 2).contiguous()  # (B, C, T) -> (B, T, C)
    for block in blocks:
        x = block(x)
    return x.transpose(1, 2).contiguous()


class ConditionalDecoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels=(256, 256),
        attention_head_dim: int = 64,
        n_blocks: int = 1,
        num_mid_blocks: int = 2,
        num_heads: int = 4,
        act_fn: str = "snake",
        dropout: float = 0.0,  # training only
    ):
        super().__init__()
        channels = tuple(channels)
        self.in_channels = in_channels
        time_dim = channels[0] * 4
        self.time_mlp = TimestepEmbedding(in_channels, time_dim)

        def level(dim_in: int, dim_out: int, resample: nn.Module) -> nn.ModuleList:
            return nn.ModuleList([
                ResnetBlock1D(dim_in, dim_out, time_dim),
                _transformers(n_blocks, dim_out, num_heads, attention_head_dim, act_fn),
                resample,
            ])

        # Down path: every level but the last halves the time axis.
        self.down_blocks = nn.ModuleList()
        dim_out = in_channels
        for i, ch in enumerate(channels):
            dim_in, dim_out = dim_out, ch
            last = i == len(channels) - 1
            self.down_blocks.append(
                level(dim_in, dim_out, nn.Conv1d(ch, ch, 3, padding=1) if last else Downsample1D(ch))
            )

        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([
                ResnetBlock1D(channels[-1], channels[-1], time_dim),
                _transformers(n_blocks, channels[-1], num_heads, attention_head_dim, act_fn),
            ])
            for _ in range(num_mid_blocks)
        )

        # Up path: input = previous output concatenated with the skip (hence 2x channels).
        up = (*channels[::-1], channels[0])
        self.up_blocks = nn.ModuleList()
        for i in range(len(up) - 1):
            ch = up[i + 1]
            last = i == len(up) - 2
            self.up_blocks.append(
                level(up[i] * 2, ch, nn.Conv1d(ch, ch, 3, padding=1) if last else Upsample1D(ch))
            )
        self.final_block = Block1D(up[-1], up[-1])
        self.final_proj = nn.Conv1d(up[-1], out_channels, 1)

    def forward(self, x, mask, mu, t, spks=None, cond=None) -> torch.Tensor:
        """x, mu, cond (B, 80, T); mask (B, 1, T); t (B,); spks (B, 80) -> velocity (B, 80, T).

        ``mask`` None means no padding (every frame valid): the same result as all ones, without the
        masking products (there are about 30 per call).
        """
        dtype = self.final_proj.weight.dtype
        t_emb = self._time_embedding(t)
        parts = [x, mu]
        if spks is not None:
            parts.append(spks[:, :, None].expand(-1, -1, x.size(-1)))
        if cond is not None:
            parts.append(cond)
        # Stacked on channels; run in the weights' dtype (cond may arrive in float32).
        h = torch.cat([p.to(dtype) for p in parts], dim=1)
        mask = None if mask is None else mask.to(dtype)
        return self._after_first_block(self.down_blocks[0][0](h, mask, t_emb), mask, t_emb)

    def condition(self, mu, spks, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``forward`` computes from (mu, spks, cond) alone, for ``forward_conditioned``: the first ResNet
        block's input-convolution terms over those channels (see ``ResnetBlock1D.input_terms``)."""
        dtype = self.final_proj.weight.dtype
        c = torch.cat([mu.to(dtype), spks[:, :, None].expand(-1, -1, mu.size(-1)).to(dtype), cond.to(dtype)], dim=1)
        return self.down_blocks[0][0].input_terms(c, self.final_proj.out_channels)

    def forward_conditioned(self, x, t, terms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``forward(x, None, mu, t, spks, cond)`` given ``terms = condition(mu, spks, cond)``: the same
        velocity up to float rounding, with the (mu, spks, cond) channels' convolutions done once per ODE
        solve instead of at every step (3/4 of the first block's input channels)."""
        t_emb = self._time_embedding(t)
        h = self.down_blocks[0][0].forward_split(x.to(self.final_proj.weight.dtype), terms, t_emb)
        return self._after_first_block(h, None, t_emb)

    def _time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.final_proj.weight.dtype
        return self.time_mlp(timestep_embedding(t.to(dtype), self.in_channels))  # (B, 4*channels[0])

    def _after_first_block(self, h: torch.Tensor, mask: torch.Tensor | None, t_emb: torch.Tensor) -> torch.Tensor:
        """The U-Net from the first ResNet block's output on."""
        skips, masks = [], [mask]
        for level, (resnet, blocks, downsample) in enumerate(self.down_blocks):
            m = masks[-1]
            if level:
                h = resnet(h, m, t_emb)
            h = _run_transformers(blocks, h)
            skips.append(h)
            h = downsample(_masked(h, m))
            masks.append(None if m is None else m[:, :, ::2])
        masks.pop()  # the last level does not downsample

        m = masks[-1]
        for resnet, blocks in self.mid_blocks:
            h = _run_transformers(blocks, resnet(h, m, t_emb))

        for resnet, blocks, upsample in self.up_blocks:
            m, skip = masks.pop(), skips.pop()
            # Upsampling may overshoot an odd length by one frame: crop to the skip.
            h = torch.cat([h[:, :, : skip.size(-1)], skip], dim=1)
            h = _run_transformers(blocks, resnet(h, m, t_emb))
            h = upsample(_masked(h, m))
        h = self.final_block(h, m)
        return _masked(self.final_proj(_masked(h, m)), mask)
