"""Build the flow from a ``cosyvoice.yaml`` ``flow:`` block and load ``flow.pt`` strictly."""

from __future__ import annotations

from pathlib import Path

import torch

from stepaudio.tokenizer.files import CheckpointError
from stepaudio.tts.cosyvoice_yaml import Node, load_cosyvoice_yaml
from stepaudio.tts.flow.cfm import ConditionalCFM
from stepaudio.tts.flow.conformer import ConformerEncoder
from stepaudio.tts.flow.decoder import ConditionalDecoder
from stepaudio.tts.flow.flow import MaskedDiffWithXvec
from stepaudio.tts.flow.length_regulator import InterpolateRegulator

CONFIG_FILE = "cosyvoice.yaml"
FLOW_FILE = "flow.pt"

# The classes each yaml slot may name (class name only: Step vendors them under cosyvoice.*).
_CLASSES = {
    "flow": ("MaskedDiffWithXvec", MaskedDiffWithXvec),
    "encoder": ("ConformerEncoder", ConformerEncoder),
    "length_regulator": ("InterpolateRegulator", InterpolateRegulator),
    "decoder": ("ConditionalCFM", ConditionalCFM),
    "estimator": ("ConditionalDecoder", ConditionalDecoder),
}


def _node(value, slot: str) -> Node:
    expected = _CLASSES[slot][0]
    if not isinstance(value, Node) or value.kind != "new":
        raise ValueError(f"flow config: '{slot}' must be a !new:{expected} object")
    if value.class_name != expected:
        raise ValueError(f"flow config: '{slot}' is {value.target}, only {expected} is supported")
    return value


def _cfm_params(value) -> dict:
    # The yaml wraps them as !new:omegaconf.DictConfig {content: {...}}; accept a plain mapping too.
    if isinstance(value, Node):
        value = value.kwargs.get("content", value.kwargs)
    if not isinstance(value, dict):
        raise ValueError("flow config: decoder.cfm_params must be a mapping")
    return dict(value)


def build_flow(flow_node: Node) -> MaskedDiffWithXvec:
    """Instantiate the flow from the parsed ``flow:`` node (weights uninitialised in meaning)."""
    kw = dict(_node(flow_node, "flow").kwargs)
    enc_kw = dict(_node(kw.pop("encoder", None), "encoder").kwargs)
    lr_kw = dict(_node(kw.pop("length_regulator", None), "length_regulator").kwargs)
    dec_kw = dict(_node(kw.pop("decoder", None), "decoder").kwargs)
    est_kw = dict(_node(dec_kw.pop("estimator", None), "estimator").kwargs)
    dec_kw["cfm_params"] = _cfm_params(dec_kw.get("cfm_params", {}))
    try:
        decoder = ConditionalCFM(**dec_kw, estimator=ConditionalDecoder(**est_kw))
        return MaskedDiffWithXvec(
            encoder=ConformerEncoder(**enc_kw),
            length_regulator=InterpolateRegulator(**lr_kw),
            decoder=decoder,
            **kw,
        )
    except TypeError as exc:  # an argument the module does not know
        raise ValueError(f"flow config: {exc}") from exc


def load_flow(model_dir: str | Path, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> MaskedDiffWithXvec:
    """``model_dir`` holds ``cosyvoice.yaml`` and ``flow.pt`` (official CosyVoice layout).

    Every parameter name and shape in ``flow.pt`` must match the yaml's architecture
    (``strict=True``); anything missing or malformed raises ``CheckpointError`` naming the file.
    """
    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / CONFIG_FILE, model_dir / FLOW_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (a CosyVoice model folder needs {CONFIG_FILE} and {FLOW_FILE})")
    try:
        # Weights come from flow.pt, so the modules are created without memory or random init.
        with torch.device("meta"):
            flow = build_flow(load_cosyvoice_yaml(config_path)["flow"])
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc

    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{weights_path}: cannot read a torch state_dict ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights_path}: expected a state_dict of tensors")
    try:
        flow.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # missing / unexpected keys, shape mismatches
        detail = " ".join(str(exc).split())  # torch's message spans lines
        raise CheckpointError(f"{weights_path}: does not fit {config_path.name}: {detail}") from exc
    return flow.to(device=device, dtype=dtype).eval()
