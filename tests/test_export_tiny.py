"""Tiny random-weight checkpoints: layout, determinism and loadability of Step-Audio-Tokenizer/."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
yaml = pytest.importorskip("yaml")
pytest.importorskip("funasr")

from export.tiny import COMPONENTS, TinyOptions, write_tiny  # noqa: E402
from export.tiny import tokenizer as tk  # noqa: E402

TOK = "Step-Audio-Tokenizer"
EXPECTED_FILES = {
    *(f"{tk.PARAFORMER_SUBDIR}/{name}" for name in tk.PARAFORMER_FILES),
    tk.CODEBOOK_FILE,
    tk.SPEECH_TOKENIZER_FILE,
}


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for label, seed in (("a", 0), ("b", 0), ("seed1", 1)):
        root = tmp_path_factory.mktemp(f"tiny-{label}")
        (path,) = write_tiny(root, components=[TOK], seed=seed, progress=lambda _m: None)
        assert path == root / TOK
        out[label] = path
    return out


@pytest.fixture(scope="module")
def tok_dir(written: dict[str, Path]) -> Path:
    return written["a"]


@pytest.fixture(scope="module")
def session(tok_dir: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(tok_dir / tk.SPEECH_TOKENIZER_FILE), opts, providers=["CPUExecutionProvider"]
    )


def test_registry_names() -> None:
    assert TOK in COMPONENTS
    with pytest.raises(KeyError):
        write_tiny(Path("/nonexistent-never-created"), components=["no-such-model"])


def test_layout(tok_dir: Path) -> None:
    files = {p.relative_to(tok_dir).as_posix() for p in tok_dir.rglob("*") if p.is_file()}
    assert files == EXPECTED_FILES
    # No temporary directories left next to the component.
    assert [p.name for p in tok_dir.parent.iterdir()] == [TOK]
    total = sum((tok_dir / f).stat().st_size for f in files)
    assert total < 5 * 2**20


def test_deterministic(written: dict[str, Path]) -> None:
    a, b, other = (_digests(written[k]) for k in ("a", "b", "seed1"))
    assert set(a) == EXPECTED_FILES
    assert a == b
    sub = tk.PARAFORMER_SUBDIR
    for name in (f"{sub}/model.pt", f"{sub}/am.mvn", tk.CODEBOOK_FILE, tk.SPEECH_TOKENIZER_FILE):
        assert a[name] != other[name], name


def test_config_and_tokens(tok_dir: Path) -> None:
    fdir = tok_dir / tk.PARAFORMER_SUBDIR
    cfg = yaml.safe_load((fdir / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["model"] == "ParaformerStreaming"
    assert cfg["encoder"] == "SANMEncoderChunkOpt"

    def pick(conf: dict, *keys: str) -> dict:
        return {k: conf[k] for k in keys}

    assert pick(cfg["encoder_conf"], "output_size", "attention_heads", "linear_units", "num_blocks") == {
        "output_size": 32,
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 2,
    }
    assert pick(cfg["encoder_conf"], "input_layer", "sanm_shfit", "kernel_size", "normalize_before") == {
        "input_layer": "pe_online",
        "sanm_shfit": 0,
        "kernel_size": 11,
        "normalize_before": True,
    }
    assert cfg["decoder"] == "ParaformerSANMDecoder" and cfg["decoder_conf"]["num_blocks"] == 1
    assert cfg["predictor"] == "CifPredictorV2" and cfg["predictor_conf"]["idim"] == 32
    assert cfg["frontend"] == "WavFrontendOnline"
    assert pick(cfg["frontend_conf"], "fs", "window", "n_mels", "lfr_m", "lfr_n", "dither") == {
        "fs": 16000,
        "window": "hamming",
        "n_mels": 80,
        "lfr_m": 7,
        "lfr_n": 6,
        "dither": 0.0,
    }
    assert cfg["normalize"] is None and cfg["tokenizer"] == "CharTokenizer"

    tokens = json.loads((fdir / "tokens.json").read_text(encoding="utf-8"))
    assert tokens[:3] == ["<blank>", "<s>", "</s>"] and tokens[-1] == "<unk>"
    assert len(tokens) == len(set(tokens)) == 20

    meta = json.loads((fdir / "configuration.json").read_text(encoding="utf-8"))["file_path_metas"]
    assert meta["init_param"] == "model.pt" and meta["config"] == "config.yaml"
    assert meta["tokenizer_conf"]["token_list"] == "tokens.json"
    assert meta["frontend_conf"]["cmvn_file"] == "am.mvn"


def test_model_pt_loads_strict(tok_dir: Path) -> None:
    fdir = tok_dir / tk.PARAFORMER_SUBDIR
    cfg = yaml.safe_load((fdir / "config.yaml").read_text(encoding="utf-8"))
    tokens = json.loads((fdir / "tokens.json").read_text(encoding="utf-8"))
    tables = tk.funasr_tables()
    model = tables.model_classes[cfg["model"]](
        **cfg["model_conf"],
        encoder=cfg["encoder"],
        encoder_conf=cfg["encoder_conf"],
        decoder=cfg["decoder"],
        decoder_conf=cfg["decoder_conf"],
        predictor=cfg["predictor"],
        predictor_conf=cfg["predictor_conf"],
        vocab_size=len(tokens),
        input_size=560,
        frontend=None,
    )
    state = torch.load(fdir / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(v.dtype == torch.float32 for v in state.values())
    model.load_state_dict(state, strict=True)
    assert sum(v.numel() for v in state.values()) < 200_000


def test_automodel_loads_dir(tok_dir: Path) -> None:
    """FunASR's own directory loader (configuration.json -> config/model/tokens/cmvn) accepts it."""
    from funasr import AutoModel

    fdir = tok_dir / tk.PARAFORMER_SUBDIR
    am = AutoModel(model=str(fdir), device="cpu", disable_update=True, disable_log=True)
    assert type(am.model).__name__ == "ParaformerStreaming"
    ref = torch.load(fdir / "model.pt", map_location="cpu", weights_only=True)
    got = am.model.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert am.kwargs["frontend"].cmvn is not None


def test_am_mvn(tok_dir: Path) -> None:
    from funasr.frontends.wav_frontend import WavFrontendOnline

    path = tok_dir / tk.PARAFORMER_SUBDIR / "am.mvn"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "<Nnet>" and lines[-1] == "</Nnet>"
    assert lines[1:4:2] + lines[5:6] == ["<Splice> 560 560", "<AddShift> 560 560", "<Rescale> 560 560"]
    for line in (lines[4], lines[6]):
        items = line.split()
        assert items[:3] == ["<LearnRateCoef>", "0", "["] and items[-1] == "]" and len(items) == 564

    fe = WavFrontendOnline(cmvn_file=str(path), fs=16000, n_mels=80, lfr_m=7, lfr_n=6, dither=0.0)
    cmvn = fe.cmvn.numpy()
    assert cmvn.shape == (2, 560)
    shift, rescale = cmvn
    assert -15.5 < shift.min() and shift.max() < -12.5
    assert 0.2 < rescale.min() and rescale.max() < 0.35
    assert np.array_equal(shift, np.tile(shift[:80], 7)) and np.array_equal(rescale, np.tile(rescale[:80], 7))


def test_linguistic_codebook_varies(tok_dir: Path) -> None:
    codebook = np.load(tok_dir / tk.CODEBOOK_FILE)
    assert codebook.shape == (1024, 32) and codebook.dtype == np.float32

    from funasr.frontends.wav_frontend import WavFrontendOnline

    fdir = tok_dir / tk.PARAFORMER_SUBDIR
    cfg = yaml.safe_load((fdir / "config.yaml").read_text(encoding="utf-8"))
    model = tk.build_paraformer(cfg, 20)
    model.load_state_dict(torch.load(fdir / "model.pt", map_location="cpu", weights_only=True))
    fe = WavFrontendOnline(cmvn_file=str(fdir / "am.mvn"), **cfg["frontend_conf"])
    enc = tk.streaming_encoder_outputs(model, fe, cfg, tk.probe_signal(2.0, seed=42))
    assert enc.shape == (round(2.0 / 0.06), 32)  # one 560-d LFR frame per 60 ms
    codes = torch.cdist(torch.from_numpy(enc), torch.from_numpy(codebook)).argmin(dim=1)
    assert len(codes.unique()) > enc.shape[0] // 2


def test_speech_tokenizer_interface(tok_dir: Path, session: ort.InferenceSession) -> None:
    model = onnx.load(str(tok_dir / tk.SPEECH_TOKENIZER_FILE))
    onnx.checker.check_model(model)

    def sig(values: list) -> list:
        return [
            (
                v.name,
                v.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    assert sig(model.graph.input) == [
        ("feats", onnx.TensorProto.FLOAT, ["batch", 128, "frames"]),
        ("feats_length", onnx.TensorProto.INT32, ["batch"]),
    ]
    assert sig(model.graph.output) == [("indices", onnx.TensorProto.INT64, ["batch", "tokens"])]
    assert [i.name for i in session.get_inputs()] == ["feats", "feats_length"]
    assert [o.name for o in session.get_outputs()] == ["indices"]


@pytest.mark.parametrize("frames", [1, 120, 121, 3000])
def test_speech_tokenizer_lengths_and_spread(session: ort.InferenceSession, frames: int) -> None:
    rng = np.random.default_rng(frames)
    feats = (0.4 * rng.standard_normal((1, 128, frames)) + np.linspace(0.8, -0.6, 128)[None, :, None]).astype(
        np.float32
    )
    (ids,) = session.run(None, {"feats": feats, "feats_length": np.array([frames], np.int32)})
    assert ids.dtype == np.int64 and ids.shape == (1, math.ceil(frames / 4))
    assert ids.min() >= 0 and ids.max() < 4096
    if frames >= 120:
        assert len(np.unique(ids)) > ids.size // 4


def test_speech_tokenizer_matches_torch_and_masks_padding(session: ort.InferenceSession) -> None:
    from export.tiny.speech_tokenizer import TINY_DIMS, build_speech_tokenizer, whisper_like_log_mel

    # Rebuild the module exactly as the writer did (seed 0) and compare with the exported graph.
    module = build_speech_tokenizer(0, TINY_DIMS, whisper_like_log_mel(tk.probe_signal(4.0, 1)))
    a = whisper_like_log_mel(tk.probe_signal(3.0, seed=5))
    b = whisper_like_log_mel(tk.probe_signal(2.0, seed=6))
    batch = np.full((2, 128, a.shape[1]), 3.0, dtype=np.float32)  # junk in the padding
    batch[0], batch[1, :, : b.shape[1]] = a, b
    lengths = np.array([a.shape[1], b.shape[1]], np.int32)

    (ids,) = session.run(None, {"feats": batch, "feats_length": lengths})
    with torch.no_grad():
        ref = module(torch.from_numpy(batch), torch.from_numpy(lengths)).numpy()
    np.testing.assert_array_equal(ids, ref)
    assert ids.shape == (2, math.ceil(a.shape[1] / 4))
    assert len(np.unique(ids[0])) > 30  # codes vary on speech-like input

    (single,) = session.run(None, {"feats": b[None], "feats_length": lengths[1:]})
    np.testing.assert_array_equal(ids[1, : single.shape[1]], single[0])


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def good(dest: Path, opts: TinyOptions) -> Path:
        (dest / "weights.bin").write_bytes(bytes([opts.seed]))
        return dest

    def bad(dest: Path, opts: TinyOptions) -> Path:
        (dest / "weights.bin").write_bytes(b"half")
        raise RuntimeError("boom")

    monkeypatch.setitem(COMPONENTS, "Fake", good)
    (first,) = write_tiny(tmp_path, ["Fake"], seed=1, progress=lambda _m: None)
    (again,) = write_tiny(tmp_path, ["Fake"], seed=2, progress=lambda _m: None)
    assert first == again == tmp_path / "Fake"
    assert (again / "weights.bin").read_bytes() == b"\x02"
    assert oct(again.stat().st_mode & 0o777) == oct(0o755)

    monkeypatch.setitem(COMPONENTS, "Fake", bad)
    with pytest.raises(RuntimeError, match="boom"):
        write_tiny(tmp_path, ["Fake"], progress=lambda _m: None)
    assert [p.name for p in tmp_path.iterdir()] == ["Fake"]  # old copy kept, no partial dir
    assert (tmp_path / "Fake" / "weights.bin").read_bytes() == b"\x02"
