"""ONNX export of the token2wav networks: the flow-matching estimator and HiFT's convolutional decoder.

* ``flow_condition.onnx``: ``ConditionalDecoder.condition(mu, spks, cond) -> (c_block1, c_res)``, the
  first ResNet block's input-convolution terms over the channels that stay fixed during an ODE solve;
  mu/cond (B, 80, T), spks (B, 80), outputs (B, C, T). Run once per solve.
* ``flow_estimator.onnx``: ``ConditionalDecoder.forward_conditioned(x, t, (c_block1, c_res)) -> velocity``
  (= ``forward(x, None, mu, t, spks, cond)``), x (B, 80, T), t (B,); run at every step. Batch and time
  are dynamic (the guided sampler runs batch 2: the conditioned and the zeroed row). Splitting the
  first convolutions out made a step ~8% faster. No mask input: synthesis runs batch 1 without
  padding, and the ~30 masking products per call were 13% of its time.
* ``hift_decoder.onnx``: ``HiFTGenerator.decode(mel, s_stft) -> (magnitude, phase)``, mel (B, 80, T),
  s_stft (B, n_fft + 2, F); the F0 predictor, the harmonic source, its STFT and the iSTFT stay in
  PyTorch (float64 phase sums and complex STFTs have no portable ONNX form).

Both use opset 17 and the TorchScript exporter; the bytes are the same for the same weights.

Some modules are exported in a form ONNX Runtime's CPU kernels run faster, equal to float32 rounding:
Mish (the estimator) as x * n / (n + 2) with n = e^x (e^x + 2), which is x * tanh(softplus(x)) (ORT's
Softplus kernel is scalar and was 18% of the estimator's time; the graph is ~20% faster); attention as
one product per head over channel slices with a constant scale (scaled_dot_product_attention exports
the head split as shape arithmetic and the scale as a runtime square root: ~100 small nodes, ~6% of a
step); and Snake's sin^2 (HiFT) as a product instead of Pow.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from stepaudio.tts.onnx_modules import CONDITION_FILE, ESTIMATOR_FILE, HIFT_DECODER_FILE

OPSET = 17
CONDITION_INPUTS = ("mu", "spks", "cond")
CONDITION_OUTPUTS = ("c_block1", "c_res")
ESTIMATOR_INPUTS = ("x", "t", *CONDITION_OUTPUTS)
HIFT_DECODER_INPUTS = ("mel", "s_stft")
HIFT_DECODER_OUTPUTS = ("magnitude", "phase")


class _ConditionWrapper(nn.Module):
    def __init__(self, estimator: nn.Module):
        super().__init__()
        self.estimator = estimator

    def forward(self, mu, spks, cond):
        return self.estimator.condition(mu, spks, cond)


class _EstimatorWrapper(nn.Module):
    """The estimator's step without padding, given the condition terms."""

    def __init__(self, estimator: nn.Module):
        super().__init__()
        self.estimator = estimator

    def forward(self, x, t, c_block1, c_res):
        return self.estimator.forward_conditioned(x, t, (c_block1, c_res))


class _SlicedHeadsAttention(nn.Module):
    """The estimator's attention for export: q, k, v split into heads by constant channel slices, q scaled by
    the constant 1 / sqrt(head_dim), one softmax(q_h k_h^T) v_h per head, heads joined on channels."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention
        self.heads = attention.heads
        self.head_dim = attention.to_q.out_features // attention.heads
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        a, d = self.attention, self.head_dim
        q = a.to_q(x) * self.scale
        k_t = a.to_k(x).transpose(1, 2)  # (B, C, T)
        v = a.to_v(x)
        heads = []
        for h in range(self.heads):
            s = slice(h * d, (h + 1) * d)
            heads.append(torch.matmul(torch.softmax(torch.matmul(q[..., s], k_t[:, s]), dim=-1), v[..., s]))
        return a.to_out[0](torch.cat(heads, dim=-1))


class _ExpMish(nn.Module):
    """Mish for export: tanh(softplus(x)) = ((1 + e^x)^2 - 1) / ((1 + e^x)^2 + 1) = n / (n + 2) with
    n = e^x (e^x + 2). x is clamped at 20 first (e^40 would overflow n); the ratio is 1.0 there in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.exp(torch.clamp(x, max=20.0))
        n = u * (u + 2.0)
        return x * (n / (n + 2.0))


class _MulSnake(nn.Module):
    """Snake for export: sin(a x)^2 as a product (ORT's Pow is slower than Mul)."""

    def __init__(self, snake: nn.Module):
        super().__init__()
        self.alpha = snake.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha[None, :, None]
        s = torch.sin(x * a)
        return x + (1.0 / (a + 1e-9)) * (s * s)


def _export_forms(module: nn.Module) -> nn.Module:
    """Replaces (in place) every Mish, Snake and estimator Attention below ``module`` by its export form."""
    from stepaudio.tts.flow.decoder import Attention
    from stepaudio.tts.hift import Snake

    for name, child in module.named_children():
        if isinstance(child, nn.Mish):
            setattr(module, name, _ExpMish())
        elif isinstance(child, Snake):
            setattr(module, name, _MulSnake(child))
        elif isinstance(child, Attention):
            setattr(module, name, _SlicedHeadsAttention(child))
        else:
            _export_forms(child)
    return module


class _HiftDecoderWrapper(nn.Module):
    def __init__(self, hift: nn.Module):
        super().__init__()
        self.hift = hift

    def forward(self, mel, s_stft):
        return self.hift.decode(mel, s_stft)


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # Strided slices (a mask's [:, :, ::2], in exports that take one) stay as Slice nodes; nothing to act on.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            module, args, buf, dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=list(input_names), output_names=list(output_names), dynamic_axes=dynamic_axes,
        )
    # One write of the finished bytes: a crashed export never leaves a half file behind.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path


def _export_estimator_copy(flow: nn.Module) -> nn.Module:
    return _export_forms(copy.deepcopy(flow.decoder.estimator).float().cpu().eval())


def _condition_args(est: nn.Module, frames: int) -> tuple[torch.Tensor, ...]:
    channels = est.final_proj.out_channels
    g = torch.Generator().manual_seed(0)
    b = 2
    return (torch.randn(b, channels, frames, generator=g), torch.randn(b, channels, generator=g),
            torch.randn(b, channels, frames, generator=g))


_SEQ = {0: "batch", 2: "time"}


def export_flow_condition(flow: nn.Module, path: str | Path, frames: int = 64) -> Path:
    """Export ``flow.decoder.estimator.condition`` (float32, on CPU) to ``path``."""
    est = _export_estimator_copy(flow)
    dynamic_axes = {"mu": _SEQ, "cond": _SEQ, "spks": {0: "batch"}, "c_block1": _SEQ, "c_res": _SEQ}
    return _export(_ConditionWrapper(est), _condition_args(est, frames), path, CONDITION_INPUTS,
                   CONDITION_OUTPUTS, dynamic_axes)


def export_flow_estimator(flow: nn.Module, path: str | Path, frames: int = 64) -> Path:
    """Export ``flow.decoder.estimator.forward_conditioned`` (float32, on CPU) to ``path``."""
    est = _export_estimator_copy(flow)
    g = torch.Generator().manual_seed(1)
    b, channels = 2, est.final_proj.out_channels
    with torch.no_grad():
        terms = est.condition(*_condition_args(est, frames))
    args = (torch.randn(b, channels, frames, generator=g), torch.rand(b, generator=g), *terms)
    dynamic_axes = {"x": _SEQ, "t": {0: "batch"}, "c_block1": _SEQ, "c_res": _SEQ, "velocity": _SEQ}
    return _export(_EstimatorWrapper(est), args, path, ESTIMATOR_INPUTS, ("velocity",), dynamic_axes)


def export_hift_decoder(hift: nn.Module, path: str | Path, frames: int = 32) -> Path:
    """Export ``hift.decode`` (weight norm folded into plain weights, float32, CPU) to ``path``."""
    model = copy.deepcopy(hift).float().cpu().eval()
    model.remove_weight_norm()
    _export_forms(model)
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(1, model.config.in_channels, frames, generator=g)
    n_spec = frames * model.upsample_factor // model.hop_len + 1
    s_stft = torch.randn(1, model.n_fft + 2, n_spec, generator=g)
    dynamic_axes = {
        "mel": {0: "batch", 2: "time"},
        "s_stft": {0: "batch", 2: "stft_frames"},
        "magnitude": {0: "batch", 2: "stft_frames"},
        "phase": {0: "batch", 2: "stft_frames"},
    }
    return _export(_HiftDecoderWrapper(model), (mel, s_stft), path, HIFT_DECODER_INPUTS, HIFT_DECODER_OUTPUTS,
                   dynamic_axes)


def export_cosyvoice_onnx(cosyvoice_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Load ``cosyvoice_dir`` (cosyvoice.yaml, flow.pt, hift.pt) and write the three ONNX files into ``out_dir``."""
    from stepaudio.tts.flow import load_flow
    from stepaudio.tts.hift import load_hift

    cosyvoice_dir, out_dir = Path(cosyvoice_dir), Path(out_dir)
    flow = load_flow(cosyvoice_dir)
    hift = load_hift(cosyvoice_dir)
    return {
        "flow_condition": export_flow_condition(flow, out_dir / CONDITION_FILE),
        "flow_estimator": export_flow_estimator(flow, out_dir / ESTIMATOR_FILE),
        "hift_decoder": export_hift_decoder(hift, out_dir / HIFT_DECODER_FILE),
    }


def measure_rtf(cosyvoice_dir: str | Path, onnx_dir: str | Path, threads: int = 1, repeats: int = 3,
                n_tokens: int = 60, n_prompt: int = 30, seed: int = 0) -> dict[str, float]:
    """Real-time factor (seconds of compute per second of audio) of flow + HiFT, PyTorch vs ONNX Runtime.

    Random tokens, prompt and speaker embedding; 10 flow steps; the best of ``repeats`` runs each.
    ``threads`` bounds both PyTorch's and ONNX Runtime's intra-op pools.
    """
    import time

    from stepaudio.tts.flow import load_flow
    from stepaudio.tts.hift import TorchNoise, load_hift
    from stepaudio.tts.onnx_modules import use_onnx

    cosyvoice_dir = Path(cosyvoice_dir)
    g = torch.Generator().manual_seed(seed)
    pt_flow, pt_hift = load_flow(cosyvoice_dir), load_hift(cosyvoice_dir, fold_weight_norm=True)
    ox_flow, ox_hift = load_flow(cosyvoice_dir), load_hift(cosyvoice_dir, fold_weight_norm=True)
    use_onnx(ox_flow, ox_hift, onnx_dir, threads=threads)
    vocab = pt_flow.vocab_size
    token = torch.randint(0, vocab, (1, n_tokens), generator=g)
    prompt_token = torch.randint(0, vocab, (1, n_prompt), generator=g)
    prompt_feat = torch.randn(1, pt_flow.mel_frames(n_prompt), pt_flow.output_size, generator=g)
    embedding = torch.randn(1, pt_flow.spk_embed_affine_layer.in_features, generator=g)
    sample_rate = pt_hift.config.sampling_rate

    def run(flow, hift) -> tuple[float, float]:
        best, seconds = float("inf"), 0.0
        for i in range(repeats + 1):  # the first run warms up
            t0 = time.perf_counter()
            mel = flow.inference(token, prompt_token, prompt_feat, embedding, generator=torch.Generator().manual_seed(i))
            wav = hift.inference(mel, TorchNoise(i)).wav
            elapsed = time.perf_counter() - t0
            if i:
                best = min(best, elapsed)
            seconds = wav.shape[-1] / sample_rate
        return best, seconds

    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pt_time, audio_s = run(pt_flow, pt_hift)
        ox_time, _ = run(ox_flow, ox_hift)
    finally:
        torch.set_num_threads(n)
    return {"audio_s": round(audio_s, 4), "pytorch_rtf": round(pt_time / audio_s, 5),
            "onnx_rtf": round(ox_time / audio_s, 5), "threads": threads}


if __name__ == "__main__":
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description="Export a CosyVoice folder to ONNX and time flow+HiFT.")
    parser.add_argument("cosyvoice_dir", type=Path)
    parser.add_argument("--out", type=Path, help="folder for the ONNX files (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = ns.out or Path(tmp)
        files = export_cosyvoice_onnx(ns.cosyvoice_dir, out)
        print(json.dumps({k: str(v) for k, v in files.items()}))
        print(json.dumps(measure_rtf(ns.cosyvoice_dir, out, threads=ns.threads, repeats=ns.repeats)))
