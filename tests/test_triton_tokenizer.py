"""audio_tokenizer and audio_tokenizer_stream in a real tritonserver, on the golden checkpoints."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client import tensors as T
from client.tokenize import TokenizerStream, chunks, new_stream_id, tokenize
from export.deploy_config import load_config
from export.render import build_repository
from tests.conftest import ROOT
from tests.triton_helpers import start_server

pytestmark = pytest.mark.integration

IDLE_TIMEOUT_S = 3.0
MAX_AUDIO_S = 20.0
STREAM_SEGMENT_MS = 1200


@pytest.fixture(scope="module")
def server(golden_tokenizer_dir, tmp_path_factory):
    cfg = load_config("cpu", golden_tokenizer_dir, [
        f"audio_tokenizer.max_audio_s={MAX_AUDIO_S}",
        f"audio_tokenizer_stream.idle_timeout_s={IDLE_TIMEOUT_S}",
        f"audio_tokenizer_stream.segment_ms={STREAM_SEGMENT_MS}",
        f"audio_tokenizer_stream.max_audio_s={MAX_AUDIO_S}",
    ])
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    build_repository(cfg, repo)
    with start_server(repo, timeout_s=180) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.mark.parametrize("case", [1, 2, 3])
def test_offline_golden_parity_through_server(golden_tokenizer_dir, client, case):
    wav = np.load(golden_tokenizer_dir / f"case{case}_wav16k.npy")
    g = np.load(golden_tokenizer_dir / f"case{case}.npz")
    reply = tokenize(client, wav, 16000)
    np.testing.assert_array_equal(reply.audio_tokens, g["audio_N"])
    assert reply.token_string == (golden_tokenizer_dir / f"case{case}_token_str.txt").read_text().strip()


def test_client_cli_prints_case_token_string(golden_tokenizer_dir, server):
    for case in (1, 2, 3):
        out = subprocess.run(
            [sys.executable, "-m", "client", "tokenize", "--url", server.grpc_url,
             str(golden_tokenizer_dir / f"case{case}_wav16k.wav")],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()
        assert out == (golden_tokenizer_dir / f"case{case}_token_str.txt").read_text().strip()


def _expected_stream(tok, audio, sr):
    return tok.tokenize(audio, sr, STREAM_SEGMENT_MS, "running").audio_n


def _stream_through(client, audio, sr, chunk_ms=20):
    s = TokenizerStream(client, sr)
    got = [s.send(p).audio_tokens for p in chunks(audio, sr * chunk_ms // 1000)]
    got.append(s.finish().audio_tokens)
    return np.concatenate(got)


def test_streaming_equals_offline_same_settings(golden_tokenizer_dir, golden_tokenizer, client):
    wav = np.load(golden_tokenizer_dir / "case1_wav16k.npy")
    got = _stream_through(client, wav, 16000)
    np.testing.assert_array_equal(got, _expected_stream(golden_tokenizer, wav, 16000))


def test_eight_concurrent_sessions_are_isolated(golden_tokenizer_dir, golden_tokenizer, server, speech_16k):
    audios = [np.load(golden_tokenizer_dir / f"case{c}_wav16k.npy") for c in (1, 2, 3)] + [speech_16k]
    jobs = [(audios[i % 4] * (0.5 + 0.1 * i)).astype(np.float32) for i in range(8)]
    expected = [_expected_stream(golden_tokenizer, a, 16000) for a in jobs]
    results: list = [None] * 8

    def run(i):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            results[i] = _stream_through(c, jobs[i], 16000, chunk_ms=100)
        except Exception as exc:
            results[i] = exc
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(8):
        assert not isinstance(results[i], Exception), results[i]
        np.testing.assert_array_equal(results[i], expected[i], err_msg=f"session {i}")


def _raw_offline(client, audio, sr, audio_dtype="FP32"):
    a = grpcclient.InferInput("audio", list(audio.shape), audio_dtype)
    a.set_data_from_numpy(audio)
    s = grpcclient.InferInput("sample_rate_hz", [1], "INT32")
    s.set_data_from_numpy(np.array([sr], np.int32))
    return client.infer(T.AUDIO_TOKENIZER, [a, s])


@pytest.mark.parametrize(
    "audio,sr,dtype,match",
    [
        (np.zeros(0, np.float32), 16000, "FP32", "empty"),
        (np.array([0.1, np.nan] * 800, np.float32), 16000, "FP32", "NaN"),
        (np.zeros(1600, np.float32), 4000, "FP32", "outside the supported range"),
        (np.zeros(1600, np.float32), 96000, "FP32", "outside the supported range"),
        (np.zeros(int(16000 * (MAX_AUDIO_S + 1)), np.float32), 16000, "FP32", "maximum"),
        (np.zeros(1600, np.int32), 16000, "INT32", "data-type"),
        (np.zeros((2, 800), np.float32), 16000, "FP32", "shape"),
    ],
)
def test_bad_offline_input_is_an_error_and_server_keeps_serving(golden_tokenizer_dir, client, audio, sr, dtype,
                                                                 match):
    with pytest.raises(InferenceServerException, match=match):
        _raw_offline(client, audio, sr, dtype)
    wav = np.load(golden_tokenizer_dir / "case2_wav16k.npy")
    g = np.load(golden_tokenizer_dir / "case2.npz")
    np.testing.assert_array_equal(tokenize(client, wav, 16000).audio_tokens, g["audio_N"])


def test_unknown_stream_id_is_an_error(client):
    a = grpcclient.InferInput("audio", [1, 160], "FP32")
    a.set_data_from_numpy(np.zeros((1, 160), np.float32))
    s = grpcclient.InferInput("sample_rate_hz", [1, 1], "INT32")
    s.set_data_from_numpy(np.array([[16000]], np.int32))
    with pytest.raises(InferenceServerException):
        client.infer(T.AUDIO_TOKENIZER_STREAM, [a, s], sequence_id=new_stream_id(), sequence_start=False)


def test_bad_chunk_keeps_the_stream(golden_tokenizer_dir, golden_tokenizer, client):
    wav = np.load(golden_tokenizer_dir / "case3_wav16k.npy")
    s = TokenizerStream(client, 16000)
    got = [s.send(wav[:8000]).audio_tokens]
    with pytest.raises(InferenceServerException, match="NaN"):
        s.send(np.full(160, np.nan, np.float32))
    got.append(s.send(wav[8000:]).audio_tokens)
    got.append(s.finish().audio_tokens)
    np.testing.assert_array_equal(np.concatenate(got), _expected_stream(golden_tokenizer, wav, 16000))


def _open_streams(server) -> float:
    text = urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=5).read().decode()
    vals = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("audio_tokenizer_open_streams")]
    assert vals, "custom gauge audio_tokenizer_open_streams missing from /metrics"
    return sum(vals)


def test_cancel_frees_the_stream(client, server):
    s = TokenizerStream(client, 16000)
    s.send(np.zeros(1600, np.float32))
    s.cancel()
    with pytest.raises(InferenceServerException):
        client.infer(T.AUDIO_TOKENIZER_STREAM, _chunk_inputs(), sequence_id=s.stream_id, sequence_start=False)
    assert _open_streams(server) == 0


def _chunk_inputs():
    a = grpcclient.InferInput("audio", [1, 160], "FP32")
    a.set_data_from_numpy(np.zeros((1, 160), np.float32))
    s = grpcclient.InferInput("sample_rate_hz", [1, 1], "INT32")
    s.set_data_from_numpy(np.array([[16000]], np.int32))
    return [a, s]


def test_idle_stream_expires(client, server):
    s = TokenizerStream(client, 16000)
    s.send(np.zeros(1600, np.float32))
    time.sleep(IDLE_TIMEOUT_S + 2.0)
    assert _open_streams(server) == 0  # freed by the sweeper, without any new request
    with pytest.raises(InferenceServerException):
        s.send(np.zeros(1600, np.float32))
