"""ONNX Runtime stand-ins for the token2wav networks exported by ``export/onnx_tts.py``.

* ``OnnxEstimator(path, threads)`` is called like ``ConditionalDecoder`` (x, mask, mu, t, spks, cond)
  (mask None or all ones) and is an ``nn.Module`` so it can take the estimator's slot in ``ConditionalCFM``.
  Current exports come as two graphs: ``flow_condition.onnx`` (mu, spks, cond -> the first block's
  condition terms), run once per ODE solve, and ``flow_estimator.onnx`` (x, t, terms -> velocity), run
  at every step;
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
CONDITION_FILE = "flow_condition.onnx"
HIFT_DECODER_FILE = "hift_decoder.onnx"


def make_session(path: str | Path, threads: int | None = 1):
    """A CPU session with ``threads`` intra-op threads (None: ONNX Runtime's default, one per core).

    Pool threads never spin waiting for work: on a shared box (many streams and models on a few cores)
    a spinning pool burns about as much CPU as the kernels themselves (measured: 2 threads with
    spinning cost 2.2x the CPU of 1 thread for the same estimator call, 1.2x without).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


class OnnxEstimator(nn.Module):
    """Drop-in for ``ConditionalDecoder``: ``(x, mask, mu, t, spks, cond) -> velocity`` via ONNX Runtime.

    Current exports have no ``mask`` input (they assume no padding, as batch-1 synthesis has): a mask
    passed to them must be None or all ones. An estimator graph that takes the condition terms reads
    them from ``flow_condition.onnx`` beside it, computed once for as long as the same (mu, spks, cond)
    tensors come back (a solve passes the same ones at every step). Older exports (mu / spks / cond
    inputs, with or without ``mask``) still load.
    """

    def __init__(self, path: str | Path, threads: int | None = 1):
        super().__init__()
        self.path = Path(path)
        self.session = make_session(self.path, threads)
        self._names = [i.name for i in self.session.get_inputs()]
        self.takes_mask = "mask" in self._names
        self.condition_session = None
        if "c_block1" in self._names:
            self.condition_session = make_session(self.path.with_name(CONDITION_FILE), threads)
        self._conditioned: tuple | None = None  # (mu, spks, cond, their versions, terms): the last solve's
        self.condition_runs = 0

    def _terms(self, mu, spks, cond) -> dict[str, np.ndarray]:
        given = (mu, spks, cond)
        # (inference-mode tensors keep no version counter: those are matched by identity alone)
        versions = tuple(None if v.is_inference() else v._version for v in given)
        last = self._conditioned
        if last is None or any(a is not b for a, b in zip(last[:3], given, strict=True)) or last[3] != versions:
            c_block1, c_res = self.condition_session.run(None, {"mu": _np(mu), "spks": _np(spks), "cond": _np(cond)})
            self._conditioned = (*given, versions, {"c_block1": c_block1, "c_res": c_res})
            self.condition_runs += 1
        return self._conditioned[4]

    def forward(self, x, mask, mu, t, spks=None, cond=None) -> torch.Tensor:
        if spks is None:
            spks = torch.zeros(x.size(0), x.size(1), dtype=x.dtype, device=x.device)
        if cond is None:
            cond = torch.zeros_like(x)
        if self.takes_mask:
            mask = torch.ones_like(x[:, :1]) if mask is None else mask
        elif mask is not None and not bool((mask == 1).all()):
            raise ValueError(f"{self.path.name} was exported without padding support: the mask must be all ones")
        if self.condition_session is not None:
            feeds = {"x": _np(x), "t": _np(t), **self._terms(mu, spks, cond)}
        else:
            given = {"x": x, "mu": mu, "t": t, "spks": spks, "cond": cond, "mask": mask}
            feeds = {name: _np(given[name]) for name in self._names}
        (out,) = self.session.run(None, feeds)
        return torch.from_numpy(out).to(x.device, x.dtype)


class OnnxHiftDecoder:
    """Drop-in for ``HiFTGenerator.decode``: ``(mel, s_stft) -> (magnitude, phase)`` via ONNX Runtime."""

    def __init__(self, path: str | Path, threads: int | None = 1):
        self.path = Path(path)
        self.session = make_session(self.path, threads)
        self._names = [i.name for i in self.session.get_inputs()]

    def __call__(self, mel: torch.Tensor, s_stft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = dict(zip(self._names, (_np(mel), _np(s_stft)), strict=True))
        magnitude, phase = self.session.run(None, feeds)
        return (torch.from_numpy(magnitude).to(s_stft.device, s_stft.dtype),
                torch.from_numpy(phase).to(s_stft.device, s_stft.dtype))


def use_onnx(flow: nn.Module | None, hift: nn.Module | None, onnx_dir: str | Path,
             threads: int | None = 1) -> None:
    """Replace ``flow.decoder.estimator`` and ``hift.decode`` (either model may be None) in place.

    ``del hift.decode`` restores the PyTorch decoder; the flow's PyTorch estimator is dropped.
    """
    onnx_dir = Path(onnx_dir)
    if flow is not None:
        flow.decoder.estimator = OnnxEstimator(onnx_dir / ESTIMATOR_FILE, threads)
    if hift is not None:
        # An instance attribute shadows the class's method; plain objects are not registered as submodules.
        hift.decode = OnnxHiftDecoder(onnx_dir / HIFT_DECODER_FILE, threads)
