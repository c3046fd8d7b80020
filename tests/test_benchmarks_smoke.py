"""Smoke-sized runs of the benchmark scripts (tiny checkpoints, seconds of audio, no tritonserver).

Both entry points run in this process (the tokenizer benchmark still measures in a worker subprocess),
on the session's tiny checkpoints, into a temporary output folder; the tests check the JSON they write.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from tests.conftest import GOLDEN_TOKENIZER

pytestmark = pytest.mark.slow

TOKENS_PER_S = 125 / 3  # 5 <audio_N> per 120 ms group


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_checkpoints):
    import torch

    from benchmarks import segment_sweep, tokenizer_bench

    out = tmp_path_factory.mktemp("bench-results")
    ckpts = tmp_path_factory.mktemp("bench-checkpoints")
    (ckpts / "tiny").symlink_to(tiny_checkpoints, target_is_directory=True)  # the scripts' DIR/<size> layout
    common = ["--checkpoints", str(ckpts), "--out", str(out)]
    threads = torch.get_num_threads()  # the sweep sets its own
    docs = {}
    try:
        for name, main, argv in (
            ("tokenizer_bench", tokenizer_bench.main,
             ["--sizes", "tiny", "--threads", "1", "--seconds", "3", "--warmup-s", "1", "--no-triton", *common]),
            ("segment_sweep", segment_sweep.main, ["--segments", "1200,2400,30000", "--utterances", "1", *common]),
        ):
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                assert main(argv) == 0
            docs[name] = (json.loads((out / f"{name}.json").read_text()), stdout.getvalue())
    finally:
        torch.set_num_threads(threads)
    return docs


def _envelope(doc, name):
    assert doc["name"] == name
    assert set(doc) >= {"timestamp_utc", "git", "machine", "config", "results"}
    assert set(doc["git"]) == {"sha", "dirty"}
    m = doc["machine"]
    assert m["cores"] >= 1 and m["cpu_model"] and m["torch_threads"] >= 1


def _finite_positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tokenizer_bench_json(outputs):
    doc, _ = outputs["tokenizer_bench"]
    _envelope(doc, "tokenizer_bench")
    res = doc["results"]
    assert res["triton"] is None  # --no-triton
    assert res["goal"]["met"] is None  # no full-size run
    r = res["in_process"]["tiny"]["threads_1"]
    assert r["torch_threads"] == 1 and r["audio_s"] == pytest.approx(3.0)
    st, off = r["streaming"], r["offline"]
    assert (st["segment_ms"], st["normalization"]) == (2400, "running")
    assert st["chunks"] == 30
    for rtf in (st["rtf"], off["rtf"], st["cpu_rtf"], off["cpu_rtf"]):
        assert _finite_positive(rtf) and rtf < 5
    lat = st["chunk_latency_ms"]
    assert lat["count"] == 30 and 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert set(st["chunk_latency_ms_by_kind"]) <= {"buffer_only", "vq02_stride", "vq06_segment"}
    assert st["flush_latency_ms"] >= 0
    assert abs(st["tokens"] - 3 * TOKENS_PER_S) <= 10 and abs(off["tokens"] - st["tokens"]) <= 10
    assert _finite_positive(st["tokens_per_compute_s"])
    stages = st["stages"]
    assert set(stages) == {"vq02_fbank", "vq02_encoder", "vq02_kmeans", "vq06_logmel", "vq06_onnx", "session_other"}
    assert stages["vq02_encoder"]["calls"] > 0 and stages["vq06_onnx"]["calls"] > 0
    assert sum(v["seconds"] for v in stages.values()) == pytest.approx(st["compute_s"], abs=2e-3)
    assert not r["instrumentation_missing"]
    assert r["peak_rss_mb"] >= r["rss_after_load_mb"] > 50
    assert set(r["encoder"]["linear_layers_by_batch"]) == {"batch_1", "batch_4", "batch_16"}
    assert 0 <= r["background_load"]["other_cpu_share"] <= 1 and "waited_s" in r["before"]
    assert res["machine_parallel_speedup"]["speedup"] > 0
    assert res["summary"]["tiny/threads_1"]["streaming_rtf"] == st["rtf"]


def test_segment_sweep_json(outputs):
    doc, stdout = outputs["segment_sweep"]
    _envelope(doc, "segment_sweep")
    res = doc["results"]
    assert "mismatching tokens" in stdout
    keys = [f"{s}/{n}" for s in (1200, 2400, 30000) for n in ("running", "utterance")]
    sp = res["speech/tiny"]
    assert sp["shortcut_verified"] is True
    assert set(sp["totals"]) == set(keys)
    for k in keys:
        t = sp["totals"][k]
        assert 0 <= t["vq02_diff"] <= t["vq02_tokens"] and 0 <= t["vq06_diff"] <= t["vq06_tokens"]
        assert 0 <= t["vq06_diff_rate"] <= 1
    # The reference configuration agrees with itself, and vq02 never depends on L.
    ref = sp["totals"]["30000/utterance"]
    assert ref["vq02_diff"] == ref["vq06_diff"] == 0
    assert sp["totals"]["1200/utterance"]["vq02_diff"] == 0
    assert 0 <= res["background_load"]["other_cpu_share"] <= 1
    lat = res["latency"]["by_model"]["tiny"]
    assert set(lat) == {"1200", "2400", "30000", "before", "background_load"}
    for s in ("1200", "2400", "30000"):
        assert lat[s]["worst_case_vq06_delay_ms"] >= int(s) and lat[s]["segment_compute_ms"] > 0
        assert lat[s]["segment_cpu_ms"] > 0
    if (GOLDEN_TOKENIZER / "Step-Audio-Tokenizer").is_dir():
        g = res["golden"]
        assert all(u["reference_equals_golden"] for u in g["per_utterance"].values())
        assert g["totals"]["30000/utterance"]["vq06_diff"] == 0
    else:
        assert "skipped" in res["golden"]


def test_machine_info_probes_the_host_speed():
    """Every result records how fast its host runs a fixed interpreted loop and an elementwise kernel, so
    runs on different hosts of the same VM can be told apart; the probe can be left out."""
    from benchmarks.common import host_speed, machine_info

    speed = host_speed(repeats=2)
    assert set(speed) == {"python_mloops_per_s", "numpy_mexp_per_s"}
    assert all(math.isfinite(v) and v > 0 for v in speed.values())
    assert set(machine_info(include_torch=False)["host_speed"]) == set(speed)
    assert "host_speed" not in machine_info(include_torch=False, probe_speed=False)
