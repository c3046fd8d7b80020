"""The one typed deployment config that renders every config.pbtxt.

Presets are data (a dict per preset); overrides are dotted ``section.field=value`` strings,
parsed with the field's type. Every parameter a model reads is a field here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

TOKENIZER_DIR = "Step-Audio-Tokenizer"
TTS_DIR = "Step-Audio-TTS-3B"
CHAT_DIR = "Step-Audio-Chat"
SPEAKERS_DIR = "speakers"
CHECKPOINT_DIRS = (TOKENIZER_DIR, CHAT_DIR, TTS_DIR)


@dataclass
class AudioTokenizerConfig:
    instances: int = 1
    device: str = "cpu"  # "cpu" or "cuda"
    torch_threads: int = 1
    onnx_threads: int = 1
    onnx_providers: str = "CPUExecutionProvider"  # comma-separated, in order of preference
    max_audio_s: float = 600.0


@dataclass
class AudioTokenizerStreamConfig:
    instances: int = 1
    device: str = "cpu"
    torch_threads: int = 1
    onnx_threads: int = 1
    onnx_providers: str = "CPUExecutionProvider"
    max_audio_s: float = 600.0
    segment_ms: int = 2400  # vq06 segment; a multiple of 120 ms
    normalization: str = "running"  # running | none | utterance
    idle_timeout_s: float = 60.0
    max_streams: int = 256
    max_batch_size: int = 16  # sequences the batcher may hand to one execute()
    max_queue_delay_us: int = 2000


@dataclass
class LlmConfig:
    instances: int = 1
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16 | float16; "auto" = the checkpoint's torch_dtype
    torch_threads: int = 1
    max_batch_size: int = 16  # sequences decoded together by one instance
    prefix_reuse: bool = True
    prefix_cache_tokens: int = 65536
    block_size: int = 16
    default_temperature: float = 0.7
    default_top_k: int = 50
    default_top_p: float = 0.9
    default_max_new_tokens: int = 512
    repetition_window: int = 0
    tensor_parallel_size: int = 1  # > 1: the instance starts and drives this many ranks (one GPU each)
    # tts_lm only: "audio" computes logits for the 5120 audio ids and the stop id alone (5121 of 74752
    # lm_head rows) and samples among them; "full" (the reference) samples over the whole vocabulary.
    output_vocab: str = "full"


def _tts_lm_defaults() -> LlmConfig:
    # The reference's TTS decoding: top_p 1.0, repetition-aware processor over 10 tokens.
    return LlmConfig(default_top_p=1.0, default_max_new_tokens=4096, repetition_window=10)


@dataclass
class TtsConfig:
    instances: int = 1
    torch_threads: int = 1
    default_speaker: str = "Tingting"
    voice_cache_size: int = 32  # prepared clone prompts kept (LRU, keyed by audio hash)
    # true: a push to token2wav leaves exactly when token2wav can release a chunk (its chunk policy);
    # false: every push_tokens speech tokens (5 = one 120 ms group). Also the tts_lm response size.
    align_pushes: bool = True
    push_tokens: int = 5
    max_streams: int = 64  # syntheses one instance runs at once (a thread each, mostly waiting on BLS)


@dataclass
class SpeakerEmbeddingConfig:
    instances: int = 1
    onnx_threads: int = 1
    max_audio_s: float = 60.0
    max_batch_size: int = 8
    max_queue_delay_us: int = 1000


@dataclass
class Token2WavConfig:
    instances: int = 1
    device: str = "cpu"
    torch_threads: int = 1
    backend: str = "onnx"  # onnx: flow estimator + HiFT decoder through ONNX Runtime | torch: all PyTorch
    onnx_threads: int = 1
    n_timesteps: int = 10  # Euler steps of the flow ODE
    first_chunk_tokens: int = 20  # about 0.48 s of speech before the first audio
    chunk_growth: float = 2.0
    max_chunk_tokens: int = 100
    lookahead_tokens: int = 5
    idle_timeout_s: float = 60.0
    max_streams: int = 64
    max_batch_size: int = 8  # sequences the batcher may hand to one execute()
    max_queue_delay_us: int = 0


@dataclass
class AsrConfig:
    instances: int = 1
    device: str = "cpu"
    torch_threads: int = 1
    max_audio_s: float = 120.0  # longest utterance accepted
    max_batch_size: int = 8  # requests the dynamic batcher may hand to one execute()
    max_queue_delay_us: int = 2000


@dataclass
class DeploymentConfig:
    preset: str
    checkpoints: Path
    audio_tokenizer: AudioTokenizerConfig = field(default_factory=AudioTokenizerConfig)
    audio_tokenizer_stream: AudioTokenizerStreamConfig = field(default_factory=AudioTokenizerStreamConfig)
    chat_llm: LlmConfig = field(default_factory=LlmConfig)
    tts_lm: LlmConfig = field(default_factory=_tts_lm_defaults)
    tts: TtsConfig = field(default_factory=TtsConfig)
    speaker_embedding: SpeakerEmbeddingConfig = field(default_factory=SpeakerEmbeddingConfig)
    token2wav: Token2WavConfig = field(default_factory=Token2WavConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)

    def present_checkpoints(self) -> dict[str, bool]:
        return {name: (self.checkpoints / name).is_dir() for name in CHECKPOINT_DIRS}


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The embedded default: tiny checkpoints, CPU, one instance per model (a laptop / CI).
    "cpu": {
        "audio_tokenizer": {"instances": 1, "torch_threads": 1},
        "audio_tokenizer_stream": {"instances": 1, "torch_threads": 1},
    },
    # One GPU node with the official checkpoints.
    "gpu": {
        "audio_tokenizer": {
            "instances": 2, "device": "cuda", "torch_threads": 4,
            "onnx_providers": "CUDAExecutionProvider,CPUExecutionProvider",
        },
        "audio_tokenizer_stream": {
            "instances": 2, "device": "cuda", "torch_threads": 4,
            "onnx_providers": "CUDAExecutionProvider,CPUExecutionProvider", "max_batch_size": 32,
        },
        # Step-Audio-Chat (130B, bf16 264 GB) over 4 x 80 GB GPUs, as the reference deploys it.
        "chat_llm": {"device": "cuda", "dtype": "bfloat16", "max_batch_size": 64, "prefix_cache_tokens": 262144,
                     "tensor_parallel_size": 4},
        "tts_lm": {"device": "cuda", "dtype": "bfloat16", "max_batch_size": 64, "prefix_cache_tokens": 262144},
        # The PyTorch flow/HiFT on the GPU until the TensorRT engines built from the ONNX files land.
        "token2wav": {"device": "cuda", "backend": "torch", "instances": 2, "max_streams": 128},
        "asr": {"device": "cuda", "torch_threads": 4, "max_batch_size": 32},
    },
}


class ConfigError(ValueError):
    pass


def _coerce(value: str, typ: Any) -> Any:
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"expected a boolean, got {value!r}")
    try:
        return typ(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"expected {typ.__name__}, got {value!r}") from exc


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    hints = get_type_hints(type(section))
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{where}.{key}: unknown field (known: {', '.join(hints)})")
        setattr(section, key, _coerce(value, hints[key]) if isinstance(value, str) else value)


def load_config(preset: str, checkpoints: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DeploymentConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    cfg = DeploymentConfig(preset=preset, checkpoints=Path(checkpoints).resolve())
    for section_name, values in PRESETS[preset].items():
        _apply(getattr(cfg, section_name), values, section_name)
    for item in overrides:
        key, sep, value = item.partition("=")
        section_name, dot, field_name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        section = getattr(cfg, section_name, None)
        if section is None or not dataclasses.is_dataclass(section):
            raise ConfigError(f"override {item!r}: unknown section {section_name!r}")
        _apply(section, {field_name: value.strip()}, section_name)
    validate(cfg)
    return cfg


def validate(cfg: DeploymentConfig) -> None:
    s = cfg.audio_tokenizer_stream
    if s.segment_ms <= 0 or s.segment_ms % 120:
        raise ConfigError(f"audio_tokenizer_stream.segment_ms={s.segment_ms}: must be a positive multiple of 120")
    if s.normalization not in ("running", "none", "utterance"):
        raise ConfigError(f"audio_tokenizer_stream.normalization={s.normalization!r}: running | none | utterance")
    for name in ("chat_llm", "tts_lm"):
        section = getattr(cfg, name)
        if section.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ConfigError(f"{name}.dtype={section.dtype!r}: float32 | bfloat16 | float16 | auto")
        if section.max_batch_size < 1 or section.block_size < 1:
            raise ConfigError(f"{name}: max_batch_size and block_size must be >= 1")
        if section.tensor_parallel_size < 1:
            raise ConfigError(f"{name}.tensor_parallel_size must be >= 1")
        if section.tensor_parallel_size > 1 and section.instances != 1:
            raise ConfigError(f"{name}: a tensor-parallel deployment runs one instance (it spans the GPUs)")
        if section.output_vocab not in ("full", "audio"):
            raise ConfigError(f"{name}.output_vocab={section.output_vocab!r}: full | audio")
        if section.output_vocab == "audio" and (name != "tts_lm" or section.tensor_parallel_size > 1):
            raise ConfigError(f"{name}.output_vocab=audio: only for tts_lm, without tensor parallelism")
    if cfg.tts.instances < 1:
        raise ConfigError("tts.instances must be >= 1")
    if cfg.asr.max_batch_size < 1 or cfg.asr.max_audio_s <= 0:
        raise ConfigError("asr: max_batch_size must be >= 1 and max_audio_s > 0")
    for name in ("audio_tokenizer", "audio_tokenizer_stream", "chat_llm", "tts_lm", "asr"):
        section = getattr(cfg, name)
        if section.instances < 1:
            raise ConfigError(f"{name}.instances must be >= 1")
        if section.device not in ("cpu", "cuda"):
            raise ConfigError(f"{name}.device={section.device!r}: cpu | cuda")
