"""Silero VAD (v5/v6 ONNX) through ONNX Runtime, without torch.

The model file is ``silero_vad.onnx`` from the ``silero-vad`` wheel (``tools/setup_venv.sh`` extracts
it; the wheel itself needs torch). At 16 kHz it takes windows of 512 samples (32 ms) preceded by the
last 64 samples of the previous window as context, and carries a recurrent state of shape (2, 1, 128)
from window to window. One ONNX Runtime session serves every stream; each stream owns its state.

Batching: the model takes a batch of windows of different streams (states (2, B, 128)) and gives each the
very probabilities it gives alone, for a fraction of the CPU (one window ~0.2 ms; in batches of 8, ~0.08 ms
each). With ``batch_window_s`` set and at least ``batch_min_streams`` streams active (fewer cost little and
rarely coincide), ``feed_async`` waits that long for other streams' windows and classifies them together
(the first one waits the longest); otherwise, and in ``feed``, a stream's windows are classified at once.
"""

from __future__ import annotations

import asyncio
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
ACTIVE_S = 1.0  # a stream that sent audio this recently counts as active (for batching)
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

    async def feed_async(self, audio_16k: np.ndarray) -> list[float]:
        """The same, possibly batched with other streams' windows."""
        ...


class SileroVad:
    def __init__(self, path: str | Path | None = None, check_hash: bool = False, batch_window_s: float = 0.0,
                 batch_min_streams: int = 4, max_batch: int = 32):
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
        # One thread, and no spinning: a window is ~0.1-0.3 ms of work, and threads that spin waiting for the
        # next one burn a core on a box the controller shares with the models.
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"{self.path}: expected inputs input/state/sr (Silero v5+), got {sorted(names)}")
        self._sr = np.array(RATE_HZ, dtype=np.int64)
        self._outputs = [o.name for o in self.session.get_outputs()]  # (probability, state)
        self.batch_window_s = batch_window_s
        self.batch_min_streams = batch_min_streams
        self.max_batch = max_batch  # streams: a full batch runs at once
        self._active: dict[int, float] = {}  # id of each stream that sent audio in the last second -> when
        self._pruned_s = 0.0
        self._waiting: list[tuple[SileroStream, np.ndarray, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = self.batched_windows = 0  # runs of the model by the batcher, and the windows in them

    def new_stream(self) -> SileroStream:
        return SileroStream(self)

    def run(self, frame: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """One window with its context, (1, 576) -> (speech probability, new state)."""
        out, new_state = self.session.run(self._outputs, {"input": frame, "state": state, "sr": self._sr})
        return float(out.reshape(-1)[0]), new_state

    # -- batching ----------------------------------------------------------------------------------
    async def classify(self, stream: SileroStream, frames: np.ndarray) -> list[float]:
        """The probabilities of ``frames`` (n, 576), windows of ``stream`` in order, classified together with
        what other streams send within ``batch_window_s``."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._active[id(stream)] = now
        if now - self._pruned_s >= ACTIVE_S / 4:
            self._pruned_s = now
            self._active = {k: t for k, t in self._active.items() if now - t < ACTIVE_S}
        if len(self._active) < self.batch_min_streams:
            return stream.run_frames(frames)
        if self._loop is not loop:  # the first loop to batch owns the queue (one per server)
            if self._loop is not None and (self._waiting or self._loop.is_running()):
                return stream.run_frames(frames)
            self._loop = loop
        fut = loop.create_future()
        self._waiting.append((stream, frames, fut))
        if len(self._waiting) >= self.max_batch:
            self._run_waiting()
        elif self._timer is None:
            self._timer = loop.call_later(self.batch_window_s, self._run_waiting)
        return await fut

    def _run_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        try:
            results = self._run_batched([(stream, frames) for stream, frames, _ in waiting])
        except Exception as exc:  # the model failed: every stream waiting hears it
            for *_, fut in waiting:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (*_, fut), probs in zip(waiting, results, strict=True):
            if not fut.done():  # (its session may have gone meanwhile)
                fut.set_result(probs)

    def _run_batched(self, requests: list[tuple[SileroStream, np.ndarray]]) -> list[list[float]]:
        """Round k runs the k-th window of every stream that has one, as one batch."""
        states = np.concatenate([stream.state for stream, _ in requests], axis=1)  # (2, B, 128)
        probs: list[list[float]] = [[] for _ in requests]
        for k in range(max(len(frames) for _, frames in requests)):
            rows = [i for i, (_, frames) in enumerate(requests) if len(frames) > k]
            x = np.stack([requests[i][1][k] for i in rows])  # (b, 576)
            if len(rows) == len(requests):  # (the usual case: no copies of the states)
                out, states = self.session.run(self._outputs, {"input": x, "state": states, "sr": self._sr})
            else:
                out, new = self.session.run(self._outputs, {"input": x, "state": states[:, rows], "sr": self._sr})
                states[:, rows] = new
            for p, i in zip(out.reshape(-1).tolist(), rows, strict=True):
                probs[i].append(p)
            self.batches += 1
            self.batched_windows += len(rows)
        for i, (stream, _) in enumerate(requests):
            stream.state = states[:, i : i + 1].copy()
        return probs


class SileroStream:
    def __init__(self, model: SileroVad):
        self.model = model
        self.state = np.zeros(STATE_SHAPE, np.float32)
        # the context of the next window, then the samples not yet in a window: window k's input (context
        # included) is _buf[k * 512 : k * 512 + 576]
        self._buf = np.zeros(CONTEXT_SAMPLES, np.float32)

    def _frames(self, audio_16k: np.ndarray) -> np.ndarray:
        """(n, 576): the windows this audio completes, each with its context (overlapping rows of one buffer)."""
        buf = np.concatenate([self._buf, np.asarray(audio_16k, dtype=np.float32).reshape(-1)])
        n = (len(buf) - CONTEXT_SAMPLES) // WINDOW_SAMPLES
        self._buf = buf[n * WINDOW_SAMPLES :]
        item = buf.itemsize
        return np.ndarray((n, CONTEXT_SAMPLES + WINDOW_SAMPLES), np.float32, buf, 0, (WINDOW_SAMPLES * item, item))

    def run_frames(self, frames: np.ndarray) -> list[float]:
        probs = []
        for k in range(len(frames)):
            p, self.state = self.model.run(frames[k : k + 1], self.state)  # (1, 576)
            probs.append(p)
        return probs

    def feed(self, audio_16k: np.ndarray) -> list[float]:
        return self.run_frames(self._frames(audio_16k))

    async def feed_async(self, audio_16k: np.ndarray) -> list[float]:
        frames = self._frames(audio_16k)
        if not len(frames):
            return []
        if self.model.batch_window_s <= 0:
            return self.run_frames(frames)
        return await self.model.classify(self, frames)
