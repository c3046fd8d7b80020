"""chat_llm and tts_lm in a real tritonserver on the tiny official-layout checkpoints."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.chat import build_inputs, stream_generate
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tiny_server):
    return tiny_server


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _local(ckpt, name):
    from stepaudio.llm.engine import Engine
    from stepaudio.llm.loader import load_step1
    from stepaudio.llm.text_tokenizer import TextTokenizer

    return Engine(load_step1(ckpt / name, dtype="float32")), TextTokenizer(ckpt / name)


def test_chat_streams_text_and_matches_local_engine(tiny_checkpoints, client):
    from stepaudio.llm.detokenize import IncrementalDetokenizer
    from stepaudio.llm.sampling import SamplingParams

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "你好! Hello"}]
    chunks = list(stream_generate(client, "chat_llm", build_inputs(messages=messages, max_new_tokens=12,
                                                                   temperature=0.0)))
    ids = [t for c in chunks for t in c.token_ids]
    assert chunks[-1].finish_reason in ("length", "stop") and chunks[-1].completion_tokens == len(ids)
    assert all(c.finish_reason == "" for c in chunks[:-1])
    engine, tok = _local(tiny_checkpoints, "Step-Audio-Chat")
    prompt = tok.encode_chat(messages)
    assert chunks[-1].prompt_tokens == len(prompt)
    expected = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=12))
    assert ids == expected
    d = IncrementalDetokenizer(tok, skip_special_tokens=True)
    assert "".join(c.text for c in chunks) == d.feed_many(expected) + d.finish()


def test_repeated_conversation_reuses_prefix(client):
    messages = [{"role": "user", "content": "a long enough question " * 8}]
    first = list(stream_generate(client, "chat_llm", build_inputs(messages=messages, max_new_tokens=4)))
    second = list(stream_generate(client, "chat_llm", build_inputs(messages=messages, max_new_tokens=4)))
    assert first[-1].cached_prompt_tokens == 0 or first[-1].cached_prompt_tokens < second[-1].cached_prompt_tokens
    assert second[-1].cached_prompt_tokens >= 16


def test_tts_lm_takes_prompt_ids(tiny_checkpoints, client):
    from stepaudio.llm.sampling import SamplingParams

    prompt = [1, 4, 400, 15, 3, 4, 385, 15] + [65536 + n for n in range(0, 40, 3)]
    chunks = list(stream_generate(client, "tts_lm", build_inputs(prompt_ids=prompt, max_new_tokens=15,
                                                                 temperature=0.0)))
    ids = [t for c in chunks for t in c.token_ids]
    engine, _ = _local(tiny_checkpoints, "Step-Audio-TTS-3B")
    assert ids == engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=15, repetition_window=10))
    assert all(c.text == "" for c in chunks)
    # the same request, answered in groups of at least 4 ids (the last may hold fewer)
    grouped = list(stream_generate(client, "tts_lm", build_inputs(prompt_ids=prompt, max_new_tokens=15,
                                                                  temperature=0.0, min_tokens_per_response=4)))
    assert [t for c in grouped for t in c.token_ids] == ids
    assert all(len(c.token_ids) >= 4 for c in grouped[:-1]) and len(grouped) <= 4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompt_ids=[1, 99999]), "outside the vocabulary"),
        (dict(prompt_ids=[]), "empty prompt"),
        (dict(prompt_ids=[5] * 5000), "context"),
        (dict(prompt_ids=[1, 4], top_p=0.0), "top_p"),
        (dict(prompt_ids=[1, 4], temperature=float("nan")), "temperature"),
        (dict(prompt_ids=[1, 4], max_new_tokens=0), "max_new_tokens"),
        (dict(prompt_ids=[1, 4], min_tokens_per_response=0), "min_tokens_per_response"),
        (dict(), "exactly one of"),
        (dict(messages=[{"role": "user", "content": "x"}], prompt_ids=[1]), "exactly one of"),
    ],
)
def test_bad_requests_are_errors_and_the_instance_keeps_serving(client, kwargs, match):
    with pytest.raises(InferenceServerException, match=match):
        list(stream_generate(client, "chat_llm", build_inputs(**kwargs)))
    ok = list(stream_generate(client, "chat_llm", build_inputs(prompt_ids=[1, 4, 385], max_new_tokens=2)))
    assert ok[-1].completion_tokens == 2


def test_malformed_json(client):
    import json

    for bad in ("{not json", json.dumps({"role": "user"}), json.dumps([{"content": "x"}])):
        inp = grpcclient.InferInput("messages_json", [1], "BYTES")
        inp.set_data_from_numpy(np.array([bad.encode()], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="messages_json"):
            list(stream_generate(client, "chat_llm", [inp]))


def test_client_cancellation_frees_the_slot(server):
    """With one slot, a request after a cancelled 4000-token one only finishes if the slot was freed."""
    import queue

    c = grpcclient.InferenceServerClient(server.grpc_url)
    q: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    c.async_stream_infer("chat_llm", build_inputs(prompt_ids=[1, 4, 385, 15], max_new_tokens=4000,
                                                  temperature=1.0), enable_empty_final_response=True)
    for _ in range(3):
        _result, e = q.get(timeout=30)
        assert e is None
    c.stop_stream(cancel_requests=True)
    c.close()
    t0 = time.perf_counter()
    c2 = grpcclient.InferenceServerClient(server.grpc_url)
    out = list(stream_generate(c2, "chat_llm", build_inputs(prompt_ids=[1, 4, 385], max_new_tokens=3),
                               timeout_s=20))
    c2.close()
    assert out[-1].completion_tokens == 3
    assert time.perf_counter() - t0 < 15  # the 4000-token request would take minutes


def test_cancel_by_request_id_from_another_connection(server):
    """The control request stops a running stream (finish_reason "cancelled") and frees the one slot;
    a cancel that overtakes its request is applied when the request arrives."""
    from client.chat import cancel

    c = grpcclient.InferenceServerClient(server.grpc_url)
    long = stream_generate(c, "chat_llm", build_inputs(prompt_ids=[1, 4, 385, 15], max_new_tokens=4000,
                                                       temperature=1.0, request_id="long-1"))
    first = next(long)
    assert first.finish_reason == ""
    other = grpcclient.InferenceServerClient(server.grpc_url)
    cancel(other, "chat_llm", "long-1")
    rest = list(long)
    assert rest[-1].finish_reason == "cancelled" and len(rest) < 3000
    cancel(other, "chat_llm", "early-1")  # nothing runs with this id yet
    early = list(stream_generate(other, "chat_llm", build_inputs(prompt_ids=[1, 4], max_new_tokens=4000,
                                                                 request_id="early-1"), timeout_s=20))
    assert early[-1].finish_reason == "cancelled" and early[-1].completion_tokens < 10
    out = list(stream_generate(other, "chat_llm", build_inputs(prompt_ids=[1, 4, 385], max_new_tokens=3)))
    assert out[-1].completion_tokens == 3
    c.close()
    other.close()


def test_concurrent_streams(server):
    results = {}

    def run(i):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            chunks = list(stream_generate(c, "tts_lm", build_inputs(prompt_ids=[1, 4, 385, 15 + i],
                                                                    max_new_tokens=10, seed=i)))
            results[i] = chunks[-1].completion_tokens
        except Exception as exc:
            results[i] = exc
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: 10 for i in range(6)}


def test_client_cli_chat(server):
    out = subprocess.run([sys.executable, "-m", "client", "chat", "--url", server.grpc_url, "--max-new-tokens", "5",
                          "-v", "hello"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "5 new" in out.stderr and out.stdout.strip()


def test_tts_lm_with_the_audio_head(tiny_checkpoints, tmp_path):
    """``tts_lm.output_vocab=audio`` through a real server (tts_lm alone): greedy ids equal a local engine
    with the same restricted head, and are audio ids only (the stock tiny TTS LM mostly picks text ids)."""
    import shutil

    from export.deploy_config import load_config
    from export.render import build_repository
    from stepaudio.llm.prompts import AUDIO_TOKEN_OFFSET, EOT_ID, tts_output_ids
    from stepaudio.llm.sampling import SamplingParams
    from tests.triton_helpers import start_server

    repo = tmp_path / "model_repository"
    build_repository(load_config("cpu", tiny_checkpoints, ["tts_lm.output_vocab=audio"]), repo)
    for model in repo.iterdir():
        if model.name != "tts_lm":
            shutil.rmtree(model)
    prompt = [1, 4, 400, 15, 3, 4, 385, 15] + [65536 + n for n in range(0, 40, 3)]
    with start_server(repo, timeout_s=300, log_path=tmp_path / "tritonserver.log") as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            chunks = list(stream_generate(c, "tts_lm", build_inputs(prompt_ids=prompt, max_new_tokens=30,
                                                                    temperature=0.0)))
        finally:
            c.close()
    ids = [t for ch in chunks for t in ch.token_ids]
    engine, _ = _local(tiny_checkpoints, "Step-Audio-TTS-3B")
    engine.model.restrict_head(tts_output_ids())
    assert ids == engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=30, repetition_window=10))
    assert ids and all(t >= AUDIO_TOKEN_OFFSET or t == EOT_ID for t in ids)
