"""Silero VAD (v5/v6 ONNX) through ONNX Runtime, without torch.

The model file is ``silero_vad.onnx`` from the ``silero-vad`` wheel (``tools/setup_venv.sh`` extracts
it; the wheel itself needs torch). At 16 kHz it takes windows of 512 samples (32 ms) preceded by the
last 64 samples of the previous window as context, and carries a recurrent state of shape (2, 1, 128)
from window to window. One ONNX Runtime session serves every stream; each stream owns its state.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

RATE_HZ = 16000
WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
WINDOW_MS = WINDOW_SAMPLES * 1000 // RATE_HZ  # 32
STATE_SHAPE = (2, 1, 128)
SILERO_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"  # silero-vad 6.2.3


def default_model_path() -> Path:
    """$SILERO_VAD_ONNX, else where tools/setup_venv.sh puts it inside the environment."""
    env = os.environ.get("SILERO_VAD_ONNX")
    return Path(env) if env else Path(sys.prefix) / "share" / "stepaudio" / "silero_vad.onnx"


class VadModel(Protocol):
    def new_stream(self) -> VadStream: ...


class VadStream(Protocol):
    def feed(self, audio_16k: np.ndarray) -> list[float]:
        """Speech probabilities of the windows this audio completes, in order."""
        ...


class SileroVad:
    def __init__(self, path: str | Path | None = None, check_hash: bool = False):
        import onnxruntime as ort

        self.path = Path(path) if path else default_model_path()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"Silero VAD model not found at {self.path}: run `make setup` (tools/setup_venv.sh extracts it "
                "from the silero-vad wheel), or point --vad-model / SILERO_VAD_ONNX at a silero_vad.onnx")
        if check_hash:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
            if digest != SILERO_SHA256:
                raise ValueError(f"{self.path}: sha256 {digest} is not silero_vad.onnx 6.2.3's")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"{self.path}: expected inputs input/state/sr (Silero v5+), got {sorted(names)}")
        self._sr = np.array(RATE_HZ, dtype=np.int64)

    def new_stream(self) -> SileroStream:
        return SileroStream(self)

    def run(self, frame: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """One window with its context, (1, 576) -> (speech probability, new state)."""
        out, new_state = self.session.run(None, {"input": frame, "state": state, "sr": self._sr})
        return float(out.reshape(-1)[0]), new_state


class SileroStream:
    def __init__(self, model: SileroVad):
        self.model = model
        self.state = np.zeros(STATE_SHAPE, np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._pending = np.zeros(0, np.float32)

    def feed(self, audio_16k: np.ndarray) -> list[float]:
        buf = np.concatenate([self._pending, np.asarray(audio_16k, dtype=np.float32)])
        n = len(buf) // WINDOW_SAMPLES
        probs = []
        for k in range(n):
            window = buf[k * WINDOW_SAMPLES : (k + 1) * WINDOW_SAMPLES]
            frame = np.concatenate([self.context, window])[None, :]  # (1, 576)
            p, self.state = self.model.run(frame, self.state)
            self.context = window[-CONTEXT_SAMPLES:]
            probs.append(p)
        self._pending = buf[n * WINDOW_SAMPLES :]
        return probs
