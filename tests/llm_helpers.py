"""Tiny random Step-1 models built in memory for engine and model tests."""

from __future__ import annotations

import torch

from stepaudio.llm.config import Step1Config
from stepaudio.llm.model import Step1ForCausalLM, TensorParallel


def tiny_config(**over) -> Step1Config:
    base = dict(
        hidden_size=48, intermediate_size=96, num_attention_heads=6, num_attention_groups=2,
        num_hidden_layers=2, max_seq_len=512, vocab_size=320, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=3, pad_token_id=0, torch_dtype="float32",
    )
    base.update(over)
    return Step1Config(**base)


def random_state_dict(cfg: Step1Config, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Step1ForCausalLM(cfg).state_dict().items()}
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[name] = 0.08 * torch.randn(shape, generator=g)
    return out


def tiny_model(seed: int = 0, tp: TensorParallel | None = None, **over) -> Step1ForCausalLM:
    cfg = tiny_config(**over)
    model = Step1ForCausalLM(cfg, tp)
    full = random_state_dict(cfg, seed)
    if tp is None or tp.size == 1:
        model.load_state_dict(full)
    else:
        from stepaudio.llm.tp import shard_state_dict

        model.load_state_dict(shard_state_dict(full, model.state_dict(), tp))
    return model.eval()
