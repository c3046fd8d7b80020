"""The tts pipeline model (voice -> tts_lm over BLS -> token2wav) in a real tritonserver."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.tts import stream_tts, tts_inputs
from tests.conftest import ROOT, espeak_wav

pytestmark = pytest.mark.integration
TEXT = "(高兴1)你好，今天天气很好。"


@pytest.fixture
def client(tiny_server):
    c = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    yield c
    c.close()


def test_streams_audio_chunks(client):
    chunks = list(stream_tts(client, tts_inputs(TEXT, seed=1, max_new_tokens=200)))
    assert chunks and all(sr == 22050 for _, sr, _ in chunks)
    wav = np.concatenate([a for a, _, _ in chunks])
    assert len(wav) > 0 and np.isfinite(wav).all() and np.abs(wav).max() <= 0.99 + 1e-6
    # the same seed gives the same audio; offline mode returns it as one chunk
    again = np.concatenate([a for a, _, _ in stream_tts(client, tts_inputs(TEXT, seed=1, max_new_tokens=200))])
    np.testing.assert_array_equal(wav, again)
    offline = list(stream_tts(client, tts_inputs(TEXT, seed=1, max_new_tokens=200, stream=False)))
    assert len(offline) == 1 and len(offline[0][0]) == len(wav)
    # the request's first chunk: a small one streams earlier, one past the end gives all the audio at the end
    small = list(stream_tts(client, tts_inputs(TEXT, seed=1, max_new_tokens=200, first_chunk_tokens=5)))
    whole = list(stream_tts(client, tts_inputs(TEXT, seed=1, max_new_tokens=200, first_chunk_tokens=1000)))
    assert len(small) >= 2 and len(whole) == 1
    assert sum(len(a) for a, _, _ in small) == len(whole[0][0]) == len(wav)


def test_voice_clone(client, tmp_path):
    path = espeak_wav("hello there, this is my voice", tmp_path / "prompt.wav", sample_rate_hz=22050)
    audio, sr = sf.read(str(path), dtype="float32")
    chunks = list(stream_tts(client, tts_inputs("你好", clone_audio=audio, clone_sample_rate_hz=sr,
                                                clone_text="hello there, this is my voice", seed=2,
                                                max_new_tokens=120)))
    assert chunks[-1][1] == 22050


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(text=""), "empty"),
        (dict(text="x" * 2001), "maximum"),
        (dict(text="hi", speaker="Nobody"), "unknown speaker"),
        (dict(text="hi", clone_audio=np.zeros(1000, np.float32), clone_sample_rate_hz=16000, clone_text="x"),
         "too short"),
        (dict(text="hi", clone_audio=np.zeros(16000, np.float32), clone_sample_rate_hz=16000, clone_text="x"),
         "silent"),
        (dict(text="hi", clone_audio=np.full(16000 * 31, 0.1, np.float32), clone_sample_rate_hz=16000,
              clone_text="x"), "too long"),
        (dict(text="hi", clone_audio=np.full(16000, 0.1, np.float32), clone_sample_rate_hz=4000, clone_text="x"),
         "4000"),
        (dict(text="hi", first_chunk_tokens=0), "first_chunk_tokens must be in 1..1000"),
    ],
)
def test_bad_input_is_an_error_and_others_go_on(client, tiny_server, kwargs, match):
    result = {}

    def other():
        c = grpcclient.InferenceServerClient(tiny_server.grpc_url)
        try:
            result["n"] = len(list(stream_tts(c, tts_inputs(TEXT, seed=3, max_new_tokens=60))))
        finally:
            c.close()

    t = threading.Thread(target=other)
    t.start()
    with pytest.raises(InferenceServerException, match=match):
        list(stream_tts(client, tts_inputs(**kwargs)))
    t.join(120)
    assert result.get("n", 0) >= 1


def test_client_cli_tts(tiny_server, tmp_path):
    out = tmp_path / "out.wav"
    proc = subprocess.run([sys.executable, "-m", "client", "tts", "--url", tiny_server.grpc_url, "--out", str(out),
                           "--seed", "1", "--max-new-tokens", "100", TEXT],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "first chunk after" in proc.stderr and out.is_file()
    assert sf.info(str(out)).samplerate == 22050


def _gauge(server, name: str) -> float:
    """Sum of a custom gauge over the server's model instances (Prometheus text format)."""
    import urllib.request

    url = server.metrics_url if "://" in server.metrics_url else f"http://{server.metrics_url}"
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
    assert values, f"{name} not exported"
    return sum(values)


def _wait_gauge(server, name: str, value: float, timeout_s: float = 10.0) -> float:
    import time

    deadline = time.monotonic() + timeout_s
    while (v := _gauge(server, name)) != value and time.monotonic() < deadline:
        time.sleep(0.1)
    return v


def test_cancel_by_request_id_stops_tts_lm_and_frees_token2wav(client, tiny_server):
    from client.chat import cancel

    chunks = stream_tts(client, tts_inputs(TEXT, seed=5, max_new_tokens=4000, request_id="tts-long"))
    next(chunks)  # audio is flowing: tts_lm and a token2wav stream are open
    assert _gauge(tiny_server, "token2wav_open_streams") >= 1
    other = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    cancel(other, "tts", "tts-long")
    other.close()
    rest = list(chunks)
    assert rest and len(rest[-1][0]) == 0  # the closing response: no audio
    assert _wait_gauge(tiny_server, "token2wav_open_streams", 0) == 0
    assert _wait_gauge(tiny_server, "llm_active_requests", 0) == 0  # tts_lm stopped, not left running


def test_client_cancellation_reaches_tts_lm_and_token2wav(tiny_server):
    """A client that leaves a running stream (gRPC cancel, as the controller does) stops tts_lm and frees
    the token2wav stream. Through the asyncio client: its cancel never blocks the caller, so a server that
    failed to stop shows up as a gauge left up, not as a hung test."""
    import asyncio

    import tritonclient.grpc.aio as grpcaio

    from client import tensors as T
    from client.aio import decoupled_responses

    async def first_chunk_then_leave():
        c = grpcaio.InferenceServerClient(tiny_server.grpc_url)
        try:
            stream = decoupled_responses(c, T.TTS, tts_inputs(TEXT, seed=6, max_new_tokens=4000))
            first = await asyncio.wait_for(anext(stream), 120)
            assert first.as_numpy(T.AUDIO_OUT.name).size > 0  # audio is flowing: both are open
            await asyncio.wait_for(stream.aclose(), 10)  # leaving early cancels the call
        finally:
            await asyncio.wait_for(c.close(), 10)

    asyncio.run(first_chunk_then_leave())
    assert _wait_gauge(tiny_server, "token2wav_open_streams", 0) == 0
    assert _wait_gauge(tiny_server, "llm_active_requests", 0) == 0
