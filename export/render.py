"""Render a fresh, servable model repository from the deployment config.

Templates (``model_repository/<model>/config.pbtxt.tmpl``) are never edited in place; the output
folder is rebuilt from scratch. Rendering is strict: a placeholder without a value is an error,
and no ``${`` may survive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client import tensors as T
from export.deploy_config import CHAT_DIR, SPEAKERS_DIR, TOKENIZER_DIR, TTS_DIR, DeploymentConfig

TEMPLATE_ROOT = Path(__file__).resolve().parent.parent / "model_repository"
COMMON_DECODER = "CosyVoice-300M-25Hz"  # its campplus.onnx embeds speakers for both decoders
DECODERS = (COMMON_DECODER, "CosyVoice-300M-25Hz-Music")
ONNX_EXPORT_VERSION = "3"  # bump when export/onnx_tts.py changes what it writes
PLACEHOLDER_RE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_]")


class RenderError(RuntimeError):
    pass


def _tensor_block(kind: str, specs: tuple[T.TensorSpec, ...]) -> str:
    items = []
    for s in specs:
        extra = ""
        if s.optional:
            extra += " optional: true"
        if s.ragged:
            extra += " allow_ragged_batch: true"
        dims = ", ".join(str(d) for d in s.dims)
        items.append(f'  {{ name: "{s.name}" data_type: {s.triton_dtype} dims: [ {dims} ]{extra} }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]"


def _parameters(params: dict[str, object]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    lines = [f'  {{ key: "{k}" value {{ string_value: "{fmt(v)}" }} }}' for k, v in params.items()]
    return ",\n".join(lines)


def _section_params(section: object) -> dict[str, object]:
    skip = {"instances", "max_queue_delay_us"}
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name not in skip}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    checkpoint: str  # the checkpoint folder it needs
    values: Callable[[DeploymentConfig], dict[str, object]]
    template: str = ""  # template folder; defaults to the model's name
    also_needs: tuple[str, ...] = ()  # further checkpoint folders
    # Writes build artifacts (e.g. ONNX files) into the staged model folder: (config, model folder, cache folder).
    artifacts: Callable[[DeploymentConfig, Path, Path], None] | None = None

    @property
    def template_dir(self) -> str:
        return self.template or self.name


def _tokenizer_values(cfg: DeploymentConfig) -> dict[str, object]:
    s = cfg.audio_tokenizer
    return {
        "name": T.AUDIO_TOKENIZER,
        "inputs": _tensor_block("input", T.AUDIO_TOKENIZER_INPUTS),
        "outputs": _tensor_block("output", T.AUDIO_TOKENIZER_OUTPUTS),
        "instances": s.instances,
        "instance_kind": "KIND_GPU" if s.device == "cuda" else "KIND_CPU",
        "parameters": _parameters({"checkpoint_dir": cfg.checkpoints / TOKENIZER_DIR, **_section_params(s)}),
    }


def _stream_values(cfg: DeploymentConfig) -> dict[str, object]:
    s = cfg.audio_tokenizer_stream
    return {
        "name": T.AUDIO_TOKENIZER_STREAM,
        "inputs": _tensor_block("input", T.STREAM_INPUTS),
        "outputs": _tensor_block("output", T.STREAM_OUTPUTS),
        "max_batch_size": s.max_batch_size,
        "max_sequence_idle_us": int(s.idle_timeout_s * 1_000_000),
        "max_candidate_sequences": s.max_streams,
        "max_queue_delay_us": s.max_queue_delay_us,
        "control_start": T.CONTROL_START,
        "control_end": T.CONTROL_END,
        "control_corrid": T.CONTROL_CORRID,
        "instances": s.instances,
        "instance_kind": "KIND_GPU" if s.device == "cuda" else "KIND_CPU",
        "parameters": _parameters({"checkpoint_dir": cfg.checkpoints / TOKENIZER_DIR, **_section_params(s)}),
    }


def _llm_values(name: str, mode: str, checkpoint: str) -> Callable[[DeploymentConfig], dict[str, object]]:
    def values(cfg: DeploymentConfig) -> dict[str, object]:
        s = getattr(cfg, name)
        inputs = T.LLM_INPUTS if mode == "chat" else tuple(x for x in T.LLM_INPUTS if x is not T.MESSAGES_JSON)
        return {
            "name": name,
            "inputs": _tensor_block("input", inputs),
            "outputs": _tensor_block("output", T.LLM_OUTPUTS),
            "instances": s.instances,
            # A TP instance places its ranks on GPUs itself (KIND_MODEL), instead of one per GPU.
            "instance_kind": "KIND_MODEL" if s.tensor_parallel_size > 1 else
                             "KIND_GPU" if s.device == "cuda" else "KIND_CPU",
            "parameters": _parameters({"checkpoint_dir": cfg.checkpoints / checkpoint, "mode": mode,
                                       **_section_params(s)}),
        }

    return values


def _chunk_policy_params(cfg: DeploymentConfig) -> dict[str, object]:
    t = cfg.token2wav
    return {"first_chunk_tokens": t.first_chunk_tokens, "chunk_growth": t.chunk_growth,
            "max_chunk_tokens": t.max_chunk_tokens, "lookahead_tokens": t.lookahead_tokens}


def _tts_values(cfg: DeploymentConfig) -> dict[str, object]:
    s = cfg.tts
    return {
        "name": T.TTS,
        "inputs": _tensor_block("input", T.TTS_INPUTS),
        "outputs": _tensor_block("output", T.TTS_OUTPUTS),
        "instances": s.instances,
        "instance_kind": "KIND_CPU",
        # token2wav's chunk policy, so tts pushes tokens exactly when a chunk is due
        "parameters": _parameters({**_chunk_policy_params(cfg), "tts_dir": cfg.checkpoints / TTS_DIR,
                                   "tokenizer_dir": cfg.checkpoints / TOKENIZER_DIR,
                                   "speakers_dir": cfg.checkpoints / SPEAKERS_DIR, **_section_params(s)}),
    }


def _speaker_embedding_values(cfg: DeploymentConfig) -> dict[str, object]:
    s = cfg.speaker_embedding
    return {
        "name": T.SPEAKER_EMBEDDING,
        "inputs": _tensor_block("input", T.SPEAKER_EMBEDDING_INPUTS),
        "outputs": _tensor_block("output", T.SPEAKER_EMBEDDING_OUTPUTS),
        "max_batch_size": s.max_batch_size,
        "max_queue_delay_us": s.max_queue_delay_us,
        "instances": s.instances,
        "parameters": _parameters({"decoder_dir": cfg.checkpoints / TTS_DIR / COMMON_DECODER, **_section_params(s)}),
    }


def _token2wav_values(cfg: DeploymentConfig) -> dict[str, object]:
    s = cfg.token2wav
    return {
        "name": T.TOKEN2WAV,
        "inputs": _tensor_block("input", T.TOKEN2WAV_INPUTS),
        "outputs": _tensor_block("output", T.TOKEN2WAV_OUTPUTS),
        "max_batch_size": s.max_batch_size,
        "max_sequence_idle_us": int(s.idle_timeout_s * 1_000_000),
        "max_candidate_sequences": s.max_streams,
        "max_queue_delay_us": s.max_queue_delay_us,
        "control_start": T.CONTROL_START,
        "control_end": T.CONTROL_END,
        "control_corrid": T.CONTROL_CORRID,
        "instances": s.instances,
        "instance_kind": "KIND_GPU" if s.device == "cuda" else "KIND_CPU",
        "parameters": _parameters({"tts_dir": cfg.checkpoints / TTS_DIR, **_section_params(s)}),
    }


def _token2wav_onnx(cfg: DeploymentConfig, model_dir: Path, cache_dir: Path) -> None:
    """backend=onnx: the flow estimator and HiFT decoder of each decoder as ONNX files in ``1/onnx/<decoder>/``,
    exported once per checkpoint version (cached by the files' paths, sizes and modification times)."""
    if cfg.token2wav.backend == "torch":
        return
    if cfg.token2wav.backend != "onnx":
        raise RenderError(f"token2wav.backend must be onnx or torch, got {cfg.token2wav.backend!r}")
    from export.onnx_tts import export_cosyvoice_onnx

    for name in DECODERS:
        src = cfg.checkpoints / TTS_DIR / name
        key = hashlib.sha1(ONNX_EXPORT_VERSION.encode())
        for f in ("cosyvoice.yaml", "flow.pt", "hift.pt"):
            st = (src / f).stat()
            key.update(f"{(src / f).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        cached = cache_dir / f"{name}-{key.hexdigest()[:16]}"
        if not (cached / "done").is_file():
            print(f"[export] exporting {name} flow estimator and HiFT decoder to ONNX", flush=True)
            shutil.rmtree(cached, ignore_errors=True)
            export_cosyvoice_onnx(src, cached)
            (cached / "done").write_text("ok\n")
        shutil.copytree(cached, model_dir / "1" / "onnx" / name, ignore=shutil.ignore_patterns("done"))


def _asr_values(cfg: DeploymentConfig) -> dict[str, object]:
    s = cfg.asr
    return {
        "name": T.ASR,
        "inputs": _tensor_block("input", T.ASR_INPUTS),
        "outputs": _tensor_block("output", T.ASR_OUTPUTS),
        "max_batch_size": s.max_batch_size,
        "max_queue_delay_us": s.max_queue_delay_us,
        "instances": s.instances,
        "instance_kind": "KIND_GPU" if s.device == "cuda" else "KIND_CPU",
        "parameters": _parameters({"checkpoint_dir": cfg.checkpoints / TOKENIZER_DIR, **_section_params(s)}),
    }


MODELS = (
    ModelSpec(T.AUDIO_TOKENIZER, TOKENIZER_DIR, _tokenizer_values),
    ModelSpec(T.AUDIO_TOKENIZER_STREAM, TOKENIZER_DIR, _stream_values),
    ModelSpec(T.CHAT_LLM, CHAT_DIR, _llm_values(T.CHAT_LLM, "chat", CHAT_DIR), template="llm"),
    ModelSpec(T.TTS_LM, TTS_DIR, _llm_values(T.TTS_LM, "tts", TTS_DIR), template="llm"),
    ModelSpec(T.SPEAKER_EMBEDDING, TTS_DIR, _speaker_embedding_values),
    ModelSpec(T.TOKEN2WAV, TTS_DIR, _token2wav_values, artifacts=_token2wav_onnx),
    ModelSpec(T.TTS, TTS_DIR, _tts_values, also_needs=(TOKENIZER_DIR,)),
    ModelSpec(T.ASR, TOKENIZER_DIR, _asr_values),
)


def render_text(template: str, values: dict[str, object], where: str) -> str:
    try:
        text = string.Template(template).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise RenderError(f"{where}: no value for placeholder ${{{exc.args[0]}}}") from exc
    except ValueError as exc:
        raise RenderError(f"{where}: malformed placeholder ({exc})") from exc
    left = PLACEHOLDER_RE.findall(text)
    if left:
        raise RenderError(f"{where}: placeholders survived rendering: {left}")
    return text


@dataclass
class BuildReport:
    out_dir: Path
    models: list[str]
    missing_checkpoints: list[str]


def build_repository(cfg: DeploymentConfig, out_dir: str | Path, template_root: Path = TEMPLATE_ROOT) -> BuildReport:
    out_dir = Path(out_dir)
    present = cfg.present_checkpoints()
    missing = [name for name, ok in present.items() if not ok]
    specs = [m for m in MODELS if present.get(m.checkpoint) and all(present.get(n) for n in m.also_needs)]
    if not specs:
        raise RenderError(
            f"{cfg.checkpoints}: holds none of the servable checkpoint folders "
            f"({', '.join(sorted({m.checkpoint for m in MODELS}))})"
        )
    staging = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for spec in specs:
        src = template_root / spec.template_dir
        tmpl = src / "config.pbtxt.tmpl"
        dst = staging / spec.name
        (dst / "1").mkdir(parents=True)
        (dst / "config.pbtxt").write_text(render_text(tmpl.read_text(encoding="utf-8"), spec.values(cfg), str(tmpl)))
        shutil.copy2(src / "1" / "model.py", dst / "1" / "model.py")
        if spec.artifacts is not None:
            spec.artifacts(cfg, dst, out_dir.parent / "artifact-cache")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return BuildReport(out_dir, [s.name for s in specs], missing)
