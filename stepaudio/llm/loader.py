"""Load official Step-1 checkpoints (config.json + safetensors, sharded with an index or single).

Weights are read lazily from memory-mapped safetensors: each rank reads only its slice of each
tensor (``get_slice``), and the model is built on the meta device first, so loading a checkpoint
never holds two copies of it in memory.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from stepaudio.llm.config import Step1Config
from stepaudio.llm.model import Step1ForCausalLM, TensorParallel
from stepaudio.tokenizer.files import CheckpointError

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# Which dimension of the full tensor each rank slices (0: output rows, 1: input columns).
_SHARD_DIM = [
    (re.compile(r".*\.self_attn\.(q_proj|k_proj|v_proj)\.weight$"), 0),
    (re.compile(r".*\.self_attn\.o_proj\.weight$"), 1),
    (re.compile(r".*\.mlp\.(gate_proj|up_proj)\.weight$"), 0),
    (re.compile(r".*\.mlp\.down_proj\.weight$"), 1),
    (re.compile(r"^lm_head\.weight$"), 0),
]


def shard_dim(name: str) -> int | None:
    for pattern, dim in _SHARD_DIM:
        if pattern.match(name):
            return dim
    return None


def weight_map(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index json or the single shard."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            mapping = data["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: expected JSON with a 'weight_map' object ({exc})") from exc
        files = {name: model_dir / fname for name, fname in mapping.items()}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in {INDEX_FILE} is missing")
        return files
    shards = sorted(model_dir.glob("*.safetensors"))
    if len(shards) != 1:
        raise CheckpointError(
            f"{model_dir}: expected {INDEX_FILE} or exactly one *.safetensors file, found {len(shards)}"
        )
    from safetensors import safe_open

    with safe_open(str(shards[0]), framework="pt") as f:
        return {name: shards[0] for name in f.keys()}


def load_step1(
    model_dir: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    tp: TensorParallel | None = None,
) -> Step1ForCausalLM:
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    cfg = Step1Config.from_file(model_dir / "config.json")
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    dtype = dtype or DTYPES.get(cfg.torch_dtype, torch.float32)
    tp = tp or TensorParallel()
    with torch.device("meta"):
        model = Step1ForCausalLM(cfg, tp)
    files = weight_map(model_dir)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(files))
    if missing:
        raise CheckpointError(
            f"{model_dir}: {len(missing)} tensors missing from the checkpoint, e.g. {missing[:3]} "
            "(Step1ForCausalLM key names: model.layers.N.self_attn.q_proj.weight, ..., lm_head.weight)"
        )
    extra = sorted(set(files) - set(expected))
    if extra:
        log.warning("%s: ignoring %d unexpected tensors, e.g. %s", model_dir, len(extra), extra[:3])
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    loaded: dict[str, torch.Tensor] = {}
    for path, names in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in names:
                    loaded[name] = _read(f, name, expected[name].shape, tp, path).to(device=device, dtype=dtype)
        except SafetensorError as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    model.load_state_dict(loaded, strict=True, assign=True)
    # Buffers (ALiBi slopes) were created on the meta device: rebuild them.
    for module in model.modules():
        if hasattr(module, "slopes"):
            from stepaudio.llm.model import alibi_slopes

            n = module.n_heads
            module.slopes = alibi_slopes(cfg.num_attention_heads)[tp.rank * n : (tp.rank + 1) * n].to(device)
    if torch.device(device).type == "cpu":
        model.column_major_head()
    return model.eval()


def _read(f, name: str, local_shape: torch.Size, tp: TensorParallel, path: Path) -> torch.Tensor:
    sl = f.get_slice(name)
    full_shape = tuple(sl.get_shape())
    dim = shard_dim(name) if tp.size > 1 else None
    if dim is None:
        want = tuple(local_shape)
        tensor = sl[:]
    else:
        n = local_shape[dim]
        want = tuple(s * tp.size if i == dim else s for i, s in enumerate(local_shape))
        start, stop = tp.rank * n, (tp.rank + 1) * n
        tensor = sl[start:stop] if dim == 0 else sl[:, start:stop]
    if full_shape != want:
        raise CheckpointError(f"{path}: tensor {name} has shape {full_shape}, the config implies {want}")
    return tensor
