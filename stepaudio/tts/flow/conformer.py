"""Conformer text encoder of the CosyVoice flow (inference only, full context, no padding).

Configuration supported (the one the CosyVoice-300M family uses): ``input_layer: linear``
(Linear + LayerNorm, no subsampling), ``pos_enc_layer_type: rel_pos_espnet`` (ESPnet's
relative sinusoidal encoding over positions T-1 .. -(T-1)) and ``selfattention_layer_type:
rel_selfattn`` (Transformer-XL style attention with the two learned biases u and v). The
optional macaron feed-forward and convolution module are built when the config asks for them.

Submodule names follow the official state_dict (``embed.out.0``, ``encoders.N.self_attn.linear_q``,
``encoders.N.norm_mha``, ...), so a checkpoint loads with ``strict=True``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_ACTIVATIONS = {
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "hardtanh": nn.Hardtanh,
    "selu": nn.SELU,
}


def make_activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation_type {name!r} (known: {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]()


def relative_position_encoding(length: int, d_model: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Sinusoids for relative positions T-1, T-2, ..., -(T-1): shape (1, 2T-1, d_model).

    Computed in float32 (as the reference does) and only then cast, so a bf16 model sees the
    same rounded table.
    """
    pos = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)[:, None]
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model)
    )
    pe = torch.zeros(2 * length - 1, d_model, dtype=torch.float32, device=device)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)
    return pe.unsqueeze(0).to(dtype)


class LinearInput(nn.Module):
    """``input_layer: linear``: Linear + LayerNorm, then x * sqrt(d) and the relative table."""

    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))
        self.xscale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.out(x) * self.xscale  # (B, T, D)
        pos_emb = relative_position_encoding(x.size(1), x.size(2), x.dtype, x.device)  # (1, 2T-1, D)
        return x, pos_emb


class RelPositionSelfAttention(nn.Module):
    def __init__(self, n_head: int, n_feat: int, key_bias: bool = True):
        super().__init__()
        if n_feat % n_head:
            raise ValueError(f"attention dim {n_feat} is not a multiple of {n_head} heads")
        self.h, self.d_k = n_head, n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_head, self.d_k))  # content bias
        self.pos_bias_v = nn.Parameter(torch.zeros(n_head, self.d_k))  # position bias

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, H, d_k)
        return x.view(x.size(0), -1, self.h, self.d_k)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self._heads(self.linear_q(x))  # (B, T, H, d_k)
        k = self._heads(self.linear_k(x)).transpose(1, 2)  # (B, H, T, d_k)
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        p = self._heads(self.linear_pos(pos_emb)).transpose(1, 2)  # (1, H, 2T-1, d_k)

        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))  # (B, H, T, T)
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))  # (B, H, T, 2T-1)
        # Column c of `position` is relative offset (T-1-c); query i, key j needs offset i-j,
        # i.e. column T-1-i+j.
        ar = torch.arange(t, device=x.device)
        idx = (t - 1) - ar[:, None] + ar[None, :]  # (T, T)
        position = position.gather(-1, idx.expand(b, self.h, t, t))

        scores = (content + position) / math.sqrt(self.d_k)
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, H, T, d_k)
        return self.linear_out(ctx.transpose(1, 2).reshape(b, t, self.h * self.d_k))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.activation = make_activation(activation)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, norm, activation, pointwise conv (x: (B, T, D))."""

    def __init__(self, channels: int, kernel_size: int, activation: str, norm: str, causal: bool):
        super().__init__()
        if norm not in ("batch_norm", "layer_norm"):
            raise ValueError(f"unsupported cnn_module_norm {norm!r}")
        if not causal and kernel_size % 2 == 0:
            raise ValueError("a non-causal conformer convolution needs an odd kernel")
        self.left_pad = kernel_size - 1 if causal else 0
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1d(
            channels, channels, kernel_size, padding=0 if causal else (kernel_size - 1) // 2, groups=channels
        )
        self.use_layer_norm = norm == "layer_norm"
        self.norm = nn.LayerNorm(channels) if self.use_layer_norm else nn.BatchNorm1d(channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1)
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, D, T)
        if self.left_pad:
            x = nn.functional.pad(x, (self.left_pad, 0))
        x = nn.functional.glu(self.pointwise_conv1(x), dim=1)
        x = self.depthwise_conv(x)
        if self.use_layer_norm:
            x = self.activation(self.norm(x.transpose(1, 2))).transpose(1, 2)
        else:
            x = self.activation(self.norm(x))
        return self.pointwise_conv2(x).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, size: int, heads: int, linear_units: int, activation: str, normalize_before: bool,
                 macaron_style: bool, conv: ConvolutionModule | None, key_bias: bool):
        super().__init__()
        self.self_attn = RelPositionSelfAttention(heads, size, key_bias)
        self.feed_forward = FeedForward(size, linear_units, activation)
        self.feed_forward_macaron = FeedForward(size, linear_units, activation) if macaron_style else None
        self.conv_module = conv
        self.norm_ff = nn.LayerNorm(size, eps=1e-5)
        self.norm_mha = nn.LayerNorm(size, eps=1e-5)
        if macaron_style:
            self.norm_ff_macaron = nn.LayerNorm(size, eps=1e-5)
        if conv is not None:
            self.norm_conv = nn.LayerNorm(size, eps=1e-5)
            self.norm_final = nn.LayerNorm(size, eps=1e-5)
        # Macaron splits the feed-forward in two halves around the attention.
        self.ff_scale = 0.5 if macaron_style else 1.0
        self.pre_norm = normalize_before

    def _residual(self, x: torch.Tensor, norm: nn.Module, fn, scale: float = 1.0) -> torch.Tensor:
        if self.pre_norm:
            return x + scale * fn(norm(x))
        return norm(x + scale * fn(x))

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        if self.feed_forward_macaron is not None:
            x = self._residual(x, self.norm_ff_macaron, self.feed_forward_macaron, self.ff_scale)
        x = self._residual(x, self.norm_mha, lambda h: self.self_attn(h, pos_emb))
        if self.conv_module is not None:
            x = self._residual(x, self.norm_conv, self.conv_module)
        x = self._residual(x, self.norm_ff, self.feed_forward, self.ff_scale)
        if self.conv_module is not None:
            x = self.norm_final(x)
        return x


class ConformerEncoder(nn.Module):
    """(B, T, input_size) -> (B, T, output_size); every position attends to every other."""

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        input_layer: str = "linear",
        pos_enc_layer_type: str = "rel_pos_espnet",
        selfattention_layer_type: str = "rel_selfattn",
        normalize_before: bool = True,
        macaron_style: bool = True,
        use_cnn_module: bool = True,
        cnn_module_kernel: int = 15,
        cnn_module_norm: str = "batch_norm",
        causal: bool = False,
        activation_type: str = "swish",
        key_bias: bool = True,
        static_chunk_size: int = 0,
        use_dynamic_chunk: bool = False,
        global_cmvn: object = None,
        **_training_only,  # dropout rates, gradient checkpointing, ...: no effect at inference
    ):
        super().__init__()
        if input_layer != "linear":
            raise ValueError(f"unsupported input_layer {input_layer!r} (only 'linear')")
        if pos_enc_layer_type != "rel_pos_espnet":
            raise ValueError(f"unsupported pos_enc_layer_type {pos_enc_layer_type!r} (only 'rel_pos_espnet')")
        if selfattention_layer_type != "rel_selfattn":
            raise ValueError(f"unsupported selfattention_layer_type {selfattention_layer_type!r}")
        if static_chunk_size or use_dynamic_chunk or global_cmvn is not None:
            raise ValueError("chunked attention masks and global CMVN are not supported (full context only)")
        self.embed = LinearInput(input_size, output_size)
        self.encoders = nn.ModuleList(
            ConformerLayer(
                output_size, attention_heads, linear_units, activation_type, normalize_before, macaron_style,
                ConvolutionModule(output_size, cnn_module_kernel, activation_type, cnn_module_norm, causal)
                if use_cnn_module else None,
                key_bias,
            )
            for _ in range(num_blocks)
        )
        self.after_norm = nn.LayerNorm(output_size, eps=1e-5)
        self.normalize_before = normalize_before
        self._output_size = output_size

    def output_size(self) -> int:
        return self._output_size

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        xs, pos_emb = self.embed(xs)
        for layer in self.encoders:
            xs = layer(xs, pos_emb)
        # With pre-norm the residual stream is never normalised inside the layers.
        return self.after_norm(xs) if self.normalize_before else xs
