"""The Python-backend adapters on CPU with a fake triton_python_backend_utils."""

import dataclasses

import numpy as np
import pytest

from export.deploy_config import AudioTokenizerConfig, AudioTokenizerStreamConfig
from tests.conftest import ROOT
from tests.fake_pb_utils import FakeRequest, load_model

REPO = ROOT / "model_repository"


def _params(section, checkpoint_dir, **over):
    p = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    p.update(checkpoint_dir=checkpoint_dir, **over)
    return p


@pytest.fixture(scope="module")
def offline(golden_tokenizer_dir):
    return load_model(REPO / "audio_tokenizer" / "1" / "model.py",
                      _params(AudioTokenizerConfig(), golden_tokenizer_dir / "Step-Audio-Tokenizer", max_audio_s=5),
                      "audio_tokenizer")


@pytest.fixture(scope="module")
def stream(golden_tokenizer_dir):
    return load_model(REPO / "audio_tokenizer_stream" / "1" / "model.py",
                      _params(AudioTokenizerStreamConfig(), golden_tokenizer_dir / "Step-Audio-Tokenizer",
                              segment_ms=1200), "audio_tokenizer_stream")


def _offline_req(audio, sr, **extra):
    return FakeRequest(audio=audio, sample_rate_hz=np.array([sr], np.int32), **extra)


def test_offline_batch_of_requests_with_one_bad(offline, golden_tokenizer_dir):
    wav = np.load(golden_tokenizer_dir / "case2_wav16k.npy")
    g = np.load(golden_tokenizer_dir / "case2.npz")
    reqs = [
        _offline_req(wav, 16000),
        _offline_req(np.zeros(0, np.float32), 16000),
        _offline_req(np.zeros(16000 * 6, np.float32), 16000),
        _offline_req(wav, 3000),
        _offline_req(wav, 16000, segment_ms=np.array([1200], np.int32),
                     normalization=np.array([b"running"], dtype=np.object_)),
    ]
    out = offline.execute(reqs)
    assert len(out) == len(reqs)
    np.testing.assert_array_equal(out[0].output("audio_tokens"), g["audio_N"])
    assert out[0].output("audio_token_string")[0].decode() == (
        golden_tokenizer_dir / "case2_token_str.txt").read_text().strip()
    assert "empty" in out[1].error.message()
    assert "maximum" in out[2].error.message()
    assert "outside the supported range" in out[3].error.message()
    assert not out[4].has_error() and len(out[4].output("audio_tokens")) == len(g["audio_N"])


def _chunk(sid, audio, start=0, end=0, sr=16000, **extra):
    return FakeRequest(audio=audio[None, :], sample_rate_hz=np.array([[sr]], np.int32),
                       START=np.array([[start]], np.int32), END=np.array([[end]], np.int32),
                       CORRID=np.array([[sid]], np.uint64), **extra)


def test_stream_sessions_interleaved_in_one_batch(stream, golden_tokenizer_dir, golden_tokenizer):
    a = np.load(golden_tokenizer_dir / "case1_wav16k.npy")
    b = np.load(golden_tokenizer_dir / "case3_wav16k.npy")
    got = {1: [], 2: []}
    batch_sizes = []
    tokenize = stream.streams._tokenize_segments
    stream.streams._tokenize_segments = lambda segs: (batch_sizes.append(len(segs)), tokenize(segs))[1]
    pieces = {1: np.array_split(a, 7), 2: np.array_split(b, 7)}
    for i in range(7):
        reqs = [_chunk(sid, pieces[sid][i], start=int(i == 0), end=int(i == 6)) for sid in (1, 2)]
        for sid, resp in zip((1, 2), stream.execute(reqs), strict=True):
            assert not resp.has_error(), resp.error.message()
            got[sid].append(resp.output("audio_tokens")[0])
    for sid, wav in ((1, a), (2, b)):
        expected = golden_tokenizer.tokenize(wav, 16000, 1200, "running").audio_n
        np.testing.assert_array_equal(np.concatenate(got[sid]), expected)
    stream.streams._tokenize_segments = tokenize
    assert len(stream.streams) == 0
    assert stream._gauge._metric.value == 0  # the open-streams gauge went back to zero
    assert max(batch_sizes) >= 2  # the final segments of both sessions went in one ONNX call


def test_stream_errors_are_responses(stream):
    [r] = stream.execute([_chunk(42, np.zeros(160, np.float32))])
    assert "unknown stream id 42" in r.error.message()
    r1, r2 = stream.execute([_chunk(43, np.zeros(160, np.float32), start=1),
                             _chunk(43, np.full(160, np.nan, np.float32))])
    assert not r1.has_error() and "NaN" in r2.error.message()
    [r] = stream.execute([_chunk(43, np.zeros(0, np.float32), end=1, cancel=np.array([[True]]))])
    assert not r.has_error() and len(stream.streams) == 0
