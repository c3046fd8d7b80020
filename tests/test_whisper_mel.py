import numpy as np
import pytest

from stepaudio.audio.preprocess import peak_normalize
from stepaudio.audio.whisper_mel import log_mel_spectrogram, mel_filters


def test_filters_shape_and_coverage():
    f = mel_filters()
    assert f.shape == (128, 201)
    assert (f >= 0).all()
    assert (f.sum(axis=1) > 0).all()


def test_frames_and_range():
    x = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    m = log_mel_spectrogram(x)
    assert m.shape == (128, 100)
    assert m.max() - m.min() <= 2.0 + 1e-6  # dynamic range clipped to 8 (log10) => 2 after /4


@pytest.mark.parametrize("case", [1, 2, 3])
def test_matches_reference_logmel(golden_tokenizer_dir, case):
    g = np.load(golden_tokenizer_dir / f"case{case}.npz")
    w = np.load(golden_tokenizer_dir / f"case{case}_wav16k.npy")
    m = log_mel_spectrogram(peak_normalize(w))
    np.testing.assert_allclose(m, g["vq06_whisper_logmel"][0], atol=1e-5)
