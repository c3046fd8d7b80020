import math

import numpy as np
import pytest

from stepaudio.audio.resample import StreamingResampler, resample


@pytest.mark.parametrize("orig,new", [(24000, 16000), (8000, 16000), (44100, 16000), (48000, 16000), (22050, 16000)])
def test_length_and_tone_accuracy(orig, new):
    n = orig  # one second
    t = np.arange(n) / orig
    x = (0.5 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
    y = resample(x, orig, new)
    assert len(y) == math.ceil(n * new / orig)
    ty = np.arange(len(y)) / new
    ref = 0.5 * np.sin(2 * math.pi * 440 * ty)
    mid = slice(len(y) // 10, -len(y) // 10)  # edges see the zero padding
    assert np.abs(y[mid] - ref[mid]).max() < 2e-3


@pytest.mark.parametrize("orig", [24000, 8000, 44100])
@pytest.mark.parametrize("chunk", [1, 7, 160, 333, 4801])
def test_streaming_equals_whole(orig, chunk):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(orig // 3 + 17).astype(np.float32) * 0.1
    whole = resample(x, orig, 16000)
    s = StreamingResampler(orig, 16000)
    parts = [s.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    parts.append(s.flush())
    streamed = np.concatenate(parts)
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_identity_and_empty():
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)
    assert len(resample(np.zeros(0, np.float32), 24000, 16000)) == 0


def test_lowpass_removes_content_above_new_nyquist():
    orig = 48000
    t = np.arange(orig) / orig
    x = np.sin(2 * math.pi * 11000 * t).astype(np.float32)  # above 8 kHz: must vanish
    y = resample(x, orig, 16000)
    assert np.abs(y[2000:-2000]).max() < 0.01
