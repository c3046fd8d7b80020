"""Flow matching (``MaskedDiffWithXvec``) against the reference's fixtures in ../shared/golden/token2wav.

* parameter names and shapes of the full-size model equal the official state_dict (both vocab sizes);
* ``flow.pt`` loads strictly, and broken model folders raise ``CheckpointError`` naming the file;
* fp32: every intermediate and the mel match the reference run of case1 (README: mel atol 1e-4);
* bf16: the reference's bf16 run, compared loosely (kernels round differently across CPUs).
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from stepaudio.tokenizer.files import CheckpointError
from stepaudio.tts.cosyvoice_yaml import load_cosyvoice_yaml
from stepaudio.tts.flow import ConformerEncoder, build_flow, load_flow, time_grid
from tests.conftest import GOLDEN

T2W = GOLDEN / "token2wav"
MODEL_DIR = T2W / "CosyVoice-300M-25Hz"

# Tolerances (max abs). The reference is bit-exact with itself on one machine; its README measured
# up to 4.3e-6 (est_step1_out) and 2.6e-6 (mel) from thread count alone, and suggests atol 1e-4 for
# the mel. Measured here (1 thread, AVX2 CPU): token_emb/dec_spks/dec_cond/t_span 0, encoder_out 3.6e-7,
# encoder_proj_out 3.0e-7, dec_mu 8.0e-7, est_step1_out 5.2e-6, mel 2.3e-6.
FP32_ATOL = {
    "token_emb": 0.0,
    "dec_spks": 1e-6,
    "dec_cond": 0.0,
    "t_span": 1e-7,
    "encoder_out": 1e-5,
    "encoder_proj_out": 1e-5,
    "dec_mu": 1e-5,
    "est_step1_out": 1e-4,
    "mel": 1e-4,
}
# bf16: one bf16 ulp at |x| in [4, 8) is 0.03125. We measured max 0.0625 / mean 0.0076 on the mel
# (AVX2 CPU); the fp32 and bf16 reference mels differ by max 0.41 / mean 0.054, so these bounds still
# tell a faithful bf16 path from a merely fp32-like one.
BF16_MEL_MAX, BF16_MEL_MEAN = 0.25, 0.02


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The fixture model is tiny: extra threads only add scheduling overhead (and the reference
    # fixtures were made with one thread).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def golden_dir():
    if not (MODEL_DIR / "flow.pt").is_file():
        pytest.skip(f"token2wav golden fixtures not found at {T2W} (CI lays ../shared beside the clone)")
    return T2W


@pytest.fixture(scope="module")
def case1(golden_dir):
    return dict(np.load(golden_dir / "case1.npz"))


@pytest.fixture(scope="module")
def flow32(golden_dir):
    return load_flow(MODEL_DIR)


def _inputs(case, dtype=torch.float32):
    return dict(
        token=torch.from_numpy(case["token"])[None],
        prompt_token=torch.from_numpy(case["prompt_token"])[None],
        prompt_feat=torch.from_numpy(case["prompt_feat"])[None].to(dtype),
        embedding=torch.from_numpy(case["embedding"])[None].to(dtype),
    )


def _max_err(x: torch.Tensor, ref: np.ndarray) -> float:
    x = x.detach().float().numpy()
    assert x.shape == ref.shape
    return float(np.abs(x - ref).max())


# ---------------------------------------------------------------- state_dict layout


def _official_300m_flow_node(vocab_size: int):
    """The flow block of the official CosyVoice-300M cosyvoice.yaml (same layout as the fixture's)."""
    node = copy.deepcopy(load_cosyvoice_yaml(MODEL_DIR / "cosyvoice.yaml")["flow"])
    node.kwargs.update(input_size=512, vocab_size=vocab_size)
    node["encoder"].kwargs.update(output_size=512, attention_heads=8, linear_units=2048, num_blocks=6,
                                  input_size=512)
    node["decoder"]["estimator"].kwargs.update(channels=[256, 256], attention_head_dim=64, n_blocks=4,
                                               num_mid_blocks=12, num_heads=8)
    return node


@pytest.mark.parametrize(
    ("variant", "vocab"),
    [("cosyvoice_300m_official_vocab4096", 4096), ("step_25hz_dual_codebook_vocab5120_assumed", 5120)],
)
def test_full_size_state_dict_matches_official_keys(golden_dir, variant, vocab):
    official = json.loads((golden_dir / "official_300m_keys.json").read_text())[variant]["flow"]
    with torch.device("meta"):
        flow = build_flow(_official_300m_flow_node(vocab))
    ours = {k: list(v.shape) for k, v in flow.state_dict().items()}
    theirs = {name: shape for name, shape, _dtype in official["state_dict"]}
    assert sorted(set(theirs) - set(ours)) == [], "missing in ours"
    assert sorted(set(ours) - set(theirs)) == [], "extra in ours"
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}, "shape mismatches"
    assert sum(p.numel() for p in flow.parameters()) == official["num_params"]


def test_fixture_loads_strictly(flow32):
    assert flow32.vocab_size == 5120
    assert not any(t.is_meta for t in (*flow32.parameters(), *flow32.buffers()))
    assert flow32.mel_frames(60) == 124  # 60 / 41.67 * 22050 / 256 = 124.02


# ---------------------------------------------------------------- fp32 parity


def test_fp32_intermediates_and_mel_match_reference(flow32, case1):
    trace: dict = {}
    mel = flow32.inference(**_inputs(case1), noise=torch.from_numpy(case1["noise_z"]), trace=trace)
    c = trace["conditions"]
    assert (c.mel_len1, c.mel_len2) == (int(case1["mel_len1"][0]), int(case1["mel_len2"][0]))
    np.testing.assert_array_equal(c.mask.numpy(), case1["dec_mask"])

    z = torch.from_numpy(case1["noise_z"])
    with torch.inference_mode():  # the first estimator call, on the guidance batch
        est1 = flow32.decoder.estimator(
            torch.cat([z, z]), torch.cat([c.mask, c.mask]), torch.cat([c.mu, torch.zeros_like(c.mu)]),
            torch.from_numpy(case1["est_step1_t"]), torch.cat([c.spks, torch.zeros_like(c.spks)]),
            torch.cat([c.cond, torch.zeros_like(c.cond)]),
        )
    ours = {
        "token_emb": trace["token_emb"],
        "encoder_out": trace["encoder_out"],
        "encoder_proj_out": trace["encoder_proj_out"],
        "dec_mu": c.mu,
        "dec_spks": c.spks,
        "dec_cond": c.cond,
        "t_span": time_grid(10, "cosine", torch.float32),
        "est_step1_out": est1,
        "mel": mel,
    }
    errors = {k: _max_err(v, case1[k]) for k, v in ours.items()}
    failed = {k: e for k, e in errors.items() if e > FP32_ATOL[k]}
    assert not failed, f"max abs errors {errors}"


def test_fp32_decoder_alone_matches_reference(flow32, case1):
    """The CFM loop fed the reference's own mu/spks/cond: isolates the solver and guidance."""
    t = {k: torch.from_numpy(case1[k]) for k in ("dec_mu", "dec_spks", "dec_cond", "dec_mask", "noise_z")}
    mel = flow32.decoder(t["dec_mu"], t["dec_mask"], 10, spks=t["dec_spks"], cond=t["dec_cond"], noise=t["noise_z"])
    assert _max_err(mel[:, :, int(case1["mel_len1"][0]):], case1["mel"]) < FP32_ATOL["mel"]


# ---------------------------------------------------------------- bf16 (loose)


def test_bf16_path_matches_reference_loosely(golden_dir):
    ref = dict(np.load(golden_dir / "case1_bf16.npz"))
    flow = load_flow(MODEL_DIR, dtype=torch.bfloat16)
    trace: dict = {}
    mel = flow.inference(**_inputs(ref, torch.bfloat16), noise=torch.from_numpy(ref["noise_z"]), trace=trace)
    assert mel.dtype == torch.bfloat16
    # The time grid is computed in bf16 (coarse), exactly as the reference does.
    np.testing.assert_array_equal(time_grid(10, "cosine", torch.bfloat16).float().numpy(), ref["t_span"])
    # Before the U-Net, bf16 kernels agree closely (1 ulp on a few mu values).
    assert _max_err(trace["encoder_proj_out"], ref["encoder_proj_out"]) <= 0.02
    assert _max_err(trace["conditions"].mu, ref["dec_mu"]) <= 0.02
    err = np.abs(mel.float().numpy() - ref["mel"])
    assert err.max() <= BF16_MEL_MAX and err.mean() <= BF16_MEL_MEAN, (err.max(), err.mean())


# ---------------------------------------------------------------- behaviour and errors


def test_sampling_is_reproducible_and_checks_ids(flow32, case1):
    x = _inputs(case1)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = flow32.inference(**x, generator=g1, n_timesteps=2)
    b = flow32.inference(**x, generator=g2, n_timesteps=2)
    assert torch.equal(a, b) and a.shape == (1, 80, 124)
    # 1-D inputs are taken as batch 1; an odd total length exercises the U-Net's crop.
    odd = flow32.inference(x["token"][0, :7], x["prompt_token"][0], x["prompt_feat"][0, :61], x["embedding"][0],
                           n_timesteps=1)
    assert odd.shape == (1, 80, flow32.mel_frames(7))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        flow32.inference(x["token"] + 5120, x["prompt_token"], x["prompt_feat"], x["embedding"], n_timesteps=1)
    with pytest.raises(ValueError, match="noise"):
        flow32.inference(**x, noise=torch.zeros(1, 80, 3))


def _model_copy(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(MODEL_DIR / "cosyvoice.yaml", d)
    return d


def test_broken_model_folders_raise_checkpoint_error(golden_dir, tmp_path):
    d = _model_copy(tmp_path)
    with pytest.raises(CheckpointError, match=r"flow\.pt"):
        load_flow(d)  # missing

    (d / "flow.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"flow\.pt"):
        load_flow(d)  # unreadable

    state = torch.load(MODEL_DIR / "flow.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "encoder_proj.bias"}, d / "flow.pt")
    with pytest.raises(CheckpointError, match=r"flow\.pt.*encoder_proj\.bias"):
        load_flow(d)  # missing key

    bad = dict(state, **{"input_embedding.weight": torch.zeros(4096, 32)})
    torch.save(bad, d / "flow.pt")
    with pytest.raises(CheckpointError, match=r"flow\.pt.*input_embedding"):
        load_flow(d)  # vocab of the weights differs from the yaml

    torch.save(dict(state, extra=torch.zeros(1)), d / "flow.pt")
    with pytest.raises(CheckpointError, match="extra"):
        load_flow(d)  # unexpected key

    (d / "cosyvoice.yaml").write_text(
        (MODEL_DIR / "cosyvoice.yaml").read_text().replace("'rel_pos_espnet'", "'abs_pos'")
    )
    torch.save(state, d / "flow.pt")
    with pytest.raises(CheckpointError, match=r"cosyvoice\.yaml.*abs_pos"):
        load_flow(d)  # an architecture we do not implement


def test_conformer_optional_modules_follow_official_names():
    """Macaron feed-forward, convolution module, post-norm: off in the fixture, built when asked."""
    torch.manual_seed(0)
    enc = ConformerEncoder(8, output_size=16, attention_heads=2, linear_units=32, num_blocks=1,
                           macaron_style=True, use_cnn_module=True, cnn_module_kernel=5).eval()
    names = set(enc.state_dict())
    for key in ("norm_ff_macaron.weight", "feed_forward_macaron.w_1.weight", "conv_module.pointwise_conv1.weight",
                "conv_module.depthwise_conv.weight", "conv_module.norm.running_var", "conv_module.pointwise_conv2.bias",
                "norm_conv.weight", "norm_final.bias"):
        assert f"encoders.0.{key}" in names
    x = torch.randn(1, 11, 8)
    with torch.inference_mode():
        assert enc(x).shape == (1, 11, 16)
        post = ConformerEncoder(8, output_size=16, attention_heads=2, linear_units=32, num_blocks=1,
                                normalize_before=False, use_cnn_module=True, cnn_module_norm="layer_norm",
                                causal=True, cnn_module_kernel=4).eval()
        assert post(x).shape == (1, 11, 16)
