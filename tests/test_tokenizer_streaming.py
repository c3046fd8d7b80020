"""The streaming contract: same tokens for every chunking; L = 30 s + utterance gain = reference."""

import numpy as np
import pytest

from stepaudio.audio.preprocess import AudioInputError
from stepaudio.audio.resample import resample


def _stream(tok, audio, sr, chunk, segment_ms, normalization):
    s = tok.session(sr, segment_ms, normalization)
    parts = [s.feed(audio[i : i + chunk]) for i in range(0, len(audio), chunk)]
    parts.append(s.flush())
    return np.concatenate(parts), s.result()


CHUNKINGS = [320, 333, 4801, 10**9]  # 20 ms, odd sizes, the whole file


@pytest.mark.parametrize("segment_ms", [1200, 2400, 30000])
@pytest.mark.parametrize("normalization", ["running", "none"])
def test_streaming_equals_offline_for_every_chunking(golden_tokenizer_dir, golden_tokenizer, segment_ms,
                                                     normalization):
    wav = np.load(golden_tokenizer_dir / "case1_wav16k.npy")
    offline = golden_tokenizer.tokenize(wav, 16000, segment_ms, normalization)
    for chunk in CHUNKINGS:
        streamed, result = _stream(golden_tokenizer, wav, 16000, chunk, segment_ms, normalization)
        np.testing.assert_array_equal(streamed, offline.audio_n, err_msg=f"chunk={chunk}")
        np.testing.assert_array_equal(result.vq02, offline.vq02)


@pytest.mark.parametrize("case", [1, 2, 3])
def test_utterance_normalization_30s_equals_reference_when_streamed(golden_tokenizer_dir, golden_tokenizer, case):
    wav = np.load(golden_tokenizer_dir / f"case{case}_wav16k.npy")
    g = np.load(golden_tokenizer_dir / f"case{case}.npz")
    for chunk in (320, 777):
        streamed, _ = _stream(golden_tokenizer, wav, 16000, chunk, 30000, "utterance")
        np.testing.assert_array_equal(streamed, g["audio_N"])


def test_tokens_arrive_while_streaming(golden_tokenizer_dir, golden_tokenizer):
    wav = np.load(golden_tokenizer_dir / "case1_wav16k.npy")  # 3 s
    s = golden_tokenizer.session(16000, 1200, "running")
    got_before_flush = sum(len(s.feed(wav[i : i + 320])) for i in range(0, len(wav), 320))
    # vq06 segments of 1.2 s complete twice within 3 s: 2 * 10 groups of 5 tokens.
    assert got_before_flush == 100
    assert len(s.flush()) == 25


def test_resampled_24k_input_streams_like_offline(golden_tokenizer, speech_16k):
    audio_24k = resample(speech_16k, 16000, 24000)
    offline = golden_tokenizer.tokenize(audio_24k, 24000, 2400, "running")
    streamed, _ = _stream(golden_tokenizer, audio_24k, 24000, 480, 2400, "running")
    np.testing.assert_array_equal(streamed, offline.audio_n)
    # 5 tokens per 120 ms of audio, leftovers dropped
    assert abs(len(offline.audio_n) - 5 * len(speech_16k) / 16000 / 0.12) <= 10


def test_8k_input_is_upsampled(golden_tokenizer, speech_16k):
    audio_8k = resample(speech_16k, 16000, 8000)
    r = golden_tokenizer.tokenize(audio_8k, 8000)
    assert len(r.audio_n) > 0 and len(r.audio_n) % 5 == 0


@pytest.mark.parametrize(
    "audio,sr,match",
    [
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.array([0.1, np.nan], np.float32), 16000, "NaN"),
        (np.array([0.1, np.inf], np.float32), 16000, "NaN or inf"),
        (np.zeros(1600, np.int16), 16000, "dtype"),
        (np.zeros((2, 2, 2), np.float32), 16000, "shape"),
        (np.zeros(1600, np.float32), 4000, "outside the supported range"),
        (np.zeros(1600, np.float32), 96000, "outside the supported range"),
    ],
)
def test_bad_input_names_the_problem(golden_tokenizer, audio, sr, match):
    with pytest.raises(AudioInputError, match=match):
        golden_tokenizer.tokenize(audio, sr)


def test_too_long_and_bad_segment(golden_tokenizer):
    s = golden_tokenizer.session(16000, 2400)
    s.max_audio_s = 1.0
    s.feed(np.zeros(16000, np.float32))
    with pytest.raises(AudioInputError, match="maximum"):
        s.feed(np.zeros(160, np.float32))
    assert len(s.flush()) > 0  # the accepted second of audio is not lost
    with pytest.raises(AudioInputError, match="multiple of 120"):
        golden_tokenizer.session(16000, 1000)
    with pytest.raises(AudioInputError, match="normalization"):
        golden_tokenizer.session(16000, 1200, "loud")


def test_stereo_is_mixed(golden_tokenizer_dir, golden_tokenizer):
    wav = np.load(golden_tokenizer_dir / "case2_wav16k.npy")
    g = np.load(golden_tokenizer_dir / "case2.npz")
    r = golden_tokenizer.tokenize(np.stack([wav, wav]), 16000)
    np.testing.assert_array_equal(r.audio_n, g["audio_N"])


def test_short_and_silent_input(golden_tokenizer):
    r = golden_tokenizer.tokenize(np.zeros(400, np.float32), 16000)  # 25 ms: no whole group
    assert len(r.audio_n) == 0
    r = golden_tokenizer.tokenize(np.zeros(16000, np.float32), 16000)
    assert len(r.audio_n) % 5 == 0
