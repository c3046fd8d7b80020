"""Smoke-sized run of benchmarks.llm_bench: the tiny preset, 3 turns, concurrency 1 and 2, in this process.

The benchmark writes its own tiny Step-Audio-Chat checkpoint into a temporary folder; the test checks
the JSON it writes into tmp (keys, per-turn lengths, positive timings).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math

import pytest

pytestmark = pytest.mark.slow

TURNS = 3
CONC = (1, 2)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    import torch

    from benchmarks import llm_bench

    out = tmp_path_factory.mktemp("llm-bench")
    argv = ["--presets", "tiny", "--out", str(out), "--concurrency", ",".join(map(str, CONC)),
            "--prompt-tokens", "24", "--new-tokens", "4", "--decode-repeats", "1",
            "--turns", str(TURNS), "--turn-tokens", "12", "--conversation-repeats", "1",
            "--long-context", "40", "--long-new-tokens", "3", "--wait-quiet-s", "0", "--retries", "0",
            "--threads", "1"]
    threads = torch.get_num_threads()
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            assert llm_bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "llm_bench.json").read_text()), stdout.getvalue(), out


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_envelope(bench):
    doc, stdout, _ = bench
    assert doc["name"] == "llm_bench"
    assert set(doc) >= {"timestamp_utc", "git", "machine", "config", "results"}
    assert set(doc["git"]) == {"sha", "dirty"}
    assert doc["machine"]["torch_threads"] == 1 and doc["machine"]["cores"] >= 1
    assert doc["config"]["presets"] == ["tiny"] and doc["config"]["turns"] == TURNS
    assert "conversation TTFT" in stdout and "tok/s" in stdout


def test_decode(bench):
    doc, _, _ = bench
    res = doc["results"]
    r = res["presets"]["tiny"]
    assert r["model"]["config_preset"] == "tiny-chat" and r["model"]["dtype"] == "float32"
    for c in CONC:
        d = r["decode"][f"concurrency_{c}"]
        assert d["requests"] == c and d["prompt_tokens"] == 24
        assert d["generated_tokens"] == 4 * c  # stop_ids=(): every request runs to length
        assert d["cached_prompt_tokens"] == 0  # distinct prompts
        assert d["decode_steps"] == 3  # the prefill step yields the first token
        for v in (d["tokens_per_s"], d["decode_tokens_per_s"], d["wall_s"], d["step_latency_ms"]["p50"],
                  d["step_latency_ms"]["p99"], d["ttft_ms"]["p50"]):
            assert _pos(v)
        assert d["step_latency_ms"]["p50"] <= d["step_latency_ms"]["p99"]
        s = res["summary"]["tiny"]
        assert s["tokens_per_s"][str(c)] == d["tokens_per_s"]


def test_conversation(bench):
    doc, _, _ = bench
    res = doc["results"]
    conv = res["presets"]["tiny"]["conversation"]
    assert conv["prompt_extends_previous"] is True
    lens = conv["prompt_tokens"]
    assert len(lens) == TURNS and all(b > a for a, b in itertools.pairwise(lens))
    on, off = conv["reuse_on"], conv["reuse_off"]
    for mode in (on, off):
        assert len(mode["ttft_ms"]) == TURNS and all(_pos(x) for x in mode["ttft_ms"])
        assert _pos(mode["ratio_last_first"])
        assert len(mode["prefill_breakdown_ms"]) == TURNS
        for b in mode["prefill_breakdown_ms"]:
            assert _pos(b["forward"]) and _pos(b["fwd_attn_core"]) and _pos(b["fwd_lm_head"])
            fwd = sum(v for k, v in b.items() if k.startswith("fwd_"))
            assert fwd == pytest.approx(b["forward"], abs=0.01)
    assert off["cached_prompt_tokens"] == [0] * TURNS
    assert on["cached_prompt_tokens"][0] == 0
    # later turns reuse whole 16-token blocks of the earlier prompts
    for i in range(1, TURNS):
        assert on["cached_prompt_tokens"][i] == (lens[i - 1] // 16) * 16
        assert on["prefilled_tokens"][i] == lens[i] - on["cached_prompt_tokens"][i]
    assert conv["goal"]["met"] == (on["ratio_last_first"] <= conv["goal"]["ratio_max"])
    assert res["goal"]["met"]["tiny"] == conv["goal"]["met"]
    s = res["summary"]["tiny"]
    # decode (one run per concurrency), conversation (on, off), long context (2), profile (2 + 3 profiler runs)
    assert s["background_load"]["runs"] == len(CONC) + 2 + 2 + 5
    assert 0 <= s["background_load"]["max_other_cpu_share"] <= 1
    assert s["ttft_ms_reuse_on_first_last"] == [on["ttft_ms"][0], on["ttft_ms"][-1]]


def test_long_context_and_profile(bench):
    doc, _, out = bench
    r = doc["results"]["presets"]["tiny"]
    lc = r["decode_long_context"]
    for c in (1, max(CONC)):
        d = lc[f"concurrency_{c}"]
        assert d["prompt_tokens"] == 40 and _pos(d["step_latency_ms"]["p50"])
        if c > 1:
            assert d["cached_prompt_tokens"] > 0  # the shared prefix is prefilled once
    prof = r["profile"]
    for c in (1, max(CONC)):
        b = prof[f"decode_concurrency_{c}"]
        assert _pos(b["step_ms"]) and set(b["ms_per_step"]) >= {"kv_step", "lm_head", "sampling", "mlp"}
        assert sum(b["ms_per_step"].values()) == pytest.approx(b["step_ms"], rel=0.02, abs=0.05)
    ops = prof[f"torch_profiler_decode_concurrency_{max(CONC)}"]["top_ops"]
    assert ops and all(o["op"].startswith("aten::") for o in ops)
    conv_ops = prof["torch_profiler_conversation_prefill_reuse_on"]
    assert set(conv_ops) == {"turn_2", f"turn_{TURNS}", "background_load"}
    assert conv_ops[f"turn_{TURNS}"]["cached_prompt_tokens"] > 0 and conv_ops["turn_2"]["top_ops"]
    plot = doc["results"]["plot"]
    if plot is not None:
        assert (out / plot).stat().st_size > 0
