"""Random-weight CosyVoice-300M-25Hz decoders (flow + HiFT) with the official dimensions, for benchmarks.

The tiny ``cosyvoice.yaml`` written by ``export.tiny.cosyvoice`` keeps the official structure with shrunk
dimensions; ``full_size_yaml`` puts the official CosyVoice-300M dimensions back (flow: 512-d 6-block
Conformer encoder with 8 heads and 2048 FFN units, U-Net estimator with channels [256, 256], 64-d heads,
4 transformer blocks per level, 12 mid blocks, 8 heads; HiFT: 512 base channels, F0 predictor
conditioning 512). The flow keeps the 5120-id dual-codebook vocabulary. The parameter counts are checked
against the official 300M record (``../shared/golden/token2wav/official_300m_keys.json``):
105,399,040 for the flow, 20,460,591 for HiFT.

* ``build_full_size(device, dtype)`` builds both modules in memory (random init on ``device``, nothing
  written but the small yaml in a temporary folder);
* ``write_full_size_cosyvoice(dest)`` writes ``cosyvoice.yaml``, ``flow.pt`` and ``hift.pt`` (~500 MB)
  that ``load_flow`` / ``load_hift`` / ``export_cosyvoice_onnx`` read like an official folder.

Random weights give the real amount of work, never meaningful audio.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

# (yaml key, tiny value as a regex, official 300M value, lines to change)
FULL_SIZE_DIMS = (
    ("input_size", "32", "512", 2),  # the flow's token embedding and the encoder's input
    ("output_size", "32", "512", 1),  # encoder width
    ("attention_heads", "2", "8", 1),
    ("linear_units", "64", "2048", 1),
    ("num_blocks", "2", "6", 1),
    ("channels", r"\[32, 32\]", "[256, 256]", 1),  # estimator
    ("attention_head_dim", "16", "64", 1),
    ("n_blocks", "1", "4", 1),
    ("num_mid_blocks", "2", "12", 1),
    ("num_heads", "2", "8", 1),
    ("base_channels", "16", "512", 1),  # HiFT
    ("cond_channels", "16", "512", 1),  # HiFT F0 predictor
)
OFFICIAL_PARAMETERS = {"flow": 105_399_040, "hift": 20_460_591}
DECODER_DIR = "CosyVoice-300M-25Hz"


def full_size_yaml(seed: int = 0) -> str:
    """The tiny preset's ``cosyvoice.yaml`` with the official 300M dimensions."""
    from export.tiny.cosyvoice import YAML

    text = YAML.format(seed=seed)
    for key, tiny, full, lines in FULL_SIZE_DIMS:
        text, n = re.subn(rf"^(\s*{key}): {tiny}$", rf"\g<1>: {full}", text, flags=re.MULTILINE)
        if n != lines:
            raise RuntimeError(f"tiny cosyvoice.yaml changed: {key}: {tiny} found on {n} lines, expected {lines}")
    return text


def _check_parameters(flow, hift) -> None:
    got = {"flow": sum(p.numel() for p in flow.parameters()), "hift": sum(p.numel() for p in hift.parameters())}
    if got != OFFICIAL_PARAMETERS:
        raise RuntimeError(f"full-size decoder parameters {got} differ from the official {OFFICIAL_PARAMETERS}")


def build_full_size(device="cpu", dtype=None, seed: int = 0, fold_weight_norm: bool = True, full_size: bool = True):
    """(flow, hift) with random weights and the official dimensions, built on ``device``.

    The flow is cast to ``dtype`` (default float32); HiFT stays float32 (its ``inference`` runs in
    float32 whatever the mel's dtype). Weight norm is folded into HiFT unless ``fold_weight_norm`` is off.
    ``full_size=False`` builds the tiny preset's dimensions instead (for quick checks of the code path)."""
    import torch

    from export.tiny.cosyvoice import YAML
    from stepaudio.tts.cosyvoice_yaml import load_cosyvoice_yaml
    from stepaudio.tts.flow import build_flow
    from stepaudio.tts.hift import HiftConfig, HiFTGenerator

    with tempfile.TemporaryDirectory(prefix="cosyvoice-full-") as tmp:
        path = Path(tmp) / "cosyvoice.yaml"
        path.write_text(full_size_yaml(seed) if full_size else YAML.format(seed=seed), encoding="utf-8")
        conf = load_cosyvoice_yaml(path)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        with torch.device(device):
            flow = build_flow(conf["flow"])
            hift = HiFTGenerator(HiftConfig.from_node(conf["hift"]))
    finally:
        torch.random.set_rng_state(state)
    if full_size:
        _check_parameters(flow, hift)
    if fold_weight_norm:
        hift.remove_weight_norm()
    flow = flow.to(dtype=dtype or torch.float32).eval()
    return flow, hift.eval()


def write_full_size_cosyvoice(dest: str | Path, seed: int = 0) -> Path:
    """Write ``dest/cosyvoice.yaml``, ``flow.pt`` and ``hift.pt`` (official layout and key names)."""
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    flow, hift = build_full_size("cpu", seed=seed, fold_weight_norm=False)
    for name, module in (("flow.pt", flow), ("hift.pt", hift)):
        tmp = dest / (name + ".tmp")
        torch.save({k: v.detach().contiguous() for k, v in module.state_dict().items()}, tmp)
        tmp.replace(dest / name)
    (dest / "cosyvoice.yaml").write_text(full_size_yaml(seed), encoding="utf-8")  # last: marks it complete
    return dest
