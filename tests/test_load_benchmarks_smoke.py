"""Smoke-sized runs of the end-to-end benchmarks and the load test against the session's tiny tritonserver:
the streaming vs sequential pipeline, the concurrency sweep (with a controller), the locust users (when
the ``bench`` extra is installed), and the suite's plots of the reused benchmarks. Plus the pure helpers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.realtime_caller import b64_len, pcm16_b64, playback_underruns
from benchmarks.stack import host_of, is_local, require_local


# -- pure helpers (fast) ------------------------------------------------------------------------------
def test_playback_underruns():
    assert playback_underruns([]) == (0.0, 0)
    # back to back, each arriving before the previous one has played out: no wait
    assert playback_underruns([(0.0, 0.1), (0.05, 0.1), (0.15, 0.1)]) == (0.0, 0)
    stall, gaps = playback_underruns([(0.0, 0.1), (0.3, 0.1), (0.405, 0.1)])
    assert stall == pytest.approx(0.205) and gaps == 1  # 0.2 s gap, then a 5 ms jitter below the tolerance


def test_b64_len_matches_decoding():
    import base64

    for n in (0, 1, 2, 3, 480, 2401):
        s = pcm16_b64(np.zeros(n, np.float32))
        assert b64_len(s) == len(base64.b64decode(s)) == 2 * n


def test_utterance_without_espeak_is_bundled_speech(monkeypatch):
    """Without espeak-ng the callers speak the bundled recordings (not a synthetic signal, which the VAD
    cuts mid-utterance), at the rate asked for, and say so."""
    import benchmarks.common as common
    from benchmarks.realtime_caller import BUNDLED_UTTERANCES, utterance
    from client.audio_io import read_wav
    from client.demo_conversation import SAMPLES

    monkeypatch.setattr(common, "espeak_available", lambda: False)
    for seed, rate_hz in ((0, 24000), (1, 16000), (len(BUNDLED_UTTERANCES), 24000)):
        name = BUNDLED_UTTERANCES[seed % len(BUNDLED_UTTERANCES)]
        ref, ref_hz = read_wav(SAMPLES / f"{name}.wav")
        audio, source = utterance("ignored", seed, rate_hz)
        assert name in source and "espeak-ng or sox missing" in source
        assert audio.dtype == np.float32
        assert abs(audio.size / rate_hz - ref.size / ref_hz) < 0.01
        assert np.abs(audio).max() > 0.05  # speech, not silence


def test_only_local_targets():
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("127.3.2.1") and is_local("[::1]")
    assert not is_local("10.0.0.1") and not is_local("192.168.1.5") and not is_local("example.com")
    assert host_of("ws://127.0.0.1:8765/v1/realtime") == "127.0.0.1"
    assert host_of("10.1.2.3:8001") == "10.1.2.3" and host_of("http://[::1]:80/metrics") == "[::1]"
    require_local("ws://localhost:1/x", "127.0.0.1:8001")
    with pytest.raises(SystemExit, match="non-local"):
        require_local("ws://10.0.0.1:8765/v1/realtime")
    require_local("ws://10.0.0.1:8765/v1/realtime", allow_remote=True)


def test_suite_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.suite import plot_prefix_reuse, plot_speculation

    recs = [{"kind": k, "voice_to_voice_s": 0.8 + 0.1 * i} for i, k in enumerate(["plain", "paused"] * 3)]
    doc = {"config": {"silence_duration_ms": 700, "callers": 2}, "results": {
        "speculation_on": {"records": recs, "controller": {"speculation": {"commit_rate": 0.5}}},
        "speculation_off": {"records": [{**r, "voice_to_voice_s": r["voice_to_voice_s"] + 0.3} for r in recs],
                            "controller": {}}}}
    assert plot_speculation(doc, tmp_path / "s.png").stat().st_size > 1000
    conv = {"prompt_tokens": [40, 90, 140], "ttft_speedup_last_turn": 2.0,
            "reuse_on": {"ttft_ms": [5, 5, 6], "ratio_last_first": 1.2, "prefilled_tokens": [40, 50, 50]},
            "reuse_off": {"ttft_ms": [5, 9, 12], "ratio_last_first": 2.4}}
    doc = {"results": {"presets": {"tiny": {"conversation": conv, "model": {
        "parameters": 7e6, "dtype": "float32", "torch_threads": 1}}}}}
    assert plot_prefix_reuse(doc, tmp_path / "p.png").stat().st_size > 1000


# -- against tritonserver -----------------------------------------------------------------------------
# The stock tiny TTS LM emits audio ids ~7% of the time: 120 tokens per request practically always give audio.
@pytest.mark.integration
@pytest.mark.slow
def test_pipeline_bench_smoke(tiny_server, tmp_path):
    from benchmarks import pipeline_bench

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert pipeline_bench.main([
            "--triton", tiny_server.grpc_url, "--served-variant", "stock", "--repeats", "1", "--utterances", "1",
            "--max-new-tokens", "6", "--speech-tokens-per-chat-token", "40", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "pipeline_bench.json").read_text())
    assert doc["name"] == "pipeline_bench" and set(doc) >= {"git", "machine", "config", "results"}
    r = doc["results"]["variants"]["stock"]
    # the same spoken turn gives both pipelines the same prompt and, with the same seed, the same reply
    assert r["same_reply"] == {**r["same_reply"], "audio_tokens_equal": True, "reply_text_equal": True,
                               "chat_tokens_equal": True}
    seq, st = r["sequential"], r["streaming"]
    assert seq["total_ms"]["count"] == st["total_ms"]["count"] == 1
    assert st["runs"][0]["tts_requests"] >= 1 and seq["runs"][0]["tts_requests"] == 1
    # every clause's speech budget adds up to the whole reply's
    assert r["same_reply"]["speech_tokens"][0][0] == r["same_reply"]["speech_tokens"][0][1]
    stages = st["stages_ms_median"]
    assert 0 <= stages["flush"] <= stages["chat_first_token"] <= stages["chat_done"] <= stages["tts_done"]
    if st["runs_without_audio"] == 0 and seq["runs_without_audio"] == 0:
        assert r["first_audio_ratio"]["p50_over_p50"] > 0
    assert (tmp_path / "pipeline_bench.png").stat().st_size > 1000
    assert "sooner streaming" in stdout.getvalue()


@pytest.mark.integration
@pytest.mark.slow
def test_concurrency_bench_smoke(tiny_server, tmp_path):
    from benchmarks import concurrency_bench

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert concurrency_bench.main([
            "--triton", tiny_server.grpc_url, "--sessions", "1,2", "--turns-min", "1", "--turns-total-min", "1",
            "--max-reply-tokens", "6", "--tts-max-new-tokens", "120", "--spread-s", "0.5",
            "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "concurrency_bench.json").read_text())
    r = doc["results"]
    assert [lv["sessions"] for lv in r["levels"]] == [1, 2]
    for lv in r["levels"]:
        s = lv["summary"]
        assert s["turns"] == lv["sessions"] and not lv["session_errors"]
        assert set(s["checks"]) == {"all_turns_answered", "v2v_p90", "underrun_p90", "end_of_turn_lag_p90",
                                    "server_alive"}
        assert isinstance(s["held"], bool) and s["turns_ok"] >= 1
        # the VAD waits 700 ms of silence before the turn can end
        assert s["voice_to_voice_s"]["p50"] > 0.6 and math.isfinite(s["voice_to_voice_s"]["max"])
        assert lv["speculation"]["started"] >= 1
        assert lv["cpu_s"]["controller"] > 0 and lv["cpu_s"]["callers (load generator)"] > 0
    assert r["max_sessions_held"] in (0, 1, 2)
    assert (tmp_path / "concurrency_bench.png").stat().st_size > 1000
    assert "largest number of sessions held" in stdout.getvalue()


@pytest.mark.integration
@pytest.mark.slow
def test_locust_users_smoke(tiny_server, tmp_path):
    if importlib.util.find_spec("locust") is None or importlib.util.find_spec("websocket") is None:
        pytest.skip("the bench extra (locust, websocket-client) is not installed: make load installs it")
    from benchmarks.common import ROOT
    from controller.config import ControllerConfig
    from controller.serve import ControllerThread

    cfg = ControllerConfig(triton_url=tiny_server.grpc_url, port=0, max_reply_tokens=6, tts_max_new_tokens=120, seed=0)
    with ControllerThread(cfg) as ctl:
        proc = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"), "--headless",
             "-u", "3", "-r", "3", "-t", "15s", "--stop-timeout", "20", "--only-summary",
             "--csv", str(tmp_path / "load"), "--summary-json", str(tmp_path / "summary.json"),
             "--realtime-url", f"ws://127.0.0.1:{ctl.port}/v1/realtime", "--triton-url", tiny_server.grpc_url,
             "--tts-max-new-tokens", "120", "--chat-max-new-tokens", "6", "--max-iterations", "3"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (tmp_path / "load_stats.csv").exists(), proc.stderr[-3000:]
    doc = json.loads((tmp_path / "summary.json").read_text())
    m = doc["metrics_ms"]
    assert doc["config"]["user_classes"] == ["RealtimeCaller", "TtsStreamer", "ChatStreamer"]
    assert m["realtime connect"]["count"] == 1
    assert m["realtime voice_to_voice"]["count"] >= 1 and m["realtime voice_to_voice"]["p50"] > 600
    assert m["tts first_chunk"]["count"] >= 1 and m["chat_llm first_token"]["count"] >= 1
    assert doc["speculation"]["started"] >= 1
    assert not doc["failures"], doc["failures"]
    assert len(doc["loadavg_start"]) == 3
    stats = (tmp_path / "load_stats.csv").read_text()
    assert "voice_to_voice" in stats and "first_chunk" in stats


def test_locustfile_refuses_remote_hosts(tmp_path):
    if importlib.util.find_spec("locust") is None:
        pytest.skip("the bench extra (locust) is not installed")
    from benchmarks.common import ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"), "--headless", "-u", "1",
         "-r", "1", "-t", "5s", "--realtime-url", "ws://10.9.9.9:8765/v1/realtime", "--triton-url", "10.9.9.9:8001",
         "RealtimeCaller"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "refusing to send load to non-local" in proc.stdout + proc.stderr


# -- the caller against a scripted Realtime server (both WebSocket clients) ---------------------------
@pytest.fixture
def fake_realtime():
    """A loopback WebSocket server that answers like the controller: session.updated; once 0.5 s of audio
    has arrived, speech_stopped and a reply of three 100 ms audio deltas 50 ms apart, then response.done."""
    import base64
    import threading
    import time

    from websockets.sync.server import serve

    def handler(ws):
        received = 0
        answered = False
        for msg in ws:
            ev = json.loads(msg)
            if ev["type"] == "session.update":
                assert ev["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
                ws.send(json.dumps({"type": "session.updated", "session": ev["session"]}))
            elif ev["type"] == "input_audio_buffer.append":
                received += len(base64.b64decode(ev["audio"]))
                if received >= 48000 * 0.5 and not answered:
                    answered = True
                    ws.send(json.dumps({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 300}))
                    for _ in range(3):
                        time.sleep(0.05)
                        ws.send(json.dumps({"type": "response.output_audio.delta", "delta": pcm16_b64(
                            np.zeros(2400, np.float32))}))
                    ws.send(json.dumps({"type": "response.done", "response": {"status": "completed"}}))

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/v1/realtime"
        server.shutdown()


@pytest.mark.parametrize("transport", ["websocket-client", "websockets"])
def test_caller_measures_a_turn(fake_realtime, transport, monkeypatch):
    from benchmarks.realtime_caller import RealtimeCaller

    if transport == "websocket-client":
        pytest.importorskip("websocket")
    else:
        monkeypatch.setitem(sys.modules, "websocket", None)  # import fails: the fallback is used
    speech = 0.5 * np.sin(np.arange(7200) / 10).astype(np.float32)  # 0.3 s "speech"
    caller = RealtimeCaller(fake_realtime, frame_ms=20, silence_duration_ms=200, reply_timeout_s=10).connect()
    try:
        assert caller.ws.kind == transport
        r = caller.turn(speech)
    finally:
        caller.close()
    assert r.ok and r.status == "completed" and r.error is None
    assert r.reply_deltas == 3 and r.reply_audio_s == pytest.approx(0.3)
    # the reply starts once 0.5 s of audio has arrived at real-time pace: ~0.2 s after the end of speech
    # (bounds loose enough for a busy machine)
    assert 0.1 < r.voice_to_voice_s < 2.0 and 0.0 < r.first_audio_s < 1.0
    assert r.end_of_turn_lag_s is not None and r.response_total_s is not None
    assert 0.0 <= r.underrun_s < 0.5 and r.send_late_max_s < 0.5
