"""speaker_embedding and the streaming token2wav model in a real tritonserver (tiny checkpoints)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.token2wav import Token2WavStream, speaker_embedding
from tests.test_triton_tts import _gauge, _wait_gauge

pytestmark = pytest.mark.integration
DECODER = "CosyVoice-300M-25Hz"
GAUGE = "token2wav_open_streams"


@pytest.fixture
def client(tiny_server):
    c = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    yield c
    c.close()


def _voice(seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 5120, 30)
    mel = rng.standard_normal((int(30 / 25 * 22050 / 256), 80)).astype(np.float32) - 5.0
    return tokens, mel, rng.standard_normal(192).astype(np.float32)


def _tokens(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5120, n)


def test_streamed_audio_equals_the_core_session_with_the_served_onnx_files(client, tiny_server, tiny_checkpoints):
    from stepaudio.tts.chunking import ChunkPolicy
    from stepaudio.tts.token2wav import PromptVoice, load_token2wav

    tokens, voice = _tokens(70), _voice()
    s = Token2WavStream(client, *voice, seed=3)
    served = [s.push(tokens[i:i + 10]) for i in range(0, 70, 10)] + [s.finish()]
    assert sum(a.size for a in served[:-1]) > 0  # audio left before the end: it streams
    onnx_dir = tiny_server.model_repository / "token2wav" / "1" / "onnx" / DECODER
    assert (onnx_dir / "flow_estimator.onnx").is_file() and (onnx_dir / "hift_decoder.onnx").is_file()
    t2w = load_token2wav(tiny_checkpoints / "Step-Audio-TTS-3B" / DECODER, onnx_dir=onnx_dir)
    local = t2w.session(PromptVoice.of(*voice), seed=3, policy=ChunkPolicy())
    expected = [np.concatenate(local.push(tokens[i:i + 10]) or [np.zeros(0, np.float32)])
                for i in range(0, 70, 10)] + [np.concatenate(local.finish() or [np.zeros(0, np.float32)])]
    for got, want in zip(served, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert _wait_gauge(tiny_server, GAUGE, 0) == 0  # freed on end


def test_state_is_freed_on_cancel_and_on_a_failed_start(client, tiny_server):
    s = Token2WavStream(client, *_voice(), seed=1)
    s.push(_tokens(10))
    assert _gauge(tiny_server, GAUGE) == 1
    s.cancel()
    assert _wait_gauge(tiny_server, GAUGE, 0) == 0
    bad = Token2WavStream(client, *_voice(), seed=1)
    with pytest.raises(InferenceServerException, match=r"0\.\.5119"):
        bad.push([1, 2, 9999])
    assert _gauge(tiny_server, GAUGE) == 0  # a stream whose first push failed never began


def test_bad_pushes_are_named_and_leave_other_streams_alone(client, tiny_server):
    good = Token2WavStream(client, *_voice(), seed=2)
    good.push(_tokens(10))
    with pytest.raises(InferenceServerException, match="not a whole number of 80-bin frames"):
        Token2WavStream(client, _voice()[0], np.zeros(81, np.float32), _voice()[2]).push([1])
    with pytest.raises(InferenceServerException, match="unknown decoder"):
        Token2WavStream(client, *_voice(), decoder="Nope").push([1])
    with pytest.raises(InferenceServerException, match=r"0\.\.5119"):
        good.push([-1])  # a later bad push is refused without touching the stream
    assert good.finish(_tokens(30)).size > 0
    assert _wait_gauge(tiny_server, GAUGE, 0) == 0


def test_speaker_embedding_matches_the_core(client, tiny_checkpoints):
    from stepaudio.tts.speaker import SpeakerEmbedder

    audio = (0.3 * np.sin(np.arange(24000) * 0.05) + 0.05 * np.random.default_rng(0).standard_normal(24000))
    audio = audio.astype(np.float32)
    got = speaker_embedding(client, audio, 24000)
    want = SpeakerEmbedder.from_decoder_dir(tiny_checkpoints / "Step-Audio-TTS-3B" / DECODER).embed(audio, 24000)
    assert got.shape == (192,)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(InferenceServerException, match="NaN"):
        speaker_embedding(client, np.full(16000, np.nan, np.float32), 16000)
