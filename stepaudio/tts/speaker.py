"""CAM++ speaker embedding (``campplus.onnx``) through ONNX Runtime on CPU.

Features as the reference computes them for the speaker embedding: the waveform at 16 kHz (float in
[-1, 1], *not* scaled to the int16 range), Kaldi fbank with 80 bins and dither 0, every other option
at the Kaldi / ``torchaudio.compliance.kaldi.fbank`` default (25 ms frames every 10 ms, povey window,
pre-emphasis 0.97, DC offset removed, FFT size rounded up to a power of two, snip_edges, no energy,
natural log floored at float32 epsilon, 20 Hz .. Nyquist), then the per-utterance mean of each bin
subtracted. The model maps (1, T, 80) float32 to (1, 192); the input name is read from the model,
as the reference does (the official file calls it ``input`` and its output ``output``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from stepaudio.audio.preprocess import check_sample_rate, check_waveform
from stepaudio.audio.resample import resample
from stepaudio.tokenizer.files import CheckpointError

CAMPPLUS_FILE = "campplus.onnx"
SAMPLE_RATE_HZ = 16000
NUM_MEL_BINS = 80
EMBEDDING_DIM = 192
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
MIN_SAMPLES = int(SAMPLE_RATE_HZ * FRAME_LENGTH_MS / 1000)  # one frame (snip_edges)


def fbank_options():
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(SAMPLE_RATE_HZ)
    opts.frame_opts.frame_length_ms = FRAME_LENGTH_MS
    opts.frame_opts.frame_shift_ms = FRAME_SHIFT_MS
    opts.frame_opts.dither = 0.0  # knf's default is 3e-5; the reference passes dither=0
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.round_to_power_of_two = True
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = NUM_MEL_BINS
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0  # 0 = Nyquist
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


def kaldi_fbank(audio_16k: np.ndarray) -> np.ndarray:
    """(T,) float32 at 16 kHz -> (frames, 80) float32 log mel filterbank energies (no normalisation)."""
    import kaldi_native_fbank as knf

    x = np.ascontiguousarray(audio_16k, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform (T,), got shape {x.shape}")
    if len(x) < MIN_SAMPLES:
        raise ValueError(
            f"audio of {len(x)} samples at 16 kHz is too short for a speaker embedding "
            f"(at least {MIN_SAMPLES} samples, one 25 ms frame)"
        )
    fb = knf.OnlineFbank(fbank_options())
    fb.accept_waveform(float(SAMPLE_RATE_HZ), x)
    fb.input_finished()
    n = fb.num_frames_ready
    out = np.empty((n, NUM_MEL_BINS), dtype=np.float32)
    for i in range(n):
        out[i] = fb.get_frame(i)
    return out


def speaker_features(audio_16k: np.ndarray) -> np.ndarray:
    """The model's input features: fbank minus its per-utterance mean, (frames, 80) float32."""
    feat = kaldi_fbank(audio_16k)
    return feat - feat.mean(axis=0, keepdims=True)


def _dim_ok(dim: object, want: int) -> bool:
    """A static dimension must equal ``want``; a symbolic or unknown one passes."""
    return dim is None or isinstance(dim, str) or dim == want


class SpeakerEmbedder:
    """``campplus.onnx`` on the CPU provider; ``embed(wav, sr)`` -> (192,) float32."""

    def __init__(self, onnx_path: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: CAM++ speaker model ({CAMPPLUS_FILE}) not found")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise CheckpointError(f"{self.path}: not a loadable ONNX model ({exc})") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise CheckpointError(
                f"{self.path}: expected one input (1, T, {NUM_MEL_BINS}) and an output (1, {EMBEDDING_DIM}), "
                f"got inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
            )
        shape, out_shape = inputs[0].shape, outputs[0].shape
        if len(shape) != 3 or not _dim_ok(shape[2], NUM_MEL_BINS):
            raise CheckpointError(f"{self.path}: input {inputs[0].name!r} has shape {shape}, expected (B, T, 80)")
        if inputs[0].type != "tensor(float)":
            raise CheckpointError(f"{self.path}: input {inputs[0].name!r} is {inputs[0].type}, expected float32")
        if len(out_shape) != 2 or not _dim_ok(out_shape[1], EMBEDDING_DIM):
            raise CheckpointError(f"{self.path}: output {outputs[0].name!r} has shape {out_shape}, expected (B, 192)")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self._lock = threading.Lock()  # one run at a time keeps intra_op threads bounded

    @classmethod
    def from_decoder_dir(cls, decoder_dir: str | Path, threads: int = 1) -> SpeakerEmbedder:
        """From a ``CosyVoice-300M-25Hz*`` folder."""
        return cls(Path(decoder_dir) / CAMPPLUS_FILE, threads)

    def embed_features(self, feats: np.ndarray) -> np.ndarray:
        """(frames, 80) mean-normalised features -> (192,) float32."""
        x = np.ascontiguousarray(feats, dtype=np.float32)[None]
        with self._lock:
            out = self.session.run([self.output_name], {self.input_name: x})[0]
        emb = np.asarray(out, dtype=np.float32).reshape(-1)
        if emb.shape != (EMBEDDING_DIM,):
            raise CheckpointError(f"{self.path}: the model returned {emb.size} values, expected {EMBEDDING_DIM}")
        return emb

    def embed_16k(self, audio_16k: np.ndarray) -> np.ndarray:
        return self.embed_features(speaker_features(audio_16k))

    def embed(self, audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        """Mono (T,) or (channels, T) float audio at any supported rate -> (192,) float32."""
        x = check_waveform(audio)
        return self.embed_16k(resample(x, check_sample_rate(sample_rate_hz), SAMPLE_RATE_HZ))
