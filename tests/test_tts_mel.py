"""Prompt mel (the flow's ``prompt_feat``) against the reference's output on the golden token2wav case."""

import dataclasses

import numpy as np
import pytest

from stepaudio.tokenizer.files import CheckpointError
from stepaudio.tts.mel import MelConfig, PromptMel, mel_basis, prompt_mel

from .conftest import GOLDEN

T2W = GOLDEN / "token2wav"
YAML = T2W / "CosyVoice-300M-25Hz" / "cosyvoice.yaml"


@pytest.fixture(scope="module")
def case1():
    if not (T2W / "case1.npz").is_file() or not YAML.is_file():
        pytest.skip(f"golden token2wav fixtures not found at {T2W} (CI lays ../shared beside the clone)")
    return np.load(T2W / "case1.npz")


def test_golden_case1_prompt_feat(case1):
    mel = PromptMel.from_yaml(YAML)
    out = mel(case1["prompt_wav_22k"])
    ref = case1["prompt_feat"]
    assert out.shape == ref.shape == (62, 80)
    assert out.dtype == np.float32
    assert int(case1["prompt_feat_len"][0]) == out.shape[0]
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_yaml_config_is_the_spec_config(case1):
    assert MelConfig.from_yaml(YAML) == MelConfig()  # n_fft 1024, hop 256, 80 mels, 0-8000 Hz, 22050 Hz


def test_frame_count_and_rate():
    cfg = MelConfig()
    rng = np.random.default_rng(0)
    for n in (cfg.min_samples(), 1000, 15875, 22050, 22050 * 3 + 17):
        out = prompt_mel((0.1 * rng.standard_normal(n)).astype(np.float32), cfg)
        assert out.shape == (cfg.num_frames(n), 80)
        assert out.shape[0] == 1 + (n + 2 * 384 - 1024) // 256
    assert cfg.frame_rate_hz == pytest.approx(86.1328125)


def test_too_short_and_bad_shape():
    cfg = MelConfig()
    with pytest.raises(ValueError, match="too short"):
        prompt_mel(np.zeros(cfg.min_samples() - 1, np.float32), cfg)
    with pytest.raises(ValueError, match="mono"):
        prompt_mel(np.zeros((2, 5000), np.float32), cfg)


def test_silence_floor_and_filters():
    cfg = MelConfig()
    out = prompt_mel(np.zeros(5000, np.float32), cfg)
    # |X| = sqrt(1e-9) in every bin; each filter sums it, so silence sits at log(max(3.2e-5 * sum, 1e-5)).
    expect = np.log(np.maximum(np.sqrt(1e-9) * mel_basis(cfg).astype(np.float64).sum(axis=1), 1e-5))
    np.testing.assert_allclose(out, np.broadcast_to(expect, out.shape), atol=1e-6)
    basis = mel_basis(cfg)
    assert basis.shape == (80, 513)
    top_bin = np.nonzero(basis.sum(axis=0))[0].max()
    assert top_bin * 22050 / 1024 <= 8000  # nothing above fmax


def test_sine_lands_in_its_band():
    cfg = MelConfig()
    t = np.arange(22050) / 22050
    out = prompt_mel((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), cfg)
    peak_band = int(out.mean(axis=0).argmax())
    weights = mel_basis(cfg)[:, round(1000 * 1024 / 22050)]
    assert weights[peak_band] > 0


def test_bad_feat_extractor_args(tmp_path):
    text = YAML.read_text(encoding="utf-8") if YAML.is_file() else None
    if text is None:
        pytest.skip("golden cosyvoice.yaml not found")
    bad = tmp_path / "cosyvoice.yaml"
    bad.write_text(text.replace("win_size: 1024", "win_size: 4096"), encoding="utf-8")
    with pytest.raises(CheckpointError, match="feat_extractor"):
        MelConfig.from_yaml(bad)


def test_center_variant_pads_twice():
    cfg = dataclasses.replace(MelConfig(), center=True)
    n = 15875
    out = prompt_mel(np.random.default_rng(1).standard_normal(n).astype(np.float32) * 0.1, cfg)
    assert out.shape == (1 + (n + 2 * 384) // 256, 80)
