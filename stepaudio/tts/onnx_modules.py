"""ONNX Runtime stand-ins for the token2wav networks exported by ``export/onnx_tts.py``.

* ``OnnxEstimator(path, threads)`` is called like ``ConditionalDecoder`` (x, mask, mu, t, spks, cond)
  and is an ``nn.Module`` so it can take the estimator's slot in ``ConditionalCFM``;
* ``OnnxHiftDecoder(path, threads)`` is called like ``HiFTGenerator.decode(mel, s_stft)``;
* ``use_onnx(flow, hift, onnx_dir)`` swaps both into loaded models (the rest stays PyTorch).

The ONNX graphs are float32: inputs are cast to float32 and outputs back to the input dtype.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

ESTIMATOR_FILE = "flow_estimator.onnx"
HIFT_DECODER_FILE = "hift_decoder.onnx"


def make_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


class OnnxEstimator(nn.Module):
    """Drop-in for ``ConditionalDecoder``: ``(x, mask, mu, t, spks, cond) -> velocity`` via ONNX Runtime."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = make_session(self.path, threads)
        self._names = [i.name for i in self.session.get_inputs()]

    def forward(self, x, mask, mu, t, spks=None, cond=None) -> torch.Tensor:
        if spks is None:
            spks = torch.zeros(x.size(0), x.size(1), dtype=x.dtype, device=x.device)
        if cond is None:
            cond = torch.zeros_like(x)
        feeds = dict(zip(self._names, (_np(v) for v in (x, mask, mu, t, spks, cond)), strict=True))
        (out,) = self.session.run(None, feeds)
        return torch.from_numpy(out).to(x.device, x.dtype)


class OnnxHiftDecoder:
    """Drop-in for ``HiFTGenerator.decode``: ``(mel, s_stft) -> (magnitude, phase)`` via ONNX Runtime."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = make_session(self.path, threads)
        self._names = [i.name for i in self.session.get_inputs()]

    def __call__(self, mel: torch.Tensor, s_stft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = dict(zip(self._names, (_np(mel), _np(s_stft)), strict=True))
        magnitude, phase = self.session.run(None, feeds)
        return (torch.from_numpy(magnitude).to(s_stft.device, s_stft.dtype),
                torch.from_numpy(phase).to(s_stft.device, s_stft.dtype))


def use_onnx(flow: nn.Module | None, hift: nn.Module | None, onnx_dir: str | Path,
             threads: int | None = None) -> None:
    """Replace ``flow.decoder.estimator`` and ``hift.decode`` (either model may be None) in place.

    ``del hift.decode`` restores the PyTorch decoder; the flow's PyTorch estimator is dropped.
    """
    onnx_dir = Path(onnx_dir)
    if flow is not None:
        flow.decoder.estimator = OnnxEstimator(onnx_dir / ESTIMATOR_FILE, threads)
    if hift is not None:
        # An instance attribute shadows the class's method; plain objects are not registered as submodules.
        hift.decode = OnnxHiftDecoder(onnx_dir / HIFT_DECODER_FILE, threads)
