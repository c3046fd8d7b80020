"""Random-weight ``Step-Audio-Tokenizer/`` in the official layout.

::

    Step-Audio-Tokenizer/
      dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
        config.yaml  model.pt  am.mvn  tokens.json  configuration.json
      linguistic_tokenizer.npy      (1024, D) float32 k-means centroids in the encoder's output space
      speech_tokenizer_v1.onnx      25 Hz speech tokenizer: feats (B,128,T) -> indices (B, ceil(T/4))

The FunASR directory is built with FunASR's own model class (``ParaformerStreaming``) from the written
``config.yaml``, so it loads the way the official model does.  Tiny dims by default; ``full_size``
uses the official model's dims (large files, for benchmarks only).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from . import TinyOptions
from .speech_tokenizer import FULL_DIMS, TINY_DIMS, build_speech_tokenizer, export_onnx, whisper_like_log_mel

PARAFORMER_SUBDIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
PARAFORMER_FILES = ("config.yaml", "model.pt", "am.mvn", "tokens.json", "configuration.json")
CODEBOOK_FILE = "linguistic_tokenizer.npy"
SPEECH_TOKENIZER_FILE = "speech_tokenizer_v1.onnx"

FEATS_DIM = 560  # 80 mel bins x LFR 7
N_LINGUISTIC_CODES = 1024
SAMPLE_RATE = 16000
# Streaming settings used by Step-Audio for the linguistic encoder.
CHUNK_SIZE = (0, 4, 5)
ENCODER_CHUNK_LOOK_BACK = 4
DECODER_CHUNK_LOOK_BACK = 1
CHUNK_STRIDE_SAMPLES = CHUNK_SIZE[1] * 960  # 240 ms = 4 LFR frames

_TINY_TOKENS = [
    "<blank>", "<s>", "</s>",
    "的", "是", "我", "你", "了", "唔", "係", "佢",
    "a", "the", "he@@", "llo", "s", "t", "@@", "ing",
    "<unk>",
]  # fmt: skip
FULL_VOCAB_SIZE = 8501


# --------------------------------------------------------------------------- helpers


def funasr_tables() -> Any:
    """FunASR's class registry with the ParaformerStreaming model and its parts registered.

    Importing funasr prints an ffmpeg notice on stdout; it is swallowed here.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        import funasr.models.paraformer_streaming.model  # noqa: F401  (registers the classes)
        from funasr.register import tables
    return tables


@contextlib.contextmanager
def _deterministic_cpu() -> Iterator[None]:
    """One thread (so float reductions do not depend on the core count) and a private RNG state."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


def probe_signal(seconds: float, seed: int, fs: int = SAMPLE_RATE) -> np.ndarray:
    """A deterministic speech-like test signal: a gliding harmonic tone with vibrato and syllable-rate
    amplitude modulation, a linear chirp, a little noise and a quiet lead-in, peak 0.6."""
    rng = np.random.default_rng([seed, 7])
    n = round(seconds * fs)
    t = np.arange(n) / fs
    f0 = 105.0 + 95.0 * t / seconds + 12.0 * np.sin(2 * np.pi * 5.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / fs
    offsets = rng.uniform(0, 2 * np.pi, size=8)
    voiced = sum(np.sin(k * phase + offsets[k - 1]) / k for k in range(1, 9))
    fa, fb = 300.0, 3600.0
    chirp = np.sin(2 * np.pi * (fa * t + (fb - fa) * t * t / (2 * seconds)))
    envelope = 0.55 - 0.45 * np.cos(2 * np.pi * 3.1 * t)
    x = envelope * (voiced + 0.35 * chirp) + 0.03 * rng.standard_normal(n)
    x[t < 0.2] = 0.003 * rng.standard_normal(int(np.sum(t < 0.2)))
    return (0.6 * x / np.max(np.abs(x))).astype(np.float32)


# --------------------------------------------------------------------------- FunASR model dir


def paraformer_config(full_size: bool) -> dict[str, Any]:
    """config.yaml contents: FunASR's ParaformerStreaming template with tiny or official dims."""
    if full_size:
        d, heads, ffn, enc_blocks, dec_blocks = 512, 4, 2048, 50, 16
    else:
        d, heads, ffn, enc_blocks, dec_blocks = 32, 2, 64, 2, 1
    return {
        "model": "ParaformerStreaming",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {
            "output_size": d,
            "attention_heads": heads,
            "linear_units": ffn,
            "num_blocks": enc_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe_online",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "chunk_size": [12, 15],
            "stride": [8, 10],
            "pad_left": [0, 0],
            "encoder_att_look_back_factor": [4, 4],
            "decoder_att_look_back_factor": [1, 1],
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": heads,
            "linear_units": ffn,
            "num_blocks": dec_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": dec_blocks,
            "kernel_size": 11,
            "sanm_shfit": 5,
        },
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": d,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
        },
        "frontend": "WavFrontendOnline",
        "frontend_conf": {
            "fs": SAMPLE_RATE,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
            "dither": 0.0,
        },
        "specaug": "SpecAugLFR",
        "specaug_conf": {
            "apply_time_warp": False,
            "time_warp_window": 5,
            "time_warp_mode": "bicubic",
            "apply_freq_mask": True,
            "freq_mask_width_range": [0, 30],
            "lfr_rate": 6,
            "num_freq_mask": 1,
            "apply_time_mask": True,
            "time_mask_width_range": [0, 12],
            "num_time_mask": 1,
        },
        "train_conf": {
            "accum_grad": 1,
            "grad_clip": 5,
            "max_epoch": 150,
            "keep_nbest_models": 10,
            "log_interval": 50,
        },
        "optim": "adam",
        "optim_conf": {"lr": 0.0005},
        "scheduler": "warmuplr",
        "scheduler_conf": {"warmup_steps": 30000},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
        "normalize": None,
    }


def token_list(full_size: bool) -> list[str]:
    if not full_size:
        return list(_TINY_TOKENS)
    middle = [f"tok{i:04d}" for i in range(FULL_VOCAB_SIZE - 4)]
    return ["<blank>", "<s>", "</s>", *middle, "<unk>"]


def configuration_json() -> dict[str, Any]:
    """ModelScope ``configuration.json``: FunASR's hub loader reads the file names from it."""
    return {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "", "hf": ""},
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            "tokenizer_conf": {"token_list": "tokens.json"},
            "frontend_conf": {"cmvn_file": "am.mvn"},
        },
    }


def cmvn_values(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin (shift, rescale) for 80 log-mel bins, tiled over the 7 LFR frames (560 values each).

    Shift is minus a plausible mean log-mel energy of speech scaled by 2^15 (about 13..15, falling
    towards high frequencies); rescale is one over a plausible standard deviation (about 3..4.5)."""
    rng = np.random.default_rng([seed, 3])
    j = np.arange(80) / 79.0
    mean = 14.0 + 0.8 * np.cos(np.pi * j) + 0.15 * rng.standard_normal(80)
    std = 3.1 + 1.0 * j + 0.3 * rng.uniform(size=80)
    shift = np.tile(-mean, 7).astype(np.float32)
    rescale = np.tile(1.0 / std, 7).astype(np.float32)
    return shift, rescale


def am_mvn_text(shift: np.ndarray, rescale: np.ndarray) -> str:
    """Kaldi nnet1 text with <Splice>, <AddShift> and <Rescale> components, as FunASR reads it."""
    n = shift.size

    def vec(v: np.ndarray) -> str:
        return " ".join(f"{x:.6f}" for x in v.tolist())

    return (
        "<Nnet>\n"
        f"<Splice> {n} {n}\n"
        "[ 0 ]\n"
        f"<AddShift> {n} {n}\n"
        f"<LearnRateCoef> 0 [ {vec(shift)} ]\n"
        f"<Rescale> {n} {n}\n"
        f"<LearnRateCoef> 0 [ {vec(rescale)} ]\n"
        "</Nnet>\n"
    )


def build_paraformer(config: dict[str, Any], vocab_size: int) -> torch.nn.Module:
    """FunASR's ParaformerStreaming built from a config.yaml dict (uses the global torch RNG)."""
    tables = funasr_tables()
    model_class = tables.model_classes[config["model"]]
    parts = ("encoder", "decoder", "predictor")
    kwargs: dict[str, Any] = {}
    for part in parts:
        kwargs[part] = config[part]
        kwargs[f"{part}_conf"] = config[f"{part}_conf"]
    model = model_class(
        **config.get("model_conf", {}),
        **kwargs,
        vocab_size=vocab_size,
        input_size=FEATS_DIM,
        frontend=None,
    )
    return model.eval()


@torch.no_grad()
def streaming_encoder_outputs(
    model: Any, frontend: Any, config: dict[str, Any], wav: np.ndarray
) -> np.ndarray:
    """(N, D) encoder outputs for ``wav`` with Step-Audio's streaming settings: 3840-sample strides,
    a persistent frontend cache, and only the new frames of each encoder window kept."""
    from funasr.utils.load_utils import extract_fbank

    cache = model.init_cache(
        {},
        chunk_size=list(CHUNK_SIZE),
        encoder_chunk_look_back=ENCODER_CHUNK_LOOK_BACK,
        decoder_chunk_look_back=DECODER_CHUNK_LOOK_BACK,
        encoder_conf=config["encoder_conf"],
        frontend_conf=config["frontend_conf"],
    )
    audio = torch.from_numpy(np.asarray(wav, dtype=np.float32))
    n_strides = len(audio) // CHUNK_STRIDE_SAMPLES + 1
    outputs = []
    for i in range(n_strides):
        segment = audio[i * CHUNK_STRIDE_SAMPLES : (i + 1) * CHUNK_STRIDE_SAMPLES].clone()
        is_final = i == n_strides - 1
        if len(segment) < 960:  # too short for an LFR frame; Step-Audio skips such a tail
            break
        feats, feats_len = extract_fbank(
            [segment], frontend=frontend, cache=cache["frontend"], is_final=is_final
        )
        if feats.ndim != 3 or feats.shape[1] == 0:
            continue
        n_new = feats.shape[1]
        # encode_chunk scales its input in place and returns the whole window (cached + new frames).
        enc, _ = model.encode_chunk(feats, feats_len, cache=cache, is_final=is_final)
        outputs.append(enc[0, -n_new:])
    return torch.cat(outputs).detach().numpy()


# --------------------------------------------------------------------------- writer


def write_tokenizer(dest: Path, opts: TinyOptions) -> Path:
    """Fill ``dest`` (an existing, empty directory) with a Step-Audio-Tokenizer checkpoint."""
    say = opts.progress
    dest = Path(dest)
    fdir = dest / PARAFORMER_SUBDIR
    fdir.mkdir(parents=True)

    t0 = time.perf_counter()
    config = paraformer_config(opts.full_size)
    tokens = token_list(opts.full_size)
    header = (
        f"# Random-weight test checkpoint (seed {opts.seed}); not a trained model.\n"
        "# Layout and structure of FunASR's ParaformerStreaming template"
        f"{'' if opts.full_size else ' with shrunk dims'}; dither 0.0 for deterministic features.\n"
    )
    (fdir / "config.yaml").write_text(
        header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    (fdir / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    (fdir / "configuration.json").write_text(
        json.dumps(configuration_json(), indent=2) + "\n", encoding="utf-8"
    )
    shift, rescale = cmvn_values(opts.seed)
    (fdir / "am.mvn").write_text(am_mvn_text(shift, rescale), encoding="utf-8")

    with _deterministic_cpu():
        torch.manual_seed(opts.seed)
        model = build_paraformer(config, len(tokens))
        state = model.state_dict()
        n_params = sum(v.numel() for v in state.values())
        torch.save(state, fdir / "model.pt")
        # Round trip: the written config describes this model and the file loads back strictly.
        if yaml.safe_load((fdir / "config.yaml").read_text(encoding="utf-8")) != config:
            raise RuntimeError("config.yaml does not read back as written")
        model.load_state_dict(
            torch.load(fdir / "model.pt", map_location="cpu", weights_only=True), strict=True
        )
        say(f"  model.pt: {n_params:,} params, {len(state)} tensors")
        del state

        # Linguistic k-means table: centroids scattered around the encoder's output distribution.
        with contextlib.redirect_stdout(io.StringIO()):
            from funasr.frontends.wav_frontend import WavFrontendOnline
        frontend = WavFrontendOnline(cmvn_file=str(fdir / "am.mvn"), **config["frontend_conf"])
        enc = streaming_encoder_outputs(model, frontend, config, probe_signal(4.0, opts.seed)).astype(
            np.float64
        )
        del model
        mean, std = enc.mean(axis=0), enc.std(axis=0)
        rng = np.random.default_rng([opts.seed, 11])
        centroids = mean + std * rng.standard_normal((N_LINGUISTIC_CODES, enc.shape[1]))
        np.save(dest / CODEBOOK_FILE, centroids.astype(np.float32))
        say(f"  {CODEBOOK_FILE}: {centroids.shape} from {enc.shape[0]} encoder frames")

        # Semantic tokenizer (ONNX).
        dims = FULL_DIMS if opts.full_size else TINY_DIMS
        calib = whisper_like_log_mel(probe_signal(4.0, opts.seed + 1))
        tok = build_speech_tokenizer(opts.seed, dims, calib)
        export_onnx(tok, dest / SPEECH_TOKENIZER_FILE)
        say(
            f"  {SPEECH_TOKENIZER_FILE}: d={dims.d_model}, {dims.n_layers} blocks, {dims.codebook_size} codes"
        )

    say(f"  tokenizer written in {time.perf_counter() - t0:.1f} s")
    return dest
