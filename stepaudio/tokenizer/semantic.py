"""Semantic stream "vq06": Whisper log-mel -> CosyVoice 25 Hz speech tokenizer (ONNX), 25 codes/s.

The ONNX model sees a whole segment at once, so audio is cut into fixed segments tokenized
independently (the reference uses 30 s windows; streaming uses shorter ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stepaudio.audio.whisper_mel import HOP_SAMPLES, log_mel_spectrogram
from stepaudio.tokenizer.files import CheckpointError

MIN_SEGMENT_SAMPLES = 480  # shorter segments are dropped, as the reference does
REFERENCE_SEGMENT_MS = 30_000


def expected_codes(n_samples: int) -> int:
    """Codes the 25 Hz tokenizer yields for a segment: ceil(frames / 4), frames = n // 160."""
    frames = n_samples // HOP_SAMPLES
    return -(-frames // 4)


class SpeechTokenizerV1:
    def __init__(self, onnx_path: Path, providers: list[str] | None = None, intra_op_threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise CheckpointError(f"{onnx_path}: cannot load the speech tokenizer ONNX ({exc})") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 2 or len(outputs) < 1:
            raise CheckpointError(
                f"{onnx_path}: expected 2 inputs (feats (B,128,T) float32, feats_length (B,) int32) and an "
                f"'indices' output, got inputs {[i.name for i in inputs]} outputs {[o.name for o in outputs]}"
            )
        if len(inputs[0].shape) != 3 or len(inputs[1].shape) != 1:
            raise CheckpointError(
                f"{onnx_path}: input ranks {len(inputs[0].shape)}/{len(inputs[1].shape)}, expected 3/1"
            )
        # Passed positionally, as the reference does.
        self._feats_name, self._len_name = inputs[0].name, inputs[1].name
        self._out_name = outputs[0].name
        self._batch_ok = True  # cleared if the graph was exported for batch 1 only

    def tokenize(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        """Tokenize independent 16 kHz segments; segments of equal length run as one batch."""
        results: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(segments)
        by_len: dict[int, list[int]] = {}
        for i, seg in enumerate(segments):
            if len(seg) >= MIN_SEGMENT_SAMPLES:
                by_len.setdefault(len(seg), []).append(i)
        for idx in by_len.values():
            feats = np.stack([log_mel_spectrogram(segments[i]) for i in idx])  # (B, 128, T_mel)
            if len(idx) > 1 and self._batch_ok:
                try:
                    codes = self._run(feats)
                except Exception:
                    self._batch_ok = False
                else:
                    for row, i in enumerate(idx):
                        results[i] = codes[row]
                    continue
            for row, i in enumerate(idx):
                results[i] = self._run(feats[row : row + 1])[0]
        return results

    def _run(self, feats: np.ndarray) -> np.ndarray:
        lengths = np.full((feats.shape[0],), feats.shape[2], dtype=np.int32)  # (B,)
        codes = self.session.run([self._out_name], {self._feats_name: feats, self._len_name: lengths})[0]
        return np.asarray(codes).reshape(feats.shape[0], -1).astype(np.int64)  # (B, ceil(T_mel / 4))
