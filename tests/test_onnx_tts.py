"""ONNX export of the flow estimator and HiFT's decoder: ONNX Runtime matches PyTorch.

* estimator on random inputs (guidance batch 2) at two lengths, and HiFT's decode at two lengths;
* end to end on the golden case1 inputs with the injected noise: flow.inference with the ONNX
  estimator, and the HiFT waveform with the ONNX decoder;
* the export is byte-for-byte reproducible, and the tiny preset's checkpoints export too.

Run with ``-s`` to see the measured differences and the flow+HiFT real-time factors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.onnx_tts import export_cosyvoice_onnx, export_flow_estimator, export_hift_decoder, measure_rtf
from stepaudio.tts.flow import load_flow
from stepaudio.tts.hift import FixedNoise, load_hift
from stepaudio.tts.onnx_modules import OnnxEstimator, OnnxHiftDecoder, use_onnx
from tests.conftest import GOLDEN

T2W = GOLDEN / "token2wav"
MODEL_DIR = T2W / "CosyVoice-300M-25Hz"

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    if not (MODEL_DIR / "flow.pt").is_file():
        pytest.skip(f"token2wav golden fixtures not found at {T2W}")
    out = tmp_path_factory.mktemp("onnx")
    files = export_cosyvoice_onnx(MODEL_DIR, out)
    assert sorted(files) == ["flow_condition", "flow_estimator", "hift_decoder"]
    assert all(p.is_file() and p.parent == out for p in files.values())
    return out


@pytest.fixture(scope="module")
def case1():
    return dict(np.load(T2W / "case1.npz"))


def _inputs(case):
    return dict(
        token=torch.from_numpy(case["token"])[None],
        prompt_token=torch.from_numpy(case["prompt_token"])[None],
        prompt_feat=torch.from_numpy(case["prompt_feat"])[None],
        embedding=torch.from_numpy(case["embedding"])[None],
    )


def _maxdiff(a, b) -> float:
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


@pytest.mark.parametrize("frames", [57, 186])
def test_estimator_matches_pytorch(onnx_dir, frames):
    est = load_flow(MODEL_DIR).decoder.estimator
    g = torch.Generator().manual_seed(frames)
    x, mu, cond = (torch.randn(2, 80, frames, generator=g) for _ in range(3))
    mu[1], cond[1] = 0, 0  # the guidance batch's unconditioned row
    mask = torch.ones(2, 1, frames)
    t = torch.rand(1, generator=g).expand(2).contiguous()
    spks = torch.randn(2, 80, generator=g)
    spks[1] = 0
    with torch.inference_mode():
        ref = est(x, mask, mu, t, spks, cond)
    got = OnnxEstimator(onnx_dir / "flow_estimator.onnx", threads=1)(x, mask, mu, t, spks, cond)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    diff = _maxdiff(got, ref)
    print(f"\nestimator T={frames}: max abs diff {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.parametrize("frames", [31, 124])
def test_hift_decode_matches_pytorch(onnx_dir, frames):
    hift = load_hift(MODEL_DIR)
    g = torch.Generator().manual_seed(frames)
    mel = torch.randn(1, 80, frames, generator=g)
    with torch.inference_mode():
        source = hift.source_from_f0(hift.f0_predictor(mel), _noise_like(hift, frames, g))
        s_stft = hift.source_stft(source)
        ref_mag, ref_phase = hift.decode(mel, s_stft)
    mag, phase = OnnxHiftDecoder(onnx_dir / "hift_decoder.onnx", threads=1)(mel, s_stft)
    assert mag.shape == ref_mag.shape and phase.shape == ref_phase.shape
    d_mag, d_phase = _maxdiff(mag, ref_mag), _maxdiff(phase, ref_phase)
    print(f"\nhift decode T={frames}: magnitude {d_mag:.2e}, phase {d_phase:.2e}")
    assert d_mag < 1e-4 and d_phase < 1e-4


def _noise_like(hift, frames, g) -> FixedNoise:
    n = frames * hift.upsample_factor
    h = hift.config.nb_harmonics + 1
    return FixedNoise(torch.rand(1, h, 1, generator=g) * 2 - 1, torch.randn(1, h, n, generator=g),
                      torch.randn(1, n, 1, generator=g))


def test_end_to_end_golden_case1(onnx_dir, case1):
    noise = torch.from_numpy(case1["noise_z"])
    mel_pt = load_flow(MODEL_DIR).inference(**_inputs(case1), noise=noise)
    flow = load_flow(MODEL_DIR)
    hift = load_hift(MODEL_DIR)
    use_onnx(flow, hift, onnx_dir, threads=1)
    assert isinstance(flow.decoder.estimator, OnnxEstimator)
    mel_onnx = flow.inference(**_inputs(case1), noise=noise)
    d_mel = _maxdiff(mel_onnx, mel_pt)
    d_golden = _maxdiff(mel_onnx, case1["mel"])

    hift_pt = load_hift(MODEL_DIR)
    fixed = FixedNoise(case1["hift_phase_vec_raw"], case1["hift_sine_randn"], case1["hift_nsf_noise_randn"])
    wav_pt = hift_pt.inference(mel_pt, fixed).wav
    wav_onnx = hift.inference(mel_pt, fixed).wav  # same mel: isolates the decoder
    d_wav = _maxdiff(wav_onnx, wav_pt)
    d_chain = _maxdiff(hift.inference(mel_onnx, fixed).wav, case1["wav"])
    print(f"\ne2e case1: mel {d_mel:.2e} (vs golden {d_golden:.2e}), wav {d_wav:.2e}, "
          f"ONNX chain wav vs golden {d_chain:.2e}")
    assert mel_onnx.shape == mel_pt.shape == case1["mel"].shape
    assert d_mel < 1e-3
    assert wav_onnx.shape == wav_pt.shape
    assert d_wav < 1e-3

    del hift.decode  # back to the PyTorch decoder
    assert _maxdiff(hift.inference(mel_pt, fixed).wav, wav_pt) == 0


def test_export_is_reproducible_and_covers_the_tiny_preset(onnx_dir, tmp_path):
    from export.tiny.cosyvoice import write_cosyvoice

    again = export_flow_estimator(load_flow(MODEL_DIR), tmp_path / "est.onnx")
    assert again.read_bytes() == (onnx_dir / "flow_estimator.onnx").read_bytes()
    hift_again = export_hift_decoder(load_hift(MODEL_DIR), tmp_path / "hift.onnx")
    assert hift_again.read_bytes() == (onnx_dir / "hift_decoder.onnx").read_bytes()

    tiny = write_cosyvoice(tmp_path / "tiny", seed=7)
    files = export_cosyvoice_onnx(tiny, tmp_path / "tiny_onnx")
    est = load_flow(tiny).decoder.estimator
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(2, 80, 40, generator=g), torch.ones(2, 1, 40), torch.randn(2, 80, 40, generator=g),
            torch.rand(2, generator=g), torch.randn(2, 80, generator=g), torch.randn(2, 80, 40, generator=g))
    with torch.inference_mode():
        ref = est(*args)
    assert _maxdiff(OnnxEstimator(files["flow_estimator"], threads=1)(*args), ref) < 1e-4


def test_rtf_pytorch_vs_onnxruntime(onnx_dir):
    r = measure_rtf(MODEL_DIR, onnx_dir, threads=1, repeats=1)
    print(f"\nflow+HiFT RTF on the golden tiny weights, 1 thread: {r}")
    assert r["pytorch_rtf"] > 0 and r["onnx_rtf"] > 0


def test_estimator_export_has_no_mask_and_skips_masking(onnx_dir):
    """The export assumes no padding: no mask input; a non-trivial mask is refused, not silently ignored.
    In PyTorch, mask None gives exactly the all-ones result."""
    est = OnnxEstimator(onnx_dir / "flow_estimator.onnx", threads=1)
    assert [i.name for i in est.session.get_inputs()] == ["x", "t", "c_block1", "c_res"]
    assert [i.name for i in est.condition_session.get_inputs()] == ["mu", "spks", "cond"]
    g = torch.Generator().manual_seed(3)
    x, mu, cond = (torch.randn(2, 80, 20, generator=g) for _ in range(3))
    t, spks = torch.rand(2, generator=g), torch.randn(2, 80, generator=g)
    ones = torch.ones(2, 1, 20)
    assert torch.equal(est(x, ones, mu, t, spks, cond), est(x, None, mu, t, spks, cond))
    padded = ones.clone()
    padded[1, :, 15:] = 0
    with pytest.raises(ValueError, match="mask"):
        est(x, padded, mu, t, spks, cond)
    pt = load_flow(MODEL_DIR).decoder.estimator
    with torch.inference_mode():
        assert torch.equal(pt(x, ones, mu, t, spks, cond), pt(x, None, mu, t, spks, cond))


def test_sessions_use_one_thread_and_never_spin(onnx_dir):
    opts = OnnxHiftDecoder(onnx_dir / "hift_decoder.onnx").session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_condition_terms_split_equals_the_whole_first_block():
    """forward_conditioned(x, t, condition(mu, spks, cond)) is forward(x, None, mu, t, spks, cond) up to
    float rounding (the first convolutions summed in two parts)."""
    est = load_flow(MODEL_DIR).decoder.estimator
    g = torch.Generator().manual_seed(5)
    x, mu, cond = (torch.randn(2, 80, 77, generator=g) for _ in range(3))
    t, spks = torch.rand(2, generator=g), torch.randn(2, 80, generator=g)
    with torch.inference_mode():
        whole = est(x, None, mu, t, spks, cond)
        split = est.forward_conditioned(x, t, est.condition(mu, spks, cond))
    assert split.shape == whole.shape
    assert _maxdiff(split, whole) < 1e-5


def test_condition_terms_run_once_per_solve(onnx_dir, case1):
    """A solve passes the same (mu, spks, cond) at its 10 steps: the condition graph runs once per solve;
    new tensors, or the same ones changed in place, run it again."""
    flow = load_flow(MODEL_DIR)
    use_onnx(flow, None, onnx_dir, threads=1)
    est = flow.decoder.estimator
    noise = torch.from_numpy(case1["noise_z"])
    first = flow.inference(**_inputs(case1), noise=noise, n_timesteps=10)
    assert est.condition_runs == 1
    again = flow.inference(**_inputs(case1), noise=noise, n_timesteps=10)
    assert est.condition_runs == 2 and torch.equal(first, again)
    g = torch.Generator().manual_seed(2)
    x, mu, cond = (torch.randn(2, 80, 16, generator=g) for _ in range(3))
    t, spks = torch.rand(2, generator=g), torch.randn(2, 80, generator=g)
    before = est(x, None, mu, t, spks, cond)
    est(x, None, mu, t, spks, cond)
    assert est.condition_runs == 3
    mu[0] += 1.0  # in place: the cached terms are stale
    changed = est(x, None, mu, t, spks, cond)
    assert est.condition_runs == 4 and not torch.equal(changed, before)
