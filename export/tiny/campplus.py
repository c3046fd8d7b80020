"""A random-weight CAM++ speaker encoder in the interface of CosyVoice's ``campplus.onnx``.

The official file maps mean-normalised 80-bin Kaldi fbank ``input`` (B, T, 80) float32 to a 192-d
x-vector ``output`` (B, 192). This one has the same interface and the same family of layers, at a
tiny width (about 50k parameters instead of 7M; ``FULL_DIMS`` gives the published widths):

* FCM head: a 2-D convolution over (frequency, time), two residual 2-D blocks that halve the
  frequency axis, and a strided 2-D convolution; the (channels x frequency) planes are flattened
  into 1-D channels (80 bins -> 10 frequency rows).
* A TDNN layer (1-D convolution, kernel 5, stride 2: 50 frames/s).
* Two densely connected TDNN blocks; every layer is a bottleneck (BN-ReLU-1x1 conv, BN-ReLU) then a
  context-aware masking layer: a dilated local convolution multiplied by a sigmoid mask computed
  from the utterance mean plus 100-frame segment means. A transit layer (BN-ReLU-1x1 conv) halves
  the channels after each block.
* BN-ReLU, statistics pooling (mean and standard deviation over time), and a dense layer (1x1
  convolution plus non-affine BatchNorm) to 192 outputs.

Batch-norm statistics are random too (so the layers are not identities) and everything is seeded:
the same seed writes the same bytes. Exported with the TorchScript-based exporter, dynamic batch and
time axes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "output"
OPSET = 17
FEAT_DIM = 80
EMBEDDING_DIM = 192
SEGMENT_FRAMES = 100  # CAM++'s segment pooling length (frames of the block's input rate)


@dataclass(frozen=True)
class CamPlusDims:
    head_channels: int = 8  # FCM 2-D channels; 80 bins / 8 = 10 rows -> 80 1-D channels
    head_blocks: int = 1  # residual 2-D blocks per FCM stage (two stages)
    tdnn_channels: int = 32
    growth: int = 16
    bottleneck: int = 32
    reduction: int = 2  # of the masking branch's hidden width
    block_layers: tuple[int, ...] = (2, 2)
    block_dilations: tuple[int, ...] = (1, 2)
    kernel: int = 3


TINY_DIMS = CamPlusDims()
# The published CAM++ widths (about 7.2M parameters, ~28 MB as ONNX): for benchmarks only.
FULL_DIMS = CamPlusDims(
    head_channels=32, head_blocks=2, tdnn_channels=128, growth=32, bottleneck=128,
    block_layers=(12, 24, 16), block_dilations=(1, 2, 2),
)


class _ResBlock2d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class _FCM(nn.Module):
    """(B, F, T) -> (B, C * F / 8, T): 2-D front end over frequency and time."""

    def __init__(self, feat_dim: int, channels: int, blocks: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(*(_ResBlock2d(channels, channels, 2 if i == 0 else 1) for i in range(blocks)))
        self.layer2 = nn.Sequential(*(_ResBlock2d(channels, channels, 2 if i == 0 else 1) for i in range(blocks)))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        y = self.layer2(self.layer1(y))
        y = F.relu(self.bn2(self.conv2(y)))
        b, c, f, t = y.shape
        return y.reshape(b, c * f, t)


def _segment_means(x: torch.Tensor, seg: int) -> torch.Tensor:
    """Mean over consecutive ``seg``-frame segments (the last one may be shorter), broadcast back to
    every frame: (B, C, T) -> (B, C, T). Written with cumulative sums so the ONNX graph needs no
    ceil-mode pooling (whose partial-window divisor differs between runtimes)."""
    t = x.shape[-1]
    idx = torch.arange(t, device=x.device)
    start = torch.div(idx, seg, rounding_mode="floor") * seg
    end = torch.clamp(start + seg, max=t)
    csum = F.pad(torch.cumsum(x, dim=-1), (1, 0))
    total = csum.index_select(-1, end) - csum.index_select(-1, start)
    return total / (end - start).to(x.dtype)


class _CAMLayer(nn.Module):
    """Context-aware masking: a dilated local convolution gated by utterance and segment context."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, reduction: int) -> None:
        super().__init__()
        self.local = nn.Conv1d(cin, cout, kernel, padding=(kernel - 1) // 2 * dilation, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(cin, cin // reduction, 1)
        self.linear2 = nn.Conv1d(cin // reduction, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        context = x.mean(dim=-1, keepdim=True) + _segment_means(x, SEGMENT_FRAMES)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return y * mask


class _DenseTDNNLayer(nn.Module):
    def __init__(self, cin: int, dims: CamPlusDims, dilation: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm1d(cin)
        self.linear = nn.Conv1d(cin, dims.bottleneck, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(dims.bottleneck)
        self.cam = _CAMLayer(dims.bottleneck, dims.growth, dims.kernel, dilation, dims.reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(F.relu(self.bn1(x)))
        return torch.cat([x, self.cam(F.relu(self.bn2(y)))], dim=1)


class _Transit(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(cin)
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.relu(self.bn(x)))


class TinyCamPlus(nn.Module):
    """(B, T, 80) mean-normalised fbank -> (B, 192) embedding."""

    def __init__(self, dims: CamPlusDims = TINY_DIMS, feat_dim: int = FEAT_DIM, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.dims = dims
        self.head = _FCM(feat_dim, dims.head_channels, dims.head_blocks)
        self.tdnn = nn.Conv1d(self.head.out_channels, dims.tdnn_channels, 5, stride=2, padding=2, bias=False)
        self.tdnn_bn = nn.BatchNorm1d(dims.tdnn_channels)
        blocks: list[nn.Module] = []
        channels = dims.tdnn_channels
        for n_layers, dilation in zip(dims.block_layers, dims.block_dilations, strict=True):
            layers: list[nn.Module] = []
            for _ in range(n_layers):
                layers.append(_DenseTDNNLayer(channels, dims, dilation))
                channels += dims.growth
            blocks.append(nn.Sequential(*layers, _Transit(channels, channels // 2)))
            channels //= 2
        self.blocks = nn.Sequential(*blocks)
        self.out_bn = nn.BatchNorm1d(channels)
        self.dense = nn.Conv1d(2 * channels, embedding_dim, 1, bias=False)
        self.dense_bn = nn.BatchNorm1d(embedding_dim, affine=False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.head(feats.transpose(1, 2))
        x = F.relu(self.tdnn_bn(self.tdnn(x)))
        x = F.relu(self.out_bn(self.blocks(x)))
        stats = torch.cat([x.mean(dim=-1), x.std(dim=-1)], dim=1)  # unbiased std, as torch's default
        return self.dense_bn(self.dense(stats.unsqueeze(-1))).squeeze(-1)


def build_campplus(seed: int, dims: CamPlusDims = TINY_DIMS) -> TinyCamPlus:
    """Seeded random weights and batch-norm statistics, in eval mode; the global RNG is left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCamPlus(dims)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.normal_(0.0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    if m.affine:
                        m.weight.normal_(1.0, 0.1)
                        m.bias.normal_(0.0, 0.1)
            # Standardise the embedding over a few utterance-like inputs (per-utterance spectral
            # scales, mean-normalised), so different voices give visibly different embeddings.
            scales = 0.5 + 3.0 * torch.rand(6, 1, FEAT_DIM)
            calib = torch.randn(6, 200, FEAT_DIM) * scales
            calib = calib - calib.mean(dim=1, keepdim=True)
            model.eval()
            model.dense_bn.running_mean.zero_()
            model.dense_bn.running_var.fill_(1.0)
            emb = model(calib)
            std = emb.std(dim=0).clamp_min(1e-6)
            model.dense.weight.div_(std[:, None, None])
            model.dense_bn.running_mean.copy_(emb.mean(dim=0) / std)
            model.dense_bn.running_var.fill_(1.0 - model.dense_bn.eps)
    return model.eval()


def export_campplus(model: TinyCamPlus, frames: int = 237) -> bytes:
    """The ONNX bytes: input ``input`` (batch, frames, 80), output ``output`` (batch, 192)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            model,
            (torch.zeros(1, frames, FEAT_DIM),),
            buf,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 1: "frames"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return buf.getvalue()


def write_campplus(path: Path, seed: int, full_size: bool = False) -> Path:
    """Write ``campplus.onnx`` (the file itself, e.g. ``.../CosyVoice-300M-25Hz/campplus.onnx``);
    ``full_size`` uses the published CAM++ widths instead of the tiny ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(export_campplus(build_campplus(seed, FULL_DIMS if full_size else TINY_DIMS)))
    return path


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the campplus.onnx file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full-size", action="store_true", help="the published CAM++ widths (~28 MB)")
    args = ap.parse_args(argv)
    print(write_campplus(args.out, args.seed, args.full_size))


if __name__ == "__main__":
    main()
