"""The tiny CosyVoice decoder folders load strictly with our flow and HiFT and make audio."""

import hashlib

import torch

from export.tiny.cosyvoice import write_cosyvoice
from stepaudio.tts.flow import load_flow
from stepaudio.tts.hift import TorchNoise, load_hift


def test_tiny_tts_has_both_decoders(tiny_checkpoints):
    for name in ("CosyVoice-300M-25Hz", "CosyVoice-300M-25Hz-Music"):
        d = tiny_checkpoints / "Step-Audio-TTS-3B" / name
        assert {"cosyvoice.yaml", "flow.pt", "hift.pt", "campplus.onnx"} <= {p.name for p in d.iterdir()}
    assert (tiny_checkpoints / "speakers" / "speakers_info.json").is_file()


def test_deterministic_and_synthesises(tmp_path):
    a, b = write_cosyvoice(tmp_path / "a", 3), write_cosyvoice(tmp_path / "b", 3)
    for f in ("cosyvoice.yaml", "flow.pt", "hift.pt"):
        assert hashlib.sha256((a / f).read_bytes()).digest() == hashlib.sha256((b / f).read_bytes()).digest()
    flow, hift = load_flow(a), load_hift(a)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 5120, (25,), generator=g)
    prompt = torch.randint(0, 5120, (10,), generator=g)
    with torch.inference_mode():
        mel = flow.inference(tokens, prompt, torch.randn(20, 80, generator=g) - 5, torch.randn(192, generator=g),
                             generator=g)
        out = hift.inference(mel, noise=TorchNoise(0))
    assert mel.shape == (1, 80, flow.mel_frames(25))
    assert out.wav.shape[-1] == 256 * mel.shape[-1]
    assert torch.isfinite(out.wav).all() and out.wav.abs().max() > 1e-3
    assert (out.f0 > 10).float().mean() > 0.5  # the F0 head was rescaled: frames are voiced
