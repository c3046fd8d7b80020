"""Small helpers the Python-backend adapters share (no Triton import here)."""

from __future__ import annotations

import json


def model_parameters(args: dict) -> dict[str, str]:
    """The ``parameters`` block of a Triton model config, as plain strings."""
    conf = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in conf.get("parameters", {}).items()}


def instance_device(args: dict, configured: str) -> str:
    """torch device for this instance: cuda:<id> for KIND_GPU instances, else cpu."""
    if configured == "cuda" and args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    return "cuda" if configured == "cuda" else "cpu"


def providers(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]
