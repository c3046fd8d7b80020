"""Smoke-sized runs of benchmarks.tts_bench and benchmarks.gpu_check, and the helpers they rely on.

* the token2wav part at tiny size (the session's tiny CosyVoice folder, 1.5 s of tokens, 1 thread);
* the triton part against the session's tiny server (``--url``; integration);
* gpu_check ``--device cpu --quick`` in a subprocess where the packages the GPU machine lacks
  (funasr, kaldi-native-fbank, tritonclient, librosa, soundfile, pytriton, torchaudio, onnx) cannot be
  imported;
* the audio-only LM variant, the full-size decoder dimensions, the playback-stall arithmetic.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys

import pytest

from tests.conftest import GOLDEN, ROOT

pytestmark = pytest.mark.slow


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _run(argv: list[str]) -> None:
    import torch

    from benchmarks import tts_bench

    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert tts_bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def t2w_doc(tmp_path_factory, tiny_checkpoints):
    out = tmp_path_factory.mktemp("tts-bench")
    ckpts = tmp_path_factory.mktemp("tts-bench-checkpoints")
    (ckpts / "tiny").symlink_to(tiny_checkpoints, target_is_directory=True)
    _run(["--parts", "token2wav", "--t2w-size", "tiny", "--speech-s", "1.5", "--prompt-s", "0.5", "--threads", "1",
          "--wait-quiet-s", "0", "--retries", "0", "--checkpoints", str(ckpts), "--out", str(out)])
    return json.loads((out / "tts_bench.json").read_text())


def test_token2wav_part(t2w_doc):
    doc = t2w_doc
    assert doc["name"] == "tts_bench" and set(doc["git"]) == {"sha", "dirty"}
    m = doc["machine"]
    assert m["cores"] >= 1 and m["torch"] and len(m["loadavg_at_start"]) == 3
    res = doc["results"]
    assert res["triton"] is None
    t = res["token2wav"]
    w = t["workload"]
    assert w["speech_tokens"] == 62 and w["prompt_tokens"] == 21 and w["flow_steps"] == 10
    assert set(t["onnx_files_mb"]) == {"flow_condition", "flow_estimator", "hift_decoder"}
    by = t["threads_1"]
    assert set(by) == {"pytorch", "onnxruntime"}
    for backend, e in by.items():
        off, st = e["offline"], e["streaming"]
        for v in (off["rtf"], off["flow_rtf"], off["vocoder_rtf"], off["cpu_rtf"], st["rtf"], st["first_chunk_compute_s"]):
            assert _pos(v), (backend, v)
        assert off["compute_s"] == pytest.approx(off["flow_s"] + off["vocoder_s"], abs=2e-3)
        assert st["first_chunk_tokens"] == 25  # the default policy: 20 tokens + 5 of look-ahead
        assert sum(st["chunk_tokens"]) == w["speech_tokens"] and len(st["chunk_flow_s"]) == st["chunks"]
        assert st["vs_offline"]["same_length"] and st["audio_s"] == off["audio_s"]
        for x in (off, st):
            assert 0 <= x["load"]["other_cpu_share"] <= 1 and "loadavg_1m_before" in x["load"]
    # ONNX Runtime replaces the estimator and HiFT decoder with the same arithmetic
    assert by["onnxruntime"]["offline_vs_pytorch"]["max_abs_diff"] < 1e-3
    assert set(res["summary"]) == {"token2wav/threads_1/pytorch", "token2wav/threads_1/onnxruntime"}


@pytest.mark.integration
def test_triton_part_against_a_running_server(tiny_server, tmp_path):
    texts = "(高兴1)你好，今天天气不错。|(RAP)我们一起去海边。"
    _run(["--parts", "triton", "--url", tiny_server.grpc_url, "--concurrency", "1,2", "--repeats", "1",
          "--texts", texts, "--max-new-tokens-audio-only", "300", "--wait-quiet-s", "0", "--retries", "0",
          "--out", str(tmp_path)])
    res = json.loads((tmp_path / "tts_bench.json").read_text())["results"]
    r = res["triton"]["served"]
    assert r["server_cpu_known"] is False and r["max_new_tokens"] == 300
    for c, rounds in ((1, 2), (2, 1)):
        x = r[f"concurrency_{c}"]
        assert len(x["rounds"]) == rounds and x["summary"]["requests"] == 2 and x["summary"]["failed_requests"] == 0
        for rnd in x["rounds"]:
            assert len(rnd["requests"]) == c and _pos(rnd["wall_s"])
            for q in rnd["requests"]:
                assert q["seed"] in (1, 2) and _pos(q["total_s"])
                if q["audio_s"]:
                    assert 0 < q["first_chunk_s"] <= q["total_s"] and _pos(q["rtf"]) and q["stall_s"] >= 0
                    assert len(q["chunk_arrival_s"]) == q["chunks"]
    assert "triton/served/concurrency_1" in res["summary"]


def test_gpu_check_quick_on_cpu_without_the_missing_packages(tmp_path):
    blocked = ("funasr", "kaldi_native_fbank", "tritonclient", "librosa", "soundfile", "pytriton", "torchaudio", "onnx")
    code = (
        "import runpy, sys\n"
        f"for m in {blocked!r}:\n"
        "    sys.modules[m] = None\n"
        f"sys.argv = ['gpu_check', '--device', 'cpu', '--quick', '--out', {str(tmp_path)!r}]\n"
        "runpy.run_module('benchmarks.gpu_check', run_name='__main__', alter_sys=True)\n"
    )
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    res = doc["results"]
    secs = res["sections"]
    assert set(secs) == {"correctness", "step1_speed", "token2wav", "attention"}
    assert all(s["ok"] for s in secs.values()), {k: s.get("error") for k, s in secs.items()}
    c = secs["correctness"]["result"]
    for kind in ("tts", "chat"):
        assert c[kind]["cpu_float32"]["all_equal"]  # the same device: identical ids
        assert c[kind]["cpu_float32_batch_vs_single_equal"]
        assert "all_equal" in c[kind]["cpu_bfloat16"]
    s = secs["step1_speed"]["result"]
    assert set(s["engine_decode"]) == {"batch_1", "batch_2"} and _pos(s["engine_decode"]["batch_2"]["decode_tokens_per_s"])
    assert set(s["prefill"]) == {"tokens_32", "tokens_64"}
    t = secs["token2wav"]["result"]
    for dt in ("float32", "bfloat16"):
        assert _pos(t[dt]["offline"]["rtf"]) and _pos(t[dt]["streaming"]["rtf"]) and t[dt]["offline"]["wav_finite"]
    a = secs["attention"]["result"]
    assert max(a["slopes_vs_paper_formula_max_abs_diff"].values()) < 1e-6
    assert a["float32"]["ours_prefill_max_abs_diff"] < 1e-5 and a["float32"]["ours_decode_max_abs_diff"] < 1e-5
    assert a["bfloat16"]["ours_prefill_max_abs_diff"] < 0.05


def test_audio_only_lm_emits_only_audio_ids(tiny_checkpoints, tmp_path):
    from benchmarks.tts_bench import AUDIO_ID_OFFSET, N_AUDIO_IDS, write_audio_only_tts
    from stepaudio.llm.engine import Engine
    from stepaudio.llm.loader import load_step1
    from stepaudio.llm.sampling import SamplingParams

    info = write_audio_only_tts(tiny_checkpoints / "Step-Audio-TTS-3B", tmp_path / "Step-Audio-TTS-3B")
    assert info == {"lm_head_rows_zeroed": 74752 - N_AUDIO_IDS, "audio_id_rows_kept": N_AUDIO_IDS}
    model = load_step1(tmp_path / "Step-Audio-TTS-3B", dtype="float32")
    ids = Engine(model).generate([1, 4, 100, 200, 3, 4], SamplingParams.for_tts(seed=3, max_new_tokens=40))
    assert len(ids) == 40 and all(AUDIO_ID_OFFSET <= i < AUDIO_ID_OFFSET + N_AUDIO_IDS for i in ids)


def test_full_size_decoder_has_the_official_shapes():
    from benchmarks.cosyvoice_full import OFFICIAL_PARAMETERS, build_full_size

    flow, hift = build_full_size("meta", fold_weight_norm=False)  # raises if the parameter counts differ
    assert sum(p.numel() for p in flow.parameters()) == OFFICIAL_PARAMETERS["flow"]
    keys = GOLDEN / "token2wav" / "official_300m_keys.json"
    if not keys.is_file():
        pytest.skip(f"{keys} not found")
    record = json.loads(keys.read_text())
    official = {n: s for n, s, _ in record["step_25hz_dual_codebook_vocab5120_assumed"]["flow"]["state_dict"]}
    assert {k: list(v.shape) for k, v in flow.state_dict().items()} == official
    assert {k: list(v.shape) for k, v in hift.state_dict().items()} == {n: s for n, s, _ in record["hift"]["state_dict"]}


def test_playback_stall():
    from benchmarks.tts_bench import SAMPLE_RATE_HZ, playback_stall_s

    sr = SAMPLE_RATE_HZ
    # 1 s of audio at t=0.5, the next second at t=1.2 (in time), the last at t=3.0 (0.5 s late)
    assert playback_stall_s([(0.5, sr), (1.2, sr), (3.0, sr)]) == pytest.approx(0.5)
    assert playback_stall_s([(0.1, sr // 2)]) == 0.0
