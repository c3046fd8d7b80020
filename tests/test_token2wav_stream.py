"""Streaming token2wav: the chunk policy (pure unit tests) and streamed vs offline synthesis on the golden
tiny weights (same tokens, same session noise; offline is the reference).

Measured on the golden tiny weights (case1 tokens repeated to 180 tokens, seed 3, 5 tokens per push):
the streamed audio is within about 26-27 dB SNR of offline (max abs deviation about 0.025 on a peak
of about 1) for the default, first=25, constant-20 and look-ahead 0/10 policies. All of it comes from
the flow (full-sequence attention, the length regulator's sequence-wide GroupNorm and its length-
dependent interpolation): with the offline mel fed in, the chunked vocoder path is at about 99 dB.
Bounding the flow's re-read left context (``flow_context``, default 20 tokens) moves it by under 1 dB
(26.1 dB at 20, 25.3 at 5, 26.8 with every released token).
The thresholds below (20 dB, 60 dB) leave margin for other CPUs and thread counts.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from stepaudio.tts.chunking import ChunkPolicy, plan_chunks

GOLDEN_T2W = Path(__file__).resolve().parent.parent.parent / "shared" / "golden" / "token2wav"
MODEL_DIR = GOLDEN_T2W / "CosyVoice-300M-25Hz"
SEED = 3
STREAM_SNR_DB = 20.0
VOCODER_SNR_DB = 60.0


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    err = float(((ref - x) ** 2).sum())
    return float("inf") if err == 0 else 10 * np.log10(float((ref ** 2).sum()) / err)


def drive(policy: ChunkPolicy, arrivals: list[int]) -> list[int]:
    """Feeds token counts as they arrive; returns the released chunk sizes (then a final flush)."""
    n_avail = n_emitted = 0
    sizes = []
    for a in arrivals:
        n_avail += a
        while (c := plan_chunks(n_avail, n_emitted, False, policy)) is not None:
            assert 0 < c <= n_avail - n_emitted
            sizes.append(c)
            n_emitted += c
    while (c := plan_chunks(n_avail, n_emitted, True, policy)) is not None:
        assert 0 < c <= n_avail - n_emitted
        sizes.append(c)
        n_emitted += c
    assert n_emitted == n_avail
    return sizes


# -- the policy --------------------------------------------------------------------------------------


def test_first_chunk_is_about_half_a_second():
    p = ChunkPolicy()
    assert p.first == 20 and p.first % p.group == 0
    assert 0.4 <= p.first / 41.67 <= 0.65
    assert plan_chunks(20 + p.lookahead - 1, 0, False, p) is None  # waits for the look-ahead
    assert plan_chunks(20 + p.lookahead, 0, False, p) == 20
    assert plan_chunks(0, 0, False, p) is None and plan_chunks(0, 0, True, p) is None


def test_hops_grow_then_cap():
    p = ChunkPolicy(first=20, growth=2.0, cap=100)
    assert [p.hop(i) for i in range(6)] == [20, 40, 80, 100, 100, 100]
    assert drive(p, [1000]) == [20, 40, 80] + [100] * 8 + [60]
    assert drive(ChunkPolicy(first=20, growth=1.0, cap=20), [100]) == [20] * 5
    assert [ChunkPolicy(first=25, growth=1.5, cap=200).hop(i) for i in range(4)] == [25, 35, 55, 80]


def test_final_flushes_everything_left():
    p = ChunkPolicy()
    assert plan_chunks(7, 0, True, p) == 7
    assert plan_chunks(30, 20, True, p) == 10  # no look-ahead needed at the end
    assert plan_chunks(30, 30, True, p) is None


@pytest.mark.parametrize("policy", [ChunkPolicy(), ChunkPolicy(first=25, lookahead=0),
                                    ChunkPolicy(first=10, growth=3.0, cap=45, lookahead=3, group=1)])
def test_every_token_covered_once(policy):
    rng = np.random.default_rng(0)
    for _ in range(50):
        arrivals = rng.integers(0, 12, size=int(rng.integers(0, 60))).tolist()
        sizes = drive(policy, arrivals)
        assert sum(sizes) == sum(arrivals)
        # All chunks but the final flush follow the schedule.
        assert sizes[:-1] == [policy.hop(i) for i in range(len(sizes) - 1)]


def test_never_more_than_available_and_bad_input():
    p = ChunkPolicy()
    for n_emitted in range(0, 200, 5):
        for n_avail in range(n_emitted, n_emitted + 120):
            c = plan_chunks(n_avail, n_emitted, False, p)
            assert c is None or n_emitted + c + p.lookahead <= n_avail
    with pytest.raises(ValueError):
        plan_chunks(3, 5, False, p)
    with pytest.raises(ValueError):
        ChunkPolicy(first=30, cap=20)
    with pytest.raises(ValueError):
        ChunkPolicy(growth=0.5)


# -- streamed vs offline ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup():
    if not MODEL_DIR.is_dir():
        pytest.skip(f"golden token2wav fixtures not found at {GOLDEN_T2W}")
    from stepaudio.tts.flow import load_flow
    from stepaudio.tts.hift import load_hift
    from stepaudio.tts.token2wav import PromptVoice, Token2Wav

    case = np.load(GOLDEN_T2W / "case1.npz")
    t2w = Token2Wav(load_flow(MODEL_DIR), load_hift(MODEL_DIR))
    voice = PromptVoice.of(case["prompt_token"], case["prompt_feat"], case["embedding"])
    tokens = np.concatenate([case["token"], case["token"][::-1], case["token"]])
    ref = t2w.offline(tokens, voice, seed=SEED)
    return t2w, voice, tokens, ref


def stream(t2w, voice, tokens, policy, step=5, **kw):
    s = t2w.session(voice, seed=SEED, policy=policy, **kw)
    chunks, first_at = [], None
    for i in range(0, len(tokens), step):
        got = s.push(tokens[i:i + step])
        if got and first_at is None:
            first_at = i + step
        chunks += got
    chunks += s.finish()
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    return np.concatenate(chunks), chunks, first_at, s


def test_offline_length(setup):
    t2w, _, tokens, ref = setup
    assert ref.dtype == np.float32
    assert ref.size == t2w.flow.mel_frames(len(tokens)) * 256


def test_one_chunk_equals_offline(setup):
    t2w, voice, tokens, ref = setup
    x, chunks, _, _ = stream(t2w, voice, tokens, ChunkPolicy(first=1000, cap=1000))
    assert len(chunks) == 1
    np.testing.assert_allclose(x, ref, atol=1e-5)


@pytest.mark.parametrize("policy", [ChunkPolicy(), ChunkPolicy(first=25), ChunkPolicy(growth=1.0, cap=20)])
def test_streamed_close_to_offline(setup, policy):
    t2w, voice, tokens, ref = setup
    x, chunks, first_at, s = stream(t2w, voice, tokens, policy)
    assert x.size == ref.size
    assert len(chunks) >= 3
    assert first_at == policy.first + policy.lookahead  # the first audio leaves as soon as allowed
    assert snr_db(ref, x) > STREAM_SNR_DB
    assert float(np.abs(ref - x).max()) < 0.1
    assert sum(st.tokens for st in s.stats) == len(tokens)


def test_vocoder_seams_are_transparent(setup, monkeypatch):
    """With the offline mel fed in, the chunked vocoder (source cache, left context, cross-fade) ~ offline."""
    t2w, voice, tokens, ref = setup
    mel = t2w.flow_mel(torch.as_tensor(tokens), voice, t2w.noise(SEED))
    frames = t2w.flow.mel_frames

    def offline_mel(tok, v, n, start=0):  # the frames a (windowed) run covers, taken from the offline mel
        return mel[..., frames(tok.numel()) - frames(tok.numel() - start):frames(tok.numel())]

    monkeypatch.setattr(t2w, "flow_mel", offline_mel)
    x, _, _, _ = stream(t2w, voice, tokens, ChunkPolicy(growth=1.0, cap=20))
    assert x.size == ref.size
    assert snr_db(ref, x) > VOCODER_SNR_DB


def test_push_after_finish_and_close(setup):
    t2w, voice, tokens, _ = setup
    s = t2w.session(voice, seed=SEED)
    assert s.push(tokens[:10]) == []
    assert sum(c.size for c in s.finish()) == t2w.flow.mel_frames(10) * 256
    assert s.finish() == []
    with pytest.raises(RuntimeError):
        s.push(tokens[:5])
    s.close()
    assert s.mel.numel() == 0 and s.source.numel() == 0


def test_benchmark_smoke(setup, tmp_path):
    import json

    from benchmarks import token2wav_stream

    res = token2wav_stream.main(["--repeat", "1", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "token2wav_stream.json").read_text())
    assert doc["name"] == "token2wav_stream" and doc["results"]["tokens"] == res["tokens"] == 60
    default = doc["results"]["policies"]["default"]
    assert default["first_chunk_tokens"] == 25 and default["snr_db"] > STREAM_SNR_DB
    assert doc["results"]["policies"]["one_chunk"]["max_abs_dev"] < 1e-5


def _flow_runs(t2w, monkeypatch) -> list[tuple[int, int]]:
    """Records (tokens, start) of every flow run."""
    runs, inner = [], t2w.flow_mel

    def recording(tok, v, n, start=0):
        runs.append((tok.numel(), start))
        return inner(tok, v, n, start)

    monkeypatch.setattr(t2w, "flow_mel", recording)
    return runs


@pytest.mark.parametrize("flow_context", [None, 5, 20])
def test_flow_context_bounds_the_flow_window(setup, monkeypatch, flow_context):
    t2w, voice, tokens, ref = setup
    monkeypatch.setattr(t2w, "flow_context", flow_context)
    runs = _flow_runs(t2w, monkeypatch)
    policy = ChunkPolicy()
    x, _, _, s = stream(t2w, voice, tokens, policy)
    assert x.size == ref.size
    assert snr_db(ref, x) > STREAM_SNR_DB
    emitted = np.cumsum([0] + [st.tokens for st in s.stats])[:-1]
    assert [start for _, start in runs] == [0 if flow_context is None else max(0, e - flow_context) for e in emitted]
    if flow_context is not None:  # a run reads at most the context, one hop and the look-ahead
        assert max(n - start for n, start in runs) <= flow_context + policy.cap + policy.lookahead


def test_flow_context_below_a_group_is_refused(setup):
    from stepaudio.tts.token2wav import Token2WavStream

    t2w, voice, _, _ = setup
    with pytest.raises(ValueError, match="flow_context"):
        Token2WavStream(t2w, voice, SEED, ChunkPolicy(), 12, 3, flow_context=4)


def test_chunks_without_new_tokens_reuse_the_flow_run(setup, monkeypatch):
    t2w, voice, tokens, _ = setup
    runs = _flow_runs(t2w, monkeypatch)
    s = t2w.session(voice, seed=SEED)
    out = s.push(tokens[:64])  # releases the first 20 (64 >= 20 + 5), not the next 40 (needs 65)
    assert len(out) == 1 and len(runs) == 1
    out += s.finish()  # the last 44 tokens: the same 64 tokens as the run before, so no new run
    assert len(runs) == 1
    assert sum(c.size for c in out) == t2w.flow.mel_frames(64) * 256
