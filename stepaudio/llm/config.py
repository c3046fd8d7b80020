"""Step-1 model configuration: the official ``config.json`` of Step-Audio-Chat and Step-Audio-TTS-3B.

``Step1Config.from_file(path)`` reads an official file (extra keys such as ``auto_map`` are kept in
``extra`` and written back); a missing required key or a value of the wrong type raises
``CheckpointError`` naming the file and the key.  ``to_json()`` writes the official key names.

``PRESETS`` holds the dimensions of the two released models and of the random-weight presets used by
tests and benchmarks:

=============  ======  =====  =====  ======  ======  =====================================
preset         hidden  inter  heads  groups  layers  parameters
=============  ======  =====  =====  ======  ======  =====================================
chat-130b      12288   31232  96     8       88      131.9 B (untied embedding and lm_head)
tts-3b         3072    8192   48     4       32      3.53 B
step1-100m     512     1408   8      2       12      110,375,424 (76.5 M of it embed + head)
tiny-chat      48      128    6      2       3       7,250,256
tiny-tts       64      128    4      2       2       9,642,304
=============  ======  =====  =====  ======  ======  =====================================

All presets use the real vocabulary size (74752) and special ids (bos 1, eos 3 = ``<|EOT|>``, pad 0).
``tiny-chat`` uses 6 heads so that the non-power-of-two ALiBi slope rule is exercised, like the
96-head Chat model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stepaudio.tokenizer.files import CheckpointError

__all__ = ["PRESETS", "VOCAB_SIZE", "CheckpointError", "Step1Config"]

VOCAB_SIZE = 74752
ARCHITECTURE = "Step1ForCausalLM"
MODEL_TYPE = "step1"
DTYPES = ("bfloat16", "float16", "float32")

# Required keys of config.json and the JSON types they must have.
_REQUIRED: dict[str, tuple[type, ...]] = {
    "hidden_size": (int,),
    "intermediate_size": (int,),
    "num_attention_heads": (int,),
    "num_attention_groups": (int,),
    "num_hidden_layers": (int,),
    "max_seq_len": (int,),
    "vocab_size": (int,),
    "rms_norm_eps": (float, int),
}
# Keys with a default when absent (the released configs all carry them).
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "bos_token_id": (int,),
    "eos_token_id": (int,),
    "pad_token_id": (int,),
    "torch_dtype": (str,),
    "architectures": (list,),
    "model_type": (str,),
}


@dataclass(frozen=True)
class Step1Config:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_attention_groups: int
    num_hidden_layers: int
    max_seq_len: int
    vocab_size: int = VOCAB_SIZE
    rms_norm_eps: float = 1e-5
    bos_token_id: int = 1
    eos_token_id: int = 3
    pad_token_id: int = 0
    torch_dtype: str = "bfloat16"
    architectures: tuple[str, ...] = (ARCHITECTURE,)
    model_type: str = MODEL_TYPE
    # Keys of config.json this class does not interpret (auto_map, transformers_version, ...).
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "architectures", tuple(self.architectures))
        object.__setattr__(self, "rms_norm_eps", float(self.rms_norm_eps))
        for name in (*_REQUIRED, "bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if name == "rms_norm_eps":
                if not value > 0:
                    raise ValueError(f"rms_norm_eps must be > 0, got {value}")
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if name.endswith("_token_id"):
                if not 0 <= value < self.vocab_size:
                    raise ValueError(f"{name} {value} is outside the vocabulary [0, {self.vocab_size})")
            elif value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_attention_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_attention_groups {self.num_attention_groups}"
            )
        if self.torch_dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {DTYPES}, got {self.torch_dtype!r}")

    # ------------------------------------------------------------------ derived sizes

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        """Output width of k_proj / v_proj: num_attention_groups * head_dim."""
        return self.num_attention_groups * self.head_dim

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_attention_groups

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the official checkpoint, by its safetensors key, in file order."""
        h, inter, v, kv = self.hidden_size, self.intermediate_size, self.vocab_size, self.kv_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "self_attn.q_proj.weight"] = (h, h)
            shapes[p + "self_attn.k_proj.weight"] = (kv, h)
            shapes[p + "self_attn.v_proj.weight"] = (kv, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, h)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            shapes[p + "mlp.gate_proj.weight"] = (inter, h)
            shapes[p + "mlp.up_proj.weight"] = (inter, h)
            shapes[p + "mlp.down_proj.weight"] = (h, inter)
        shapes["model.norm.weight"] = (h,)
        shapes["lm_head.weight"] = (v, h)
        return shapes

    @property
    def num_parameters(self) -> int:
        total = 0
        for shape in self.weight_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        return self.num_hidden_layers * 2 * self.kv_dim * bytes_per_value

    # ------------------------------------------------------------------ JSON

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "config.json") -> Step1Config:
        """Build from the parsed contents of a config.json; errors name ``source`` and the key."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        data = dict(data)
        if "torch_dtype" not in data and "dtype" in data:  # newer transformers write "dtype"
            data["torch_dtype"] = data.pop("dtype")
        for key, types in {**_REQUIRED, **_OPTIONAL}.items():
            if key not in data:
                if key in _REQUIRED:
                    raise CheckpointError(f"{source}: required key {key!r} is missing")
                continue
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, types):
                want = " or ".join(t.__name__ for t in types)
                raise CheckpointError(f"{source}: key {key!r} must be {want}, got {value!r}")
            if key == "architectures" and not all(isinstance(a, str) for a in value):
                raise CheckpointError(f"{source}: key 'architectures' must be a list of strings, got {value!r}")
            kwargs[key] = value
        if kwargs.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise CheckpointError(
                f"{source}: key 'model_type' is {kwargs['model_type']!r}; a Step-1 model has {MODEL_TYPE!r}"
            )
        known = set(_REQUIRED) | set(_OPTIONAL) | {"dtype"}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> Step1Config:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise CheckpointError(f"{path}: Step-1 config.json not found") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=path)

    def to_dict(self) -> dict[str, Any]:
        """The official key names (and any extra keys read from the file)."""
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        out["architectures"] = list(self.architectures)
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False) + "\n"


def _preset(h: int, inter: int, heads: int, groups: int, layers: int, max_seq_len: int) -> Step1Config:
    return Step1Config(
        hidden_size=h,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_attention_groups=groups,
        num_hidden_layers=layers,
        max_seq_len=max_seq_len,
    )


PRESETS: dict[str, Step1Config] = {
    "chat-130b": _preset(12288, 31232, 96, 8, 88, 32768),
    "tts-3b": _preset(3072, 8192, 48, 4, 32, 32768),
    "step1-100m": _preset(512, 1408, 8, 2, 12, 4096),
    "tiny-chat": _preset(48, 128, 6, 2, 3, 4096),
    "tiny-tts": _preset(64, 128, 4, 2, 2, 4096),
}
