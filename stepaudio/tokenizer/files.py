"""Where the files of an official ``Step-Audio-Tokenizer`` folder live, checked with clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PARAFORMER_SUBDIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
KMEANS_FILE = "linguistic_tokenizer.npy"
SPEECH_TOKENIZER_FILE = "speech_tokenizer_v1.onnx"


class CheckpointError(RuntimeError):
    """A missing or malformed checkpoint file; the message names the file and what was expected."""


@dataclass(frozen=True)
class TokenizerFiles:
    root: Path
    paraformer_dir: Path
    config_yaml: Path
    model_pt: Path
    cmvn_file: Path
    tokens_json: Path
    kmeans_npy: Path
    speech_tokenizer_onnx: Path


def _meta_path(paraformer_dir: Path, key: str, default: str) -> Path:
    """configuration.json's ``file_path_metas`` names the files in a FunASR model folder."""
    conf = paraformer_dir / "configuration.json"
    if not conf.exists():
        return paraformer_dir / default
    try:
        metas = json.loads(conf.read_text(encoding="utf-8")).get("file_path_metas", {})
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{conf}: not valid JSON ({exc})") from exc
    value = metas.get(key, default)
    if isinstance(value, dict):  # e.g. {"token_list": "tokens.json"}
        value = next(iter(value.values()), default)
    return paraformer_dir / str(value)


def locate_tokenizer_files(root: str | Path) -> TokenizerFiles:
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: Step-Audio-Tokenizer folder not found")
    pdir = root / PARAFORMER_SUBDIR
    if not pdir.is_dir():
        raise CheckpointError(f"{pdir}: FunASR Paraformer-streaming folder not found (expected {PARAFORMER_SUBDIR}/)")
    files = TokenizerFiles(
        root=root,
        paraformer_dir=pdir,
        config_yaml=_meta_path(pdir, "config", "config.yaml"),
        model_pt=_meta_path(pdir, "init_param", "model.pt"),
        cmvn_file=pdir / "am.mvn",
        tokens_json=pdir / "tokens.json",
        kmeans_npy=root / KMEANS_FILE,
        speech_tokenizer_onnx=root / SPEECH_TOKENIZER_FILE,
    )
    expected = {
        files.config_yaml: "FunASR model config (YAML)",
        files.model_pt: "Paraformer state_dict (torch pickle)",
        files.cmvn_file: "Kaldi nnet CMVN text (am.mvn)",
        files.kmeans_npy: "k-means centroids, float32 (1024, D)",
        files.speech_tokenizer_onnx: "CosyVoice 25 Hz speech tokenizer ONNX",
    }
    missing = [f"{p} ({what})" for p, what in expected.items() if not p.is_file()]
    if missing:
        raise CheckpointError("missing tokenizer files: " + "; ".join(missing))
    return files
