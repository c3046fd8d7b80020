"""The asr Python-backend adapter on CPU with a fake triton_python_backend_utils."""

import dataclasses

import numpy as np
import pytest

from export.deploy_config import AsrConfig
from export.tiny.tokenizer import probe_signal
from tests.conftest import ROOT
from tests.fake_pb_utils import FakeRequest, load_model


@pytest.fixture(scope="module")
def asr(tiny_checkpoints):
    params = {f.name: getattr(AsrConfig(), f.name) for f in dataclasses.fields(AsrConfig)}
    params.update(checkpoint_dir=tiny_checkpoints / "Step-Audio-Tokenizer", max_audio_s=5)
    return load_model(ROOT / "model_repository" / "asr" / "1" / "model.py", params, "asr")


def _req(audio, sr):
    # As Triton hands a request of a dynamically batched model: a batch dimension of 1.
    return FakeRequest(audio=np.asarray(audio)[None, :], sample_rate_hz=np.array([[sr]], np.int32))


def test_batch_with_bad_requests(asr):
    a, b = probe_signal(1.5, 1), probe_signal(0.7, 2)
    reqs = [
        _req(a, 16000),
        _req(np.zeros(0, np.float32), 16000),
        _req(np.array([0.0, np.nan], np.float32), 16000),
        _req(b, 16000),
        _req(np.zeros(16000 * 6, np.float32), 16000),
        _req(a, 3000),
        FakeRequest(audio=a[None, :], sample_rate_hz=np.array([[16000, 8000]], np.int32)),
        FakeRequest(sample_rate_hz=np.array([[16000]], np.int32)),  # no audio tensor
    ]
    out = asr.execute(reqs)
    assert len(out) == len(reqs)
    expected = asr.recognizer.recognize([a, b])
    for i, text in ((0, expected[0]), (3, expected[1])):
        assert not out[i].has_error(), out[i].error.message()
        assert out[i].output("text").shape == (1, 1)
        assert out[i].output("text")[0, 0].decode() == text
    assert "empty" in out[1].error.message()
    assert "NaN" in out[2].error.message()
    assert "maximum of 5 s" in out[4].error.message()
    assert "outside the supported range" in out[5].error.message()
    assert "one value" in out[6].error.message()
    assert "malformed request" in out[7].error.message()


def test_a_failing_batch_answers_every_request(asr):
    real = asr.recognizer.recognize
    asr.recognizer.recognize = lambda waves: (_ for _ in ()).throw(RuntimeError("boom"))
    try:
        out = asr.execute([_req(probe_signal(0.5, 1), 16000), _req(np.zeros(0, np.float32), 16000)])
    finally:
        asr.recognizer.recognize = real
    assert "internal error: RuntimeError: boom" in out[0].error.message()
    assert "empty" in out[1].error.message()
    assert not asr.execute([_req(probe_signal(0.5, 1), 16000)])[0].has_error()
