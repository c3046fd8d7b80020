"""CAM++ speaker embedding: Kaldi fbank features, ONNX Runtime on the tiny campplus.onnx, errors."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export.tiny.campplus import INPUT_NAME, OUTPUT_NAME, build_campplus, export_campplus, write_campplus
from stepaudio.audio.preprocess import AudioInputError
from stepaudio.audio.resample import resample
from stepaudio.tokenizer.files import CheckpointError
from stepaudio.tts.speaker import SpeakerEmbedder, kaldi_fbank, speaker_features


@pytest.fixture(scope="module")
def tiny_model():
    return build_campplus(0)


@pytest.fixture(scope="module")
def campplus_path(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("campplus") / "campplus.onnx"
    path.write_bytes(export_campplus(tiny_model))
    return path


@pytest.fixture(scope="module")
def embedder(campplus_path):
    return SpeakerEmbedder(campplus_path)


def voice(seed: int, seconds: float = 1.2, sr: int = 16000, f0: float = 180.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 + 15 * np.sin(2 * np.pi * 5 * t)) / sr
    x = sum(np.sin(k * phase + rng.uniform(0, 6.28)) / k for k in range(1, 12))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2) + 0.02 * rng.standard_normal(len(t))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def numpy_kaldi_fbank(x: np.ndarray) -> np.ndarray:
    """Kaldi's fbank from its definition (float64): 25/10 ms snip-edges frames, DC removal,
    pre-emphasis 0.97, povey window, 512-point power spectrum, 80 HTK-mel triangles 20..8000 Hz, ln."""
    x = x.astype(np.float64)
    n = 1 + (len(x) - 400) // 160
    frames = np.stack([x[i * 160 : i * 160 + 400] for i in range(n)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * 0.03, frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)) ** 0.85
    power = np.abs(np.fft.rfft(frames, 512)) ** 2  # (n, 257)

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(8000.0)
    delta = (hi - lo) / 81
    fft_mel = mel(np.arange(256) * 16000 / 512)
    banks = np.zeros((80, 257))
    for m in range(80):
        left, center, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        up = (fft_mel - left) / (center - left)
        down = (right - fft_mel) / (right - center)
        w = np.where(fft_mel <= center, up, down)
        banks[m, :256] = np.where((fft_mel > left) & (fft_mel < right), w, 0.0)
    return np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))


def test_fbank_matches_kaldi_definition():
    x = voice(0, 1.0)
    ours = kaldi_fbank(x)
    assert ours.shape == (1 + (16000 - 400) // 160, 80)
    ref = numpy_kaldi_fbank(x)
    # No dither, no int16 scaling, povey window, snip edges...: any wrong option is off by >> 0.01.
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_features_are_mean_normalised():
    f = speaker_features(voice(1))
    assert f.shape[1] == 80
    np.testing.assert_allclose(f.mean(axis=0), 0.0, atol=1e-4)


def test_shape_dtype_and_determinism(embedder, campplus_path):
    x = voice(2)
    a = embedder.embed(x, 16000)
    assert a.shape == (192,) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, embedder.embed(x, 16000))
    np.testing.assert_array_equal(a, SpeakerEmbedder(campplus_path).embed(x, 16000))
    assert embedder.input_name == INPUT_NAME and embedder.output_name == OUTPUT_NAME


def test_gain_invariance_from_mean_normalisation(embedder):
    # A gain g adds 2 ln g to every log-energy; the per-utterance mean subtraction removes it.
    # (Only approximately: a few low bins of the fbank sit at the log floor and move.)
    x = voice(3)
    a, b = embedder.embed(0.25 * x, 16000), embedder.embed(x, 16000)
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.9999


def test_voices_differ(embedder):
    a = embedder.embed(voice(4, f0=120.0), 16000)
    b = embedder.embed(voice(5, f0=260.0), 16000)
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos < 0.999


def test_resamples_to_16k_and_mixes_channels(embedder):
    x22 = voice(6, sr=22050)
    np.testing.assert_allclose(embedder.embed(x22, 22050), embedder.embed_16k(resample(x22, 22050, 16000)), atol=0)
    stereo = np.stack([x22, x22])
    np.testing.assert_allclose(embedder.embed(stereo, 22050), embedder.embed(x22, 22050), atol=1e-6)


def test_bad_audio(embedder):
    with pytest.raises(AudioInputError, match="empty"):
        embedder.embed(np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioInputError, match="NaN"):
        embedder.embed(np.full(16000, np.nan, np.float32), 16000)
    with pytest.raises(AudioInputError, match="range"):
        embedder.embed(voice(7), 4000)
    with pytest.raises(ValueError, match="too short"):
        embedder.embed(np.zeros(300, np.float32) + 0.1, 16000)


def test_missing_and_malformed_model(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        SpeakerEmbedder(tmp_path / "campplus.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model")
    with pytest.raises(CheckpointError, match=r"junk\.onnx"):
        SpeakerEmbedder(junk)


def test_wrong_interface_is_rejected(tmp_path):
    # (B, T, 80) -> mean over time (B, 80): loads, but is not a 192-d speaker model.
    node = helper.make_node("ReduceMean", ["feats"], ["emb"], axes=[1], keepdims=0)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["B", "T", 80])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["B", 80])],
    )
    path = tmp_path / "wrong.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(CheckpointError, match="192"):
        SpeakerEmbedder(path)


def test_tiny_model_file(campplus_path, tmp_path):
    data = campplus_path.read_bytes()
    assert len(data) < 2 * 1024 * 1024
    assert write_campplus(tmp_path / "again.onnx", seed=0).read_bytes() == data  # same seed, same bytes
    model = onnx.load_from_string(data)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]


def test_onnx_matches_torch_for_any_length(embedder, tiny_model):
    model = tiny_model
    rng = np.random.default_rng(8)
    for frames in (30, 100, 101, 257):  # segment pooling: shorter, equal, just over, several segments
        feats = rng.standard_normal((frames, 80)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(feats)[None])[0].numpy()
        out = embedder.embed_features(feats)
        # float32 rounding differences only (the tiny model's last layer is scaled up ~100x).
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
        np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
