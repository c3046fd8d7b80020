"""Linguistic stream "vq02": FunASR Paraformer-streaming encoder + k-means, 16.67 codes/s.

The encoder runs with the reference's streaming parameters: strides of 3840 samples (240 ms,
4 LFR frames), 5 overlap frames, a look-back of 4 chunks. It is causal, so codes stream exactly:
the same strides give the same codes whether the audio arrives at once or in 20 ms pieces.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from stepaudio.tokenizer.files import CheckpointError, TokenizerFiles

log = logging.getLogger(__name__)

CHUNK_SIZE = (0, 4, 5)  # (left, new LFR frames, right/overlap) as the reference passes it
ENCODER_CHUNK_LOOK_BACK = 4
DECODER_CHUNK_LOOK_BACK = 1
STRIDE_SAMPLES = CHUNK_SIZE[1] * 960  # 3840 samples = 240 ms at 16 kHz
MIN_FINAL_SAMPLES = 480  # the reference skips a shorter final piece the frontend cannot frame


def _load_funasr() -> Any:
    # Importing these modules registers the classes in funasr's tables.
    import funasr.frontends.wav_frontend
    import funasr.models.paraformer_streaming.model  # noqa: F401
    from funasr.register import tables

    return tables


def _read_yaml(path: Path) -> dict:
    try:
        conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a valid YAML config ({exc})") from exc
    if not isinstance(conf, dict):
        raise CheckpointError(f"{path}: expected a mapping at the top level")
    for key in ("model", "encoder", "encoder_conf", "frontend_conf"):
        if key not in conf:
            raise CheckpointError(f"{path}: missing key '{key}' of a FunASR Paraformer config")
    if conf["model"] != "ParaformerStreaming":
        raise CheckpointError(f"{path}: model is '{conf['model']}', expected 'ParaformerStreaming'")
    return conf


def _read_vocab(files: TokenizerFiles) -> list[str]:
    if files.tokens_json.is_file():
        try:
            tokens = json.loads(files.tokens_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{files.tokens_json}: not valid JSON ({exc})") from exc
        if not isinstance(tokens, list):
            raise CheckpointError(f"{files.tokens_json}: expected a JSON list of tokens")
        return [str(t) for t in tokens]
    txt = files.paraformer_dir / "tokens.txt"
    if txt.is_file():
        return [line.split()[0] for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise CheckpointError(f"{files.tokens_json}: token list not found (nor tokens.txt)")


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read a torch state_dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state_dict mapping, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


@dataclass
class LinguisticState:
    """Per-stream state: the funasr frontend/encoder caches."""

    cache: dict = field(default_factory=dict)
    strides_done: int = 0


@dataclass(frozen=True)
class ParaformerModel:
    """FunASR's ParaformerStreaming (encoder, CIF predictor, decoder) as loaded from a tokenizer
    folder, with what its users need to run it. One object can serve the linguistic encoder and
    the recogniser in one process (``stepaudio.asr``)."""

    files: TokenizerFiles
    model: torch.nn.Module  # eval mode, on ``device``
    device: torch.device
    encoder_conf: dict
    frontend_name: str  # config.yaml's ``frontend`` (the streaming one for this model)
    frontend_conf: dict  # dither forced to 0.0; the CMVN file is files.cmvn_file
    vocab: list[str]  # tokens.json: id -> token


def load_paraformer(files: TokenizerFiles, device: str = "cpu") -> ParaformerModel:
    """Build ParaformerStreaming from config.yaml and load model.pt (every parameter must be there)."""
    tables = _load_funasr()
    conf = _read_yaml(files.config_yaml)
    frontend_conf = dict(conf["frontend_conf"])
    # Dither adds random noise to fbank; tokens must be reproducible, so it is always off.
    frontend_conf["dither"] = 0.0
    frontend_conf.pop("cmvn_file", None)
    vocab = _read_vocab(files)
    model_cls = tables.model_classes[conf["model"]]
    kwargs = {k: conf[k] for k in ("encoder", "encoder_conf", "decoder", "decoder_conf", "predictor",
                                   "predictor_conf") if k in conf}
    input_size = frontend_conf.get("n_mels", 80) * frontend_conf.get("lfr_m", 1)
    try:
        model = model_cls(**conf.get("model_conf", {}), **kwargs, vocab_size=len(vocab),
                          input_size=input_size, frontend=None)
    except Exception as exc:
        raise CheckpointError(f"{files.config_yaml}: cannot build ParaformerStreaming ({exc})") from exc
    state = _load_state_dict(files.model_pt)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches between config and weights
        raise CheckpointError(f"{files.model_pt}: weights do not fit {files.config_yaml.name} ({exc})") from exc
    if result.missing_keys:
        raise CheckpointError(
            f"{files.model_pt}: {len(result.missing_keys)} parameters missing for the config "
            f"in {files.config_yaml.name}, e.g. {result.missing_keys[:3]}"
        )
    if result.unexpected_keys:
        log.warning("%s: ignoring %d unexpected keys", files.model_pt, len(result.unexpected_keys))
    dev = torch.device(device)
    return ParaformerModel(
        files=files,
        model=model.eval().to(dev),
        device=dev,
        encoder_conf=conf["encoder_conf"],
        frontend_name=conf.get("frontend", "WavFrontendOnline"),
        frontend_conf=frontend_conf,
        vocab=vocab,
    )


class ParaformerLinguisticEncoder:
    """The Paraformer encoder (final output after ``after_norm``) and the vq02 k-means table."""

    def __init__(self, files: TokenizerFiles, device: str = "cpu", paraformer: ParaformerModel | None = None):
        self.paraformer = paraformer or load_paraformer(files, device)
        tables = _load_funasr()
        self.frontend = tables.frontend_classes[self.paraformer.frontend_name](
            cmvn_file=str(files.cmvn_file), **self.paraformer.frontend_conf
        )
        self.model = self.paraformer.model
        self.device = self.paraformer.device
        self.encoder_conf = self.paraformer.encoder_conf
        self.frontend_conf = self.paraformer.frontend_conf
        self.output_size = int(self.encoder_conf["output_size"])
        self.centroids = self._load_centroids(files.kmeans_npy)

    def _load_centroids(self, path: Path) -> torch.Tensor:
        try:
            table = np.load(path)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read a .npy array ({exc})") from exc
        if table.ndim != 2 or table.shape[0] != 1024 or table.shape[1] != self.output_size:
            raise CheckpointError(
                f"{path}: expected k-means centroids of shape (1024, {self.output_size}) "
                f"(the encoder output size), got {table.shape}"
            )
        return torch.from_numpy(table.astype(np.float32))

    def new_state(self) -> LinguisticState:
        state = LinguisticState()
        self.model.init_cache(
            state.cache,
            chunk_size=list(CHUNK_SIZE),
            encoder_chunk_look_back=ENCODER_CHUNK_LOOK_BACK,
            decoder_chunk_look_back=DECODER_CHUNK_LOOK_BACK,
            encoder_conf=self.encoder_conf,
            frontend_conf=self.frontend_conf,
        )
        return state

    @torch.inference_mode()
    def encode_stride(self, state: LinguisticState, samples: np.ndarray, is_final: bool) -> np.ndarray:
        """Encode one stride (<= 3840 samples at 16 kHz, already gain-normalised).

        Returns the encoder output of the new LFR frames, (n_new, D) float32.
        """
        from funasr.utils.load_utils import extract_fbank

        empty = np.zeros((0, self.output_size), dtype=np.float32)
        if len(samples) == 0:
            return empty
        try:
            feats, feats_len = extract_fbank(
                [torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))],
                data_type="sound",
                frontend=self.frontend,
                cache=state.cache["frontend"],
                is_final=is_final,
            )
        except Exception:
            # As the reference: a final piece too short to frame is skipped.
            if is_final and len(samples) < MIN_FINAL_SAMPLES:
                return empty
            raise
        state.strides_done += 1
        n_new = int(feats_len[0]) if len(feats_len) else 0
        if feats.shape[1] == 0 or n_new == 0:
            return empty
        enc, _ = self.model.encode_chunk(feats.to(self.device), feats_len, cache=state.cache, is_final=is_final)
        return enc[0, -n_new:].float().cpu().numpy()

    def quantize(self, enc: np.ndarray) -> np.ndarray:
        """Nearest centroid by Euclidean distance (as the reference: cdist + argmin) -> vq02 codes."""
        if len(enc) == 0:
            return np.zeros(0, dtype=np.int64)
        dist = torch.cdist(torch.from_numpy(enc), self.centroids)
        return dist.argmin(dim=1).numpy().astype(np.int64)
