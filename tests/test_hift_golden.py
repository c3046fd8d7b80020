"""HiFT vocoder against the reference's outputs on the golden token2wav fixtures, plus loading checks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stepaudio.tokenizer.files import CheckpointError
from stepaudio.tts.hift import FixedNoise, HiftConfig, HiFTGenerator, TorchNoise, load_hift

GOLDEN_T2W = Path(__file__).resolve().parent.parent.parent / "shared" / "golden" / "token2wav"
MODEL_DIR = GOLDEN_T2W / "CosyVoice-300M-25Hz"
ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models are tiny: one thread avoids oversubscription on busy CI hosts (and the reference used 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def golden_dir() -> Path:
    if not (MODEL_DIR / "hift.pt").is_file():
        pytest.skip(f"golden token2wav fixtures not found at {GOLDEN_T2W} (CI lays ../shared beside the clone)")
    return GOLDEN_T2W


@pytest.fixture(scope="module")
def hift(golden_dir):
    return load_hift(golden_dir / "CosyVoice-300M-25Hz")


def _injected(z) -> FixedNoise:
    return FixedNoise(z["hift_phase_vec_raw"], z["hift_sine_randn"], z["hift_nsf_noise_randn"])


@pytest.mark.parametrize("case", ["hift_case", "case1"])
def test_matches_reference_with_injected_noise(golden_dir, hift, case):
    z = np.load(golden_dir / f"{case}.npz")
    out = hift.inference(torch.from_numpy(z["mel"]), _injected(z))
    assert out.wav.shape == z["wav"].shape and out.source.shape == z["hift_source"].shape
    np.testing.assert_allclose(out.f0.numpy(), z["hift_f0"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out.source.numpy(), z["hift_source"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out.wav.numpy(), z["wav"], atol=ATOL, rtol=0)


@pytest.mark.parametrize(("case", "seed"), [("hift_case", 1234), ("case1", 77)])
def test_seeded_generator_reproduces_reference_random_stream(golden_dir, hift, case, seed):
    """The reference ran after torch.manual_seed(seed); TorchNoise(seed) draws the same tensors in order."""
    z = np.load(golden_dir / f"{case}.npz")
    out = hift.inference(torch.from_numpy(z["mel"]), TorchNoise(seed))
    np.testing.assert_allclose(out.source.numpy(), z["hift_source"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out.wav.numpy(), z["wav"], atol=ATOL, rtol=0)


def test_removing_weight_norm_keeps_outputs(golden_dir):
    z = np.load(golden_dir / "hift_case.npz")
    mel = torch.from_numpy(z["mel"])
    model = load_hift(golden_dir / "CosyVoice-300M-25Hz")
    before = model.inference(mel, _injected(z))
    model.remove_weight_norm()
    keys = list(model.state_dict())
    assert not any(k.endswith(("weight_g", "weight_v")) for k in keys)
    assert "conv_pre.weight" in keys and "ups.0.weight" in keys
    after = model.inference(mel, _injected(z))
    np.testing.assert_allclose(after.wav.numpy(), before.wav.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(after.source.numpy(), before.source.numpy())
    folded = load_hift(golden_dir / "CosyVoice-300M-25Hz", fold_weight_norm=True)
    np.testing.assert_allclose(folded.inference(mel, _injected(z)).wav.numpy(), z["wav"], atol=ATOL, rtol=0)


def test_new_style_weight_norm_keys_load(golden_dir, tmp_path):
    state = torch.load(MODEL_DIR / "hift.pt", map_location="cpu", weights_only=True)
    renamed = {}
    for k, v in state.items():
        if k.endswith(".weight_g"):
            k = k.removesuffix(".weight_g") + ".parametrizations.weight.original0"
        elif k.endswith(".weight_v"):
            k = k.removesuffix(".weight_v") + ".parametrizations.weight.original1"
        renamed[k] = v
    assert renamed.keys() != state.keys()
    shutil.copy(MODEL_DIR / "cosyvoice.yaml", tmp_path / "cosyvoice.yaml")
    torch.save(renamed, tmp_path / "hift.pt")
    z = np.load(golden_dir / "hift_case.npz")
    out = load_hift(tmp_path).inference(torch.from_numpy(z["mel"]), _injected(z))
    np.testing.assert_allclose(out.wav.numpy(), z["wav"], atol=ATOL, rtol=0)


def test_official_full_size_keys_and_shapes(golden_dir):
    """The official 300M hift block (base 512, F0 cond 512, etc. = HiftConfig defaults), built on meta."""
    record = json.loads((golden_dir / "official_300m_keys.json").read_text())["hift"]
    with torch.device("meta"):
        model = HiFTGenerator(HiftConfig())
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    expected = [tuple(entry) for entry in record["state_dict"]]
    assert dict((k, (s, d)) for k, s, d in ours) == dict((k, (s, d)) for k, s, d in expected)
    assert [k for k, _, _ in ours] == [k for k, _, _ in expected]  # same order as well
    assert sum(v.numel() for v in model.state_dict().values()) == record["num_params"]


def test_yaml_hyperparameters(golden_dir):
    cfg = load_hift(golden_dir / "CosyVoice-300M-25Hz").config
    assert (cfg.base_channels, cfg.f0_cond_channels, cfg.n_fft, cfg.hop_len) == (16, 16, 16, 4)
    assert cfg.samples_per_frame == 256 and cfg.sampling_rate == 22050 and cfg.audio_limit == 0.99


def test_checkpoint_errors_name_the_file(golden_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"cosyvoice\.yaml"):
        load_hift(tmp_path)
    shutil.copy(MODEL_DIR / "cosyvoice.yaml", tmp_path / "cosyvoice.yaml")
    with pytest.raises(CheckpointError, match=r"hift\.pt.*not found"):
        load_hift(tmp_path)
    (tmp_path / "hift.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"hift\.pt.*cannot read"):
        load_hift(tmp_path)
    state = torch.load(MODEL_DIR / "hift.pt", map_location="cpu", weights_only=True)
    state.pop("conv_post.bias")
    torch.save(state, tmp_path / "hift.pt")
    with pytest.raises(CheckpointError, match=r"hift\.pt.*conv_post\.bias"):
        load_hift(tmp_path)
    state = torch.load(MODEL_DIR / "hift.pt", map_location="cpu", weights_only=True)
    state["conv_pre.bias"] = torch.zeros(17)
    torch.save(state, tmp_path / "hift.pt")
    with pytest.raises(CheckpointError, match=r"hift\.pt.*size mismatch"):
        load_hift(tmp_path)


def _tiny() -> HiFTGenerator:
    torch.manual_seed(0)
    cfg = HiftConfig(base_channels=8, f0_cond_channels=8)
    return HiFTGenerator(cfg).eval()


def test_shapes_batch_and_limits_without_fixtures():
    model = _tiny()
    mel = torch.randn(2, 80, 7)
    out = model.inference(mel, TorchNoise(3))
    assert out.wav.shape == (2, 7 * 256) and out.source.shape == (2, 1, 7 * 256) and out.f0.shape == (2, 7)
    assert out.wav.abs().max() <= 0.99
    again = model.inference(mel, TorchNoise(3))
    assert torch.equal(out.wav, again.wav)  # reproducible with the same seed


def test_cache_source_replaces_the_excitation_prefix():
    model = _tiny()
    mel = torch.randn(1, 80, 5)
    cache = torch.full((1, 1, 300), 0.25)
    out = model.inference(mel, TorchNoise(1), cache_source=cache)
    assert torch.equal(out.source[..., :300], cache)
    plain = model.inference(mel, TorchNoise(1))
    assert torch.equal(out.source[..., 300:], plain.source[..., 300:])


def test_fixed_noise_checks_shapes_and_cuts_longer_noise():
    model = _tiny()
    mel = torch.randn(1, 80, 4)
    gen = TorchNoise(5)
    phase, sine, nsf = gen.phase((1, 9, 1)), gen.sine_noise((1, 9, 4096)), gen.nsf_noise((1, 4096, 1))
    long = model.inference(mel, FixedNoise(phase, sine, nsf))
    exact = model.inference(mel, FixedNoise(phase, sine[..., :1024], nsf[:, :1024]))
    assert torch.equal(long.wav, exact.wav)
    with pytest.raises(ValueError, match="sine noise"):
        model.inference(mel, FixedNoise(phase, sine[..., :100]))
    with pytest.raises(ValueError, match="phase"):
        model.inference(mel, FixedNoise(phase[:, :3], sine))
