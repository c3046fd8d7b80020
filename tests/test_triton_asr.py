"""The asr model in a real tritonserver (tiny checkpoints), through client/asr.py."""

from __future__ import annotations

import functools
import queue
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client import tensors as T
from client.asr import asr_inputs, transcribe
from export.tiny.tokenizer import probe_signal
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def recognizer(tiny_checkpoints):
    from stepaudio.asr.recognizer import Recognizer

    return Recognizer(tiny_checkpoints / "Step-Audio-Tokenizer")


@pytest.fixture
def client(tiny_server):
    c = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    yield c
    c.close()


def test_transcript_equals_the_core_recognizer(client, recognizer):
    for seconds, seed in ((2.0, 1), (0.6, 2)):
        audio = probe_signal(seconds, seed)
        text = transcribe(client, audio, 16000)
        assert text == recognizer.transcribe(audio, 16000) and text
    audio = probe_signal(1.2, 3, fs=24000)  # the controller's PCM rate, resampled by the server
    assert transcribe(client, audio, 24000) == recognizer.transcribe(audio, 24000)


def _stats(client):
    s = client.get_inference_statistics(T.ASR, as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def test_concurrent_requests_are_batched_and_exact(client, recognizer):
    audios = [probe_signal(0.4 + 0.3 * i, 10 + i) for i in range(8)]
    expected = [recognizer.transcribe(a, 16000) for a in audios]
    inferences0, executions0 = _stats(client)
    # A request is in flight first, so the others queue and the dynamic batcher groups them.
    replies: queue.Queue = queue.Queue()
    for i, a in enumerate(audios):
        client.async_infer(T.ASR, asr_inputs(a, 16000),
                           callback=functools.partial(lambda i, result, error: replies.put((i, result, error)), i))
    got = [""] * len(audios)
    for _ in audios:
        i, res, err = replies.get(timeout=120)
        assert err is None, err
        got[i] = res.as_numpy(T.ASR_TEXT.name).reshape(-1)[0].decode()
    assert got == expected
    inferences, executions = _stats(client)
    assert inferences - inferences0 == len(audios)
    assert executions - executions0 < len(audios)


@pytest.mark.parametrize(("audio", "sr", "match"), [
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.array([0.1, np.nan] * 800, np.float32), 16000, "NaN"),
    (np.zeros(1600, np.float32), 3000, "outside the supported range"),
    (np.zeros(16000 * 121, np.float32), 16000, "maximum of 120 s"),
])
def test_bad_input_is_an_error_and_the_model_keeps_working(client, recognizer, audio, sr, match):
    with pytest.raises(InferenceServerException, match=match):
        transcribe(client, audio, sr)
    audio = probe_signal(0.8, 4)
    assert transcribe(client, audio, 16000) == recognizer.transcribe(audio, 16000)


def test_cli_prints_the_transcript(tiny_server, recognizer, tmp_path):
    path = tmp_path / "turn.wav"
    sf.write(path, probe_signal(1.5, 5), 16000, subtype="PCM_16")
    audio, sr = sf.read(path, dtype="float32")
    out = subprocess.run([sys.executable, "-m", "client", "asr", "--url", tiny_server.grpc_url, str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.rstrip("\n") == recognizer.transcribe(audio, sr)
