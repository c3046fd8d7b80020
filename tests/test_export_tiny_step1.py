"""Tiny Step-1 checkpoints (Step-Audio-Chat/, Step-Audio-TTS-3B/): layout, keys, determinism, config parsing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors")
spm = pytest.importorskip("sentencepiece")

from export.tiny import COMPONENTS, TinyOptions, step1, write_tiny  # noqa: E402
from stepaudio.llm.config import PRESETS, Step1Config  # noqa: E402
from stepaudio.tokenizer.files import CheckpointError  # noqa: E402

CHAT, TTS = "Step-Audio-Chat", "Step-Audio-TTS-3B"
COMMON_FILES = {"config.json", "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json"}


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for label, seed, components in (("a", 0, [CHAT, TTS]), ("b", 0, [CHAT, TTS]), ("seed1", 1, [TTS])):
        root = tmp_path_factory.mktemp(f"step1-{label}")
        paths = write_tiny(root, components=components, seed=seed, progress=lambda _m: None)
        assert paths == [root / c for c in components]
        out[label] = root
    return out


def _load_all(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(set(index["weight_map"].values())):
        part = load_file(str(folder / file))
        assert {k for k, f in index["weight_map"].items() if f == file} == set(part)
        tensors.update(part)
    return tensors


def test_registry() -> None:
    assert {"Step-Audio-Tokenizer", CHAT, TTS} <= set(COMPONENTS)


@pytest.mark.parametrize("component,n_shards", [(CHAT, 3), (TTS, 1)])
def test_layout_and_keys(written: dict[str, Path], component: str, n_shards: int) -> None:
    folder = written["a"] / component
    shards = {f"model-{i:05d}.safetensors" for i in range(1, n_shards + 1)}
    # the TTS folder also holds the CosyVoice decoder subfolders (tests/test_export_tiny_cosyvoice.py)
    assert {p.name for p in folder.iterdir() if p.is_file()} == COMMON_FILES | shards
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left

    cfg = Step1Config.from_file(folder / "config.json")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["architectures"] == ["Step1ForCausalLM"] and raw["model_type"] == "step1"
    assert raw["torch_dtype"] == "bfloat16" and "auto_map" in raw
    assert (cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (74752, 1, 3, 0)
    assert cfg == PRESETS["tiny-chat" if component == CHAT else "tiny-tts"]

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    tensors = _load_all(folder)
    shapes = cfg.weight_shapes()
    assert {k: tuple(v.shape) for k, v in tensors.items()} == shapes
    assert all(v.dtype == torch.bfloat16 for v in tensors.values())
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in tensors.values())
    # Untied head; norms near 1, matrices near N(0, 0.02).
    assert not torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])
    norm = tensors["model.norm.weight"].float()
    assert abs(norm.mean().item() - 1.0) < 0.02 and norm.std().item() < 0.05
    emb = tensors["model.embed_tokens.weight"].float()
    assert abs(emb.std().item() - 0.02) < 0.001 and abs(emb.mean().item()) < 0.001
    if component == CHAT:  # embedding in the first shard, head in the last
        assert index["weight_map"]["model.embed_tokens.weight"] == "model-00001.safetensors"
        assert index["weight_map"]["lm_head.weight"] == "model-00003.safetensors"
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total < 24 * 2**20


def test_deterministic(written: dict[str, Path]) -> None:
    for component in (CHAT, TTS):
        assert _digests(written["a"] / component) == _digests(written["b"] / component)
    a, other = _digests(written["a"] / TTS), _digests(written["seed1"] / TTS)
    for name in a:  # the seed changes the weights only
        assert (a[name] == other[name]) == (not name.startswith("model-")), name


def test_weights_independent_of_sharding(written: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "two"
    dest.mkdir()
    step1.write_step1(dest, TinyOptions(seed=0), "chat", n_shards=2)
    assert sorted(p.name for p in dest.glob("*.safetensors")) == ["model-00001.safetensors", "model-00002.safetensors"]
    a, b = _load_all(written["a"] / CHAT), _load_all(dest)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_files(written: dict[str, Path]) -> None:
    chat, tts = written["a"] / CHAT, written["a"] / TTS
    assert (chat / "tokenizer.model").read_bytes() == (tts / "tokenizer.model").read_bytes()
    cc = json.loads((chat / "tokenizer_config.json").read_text())
    tc = json.loads((tts / "tokenizer_config.json").read_text())
    assert cc["add_bos_token"] is True and cc["legacy"] is False and cc["padding_side"] == "left"
    assert (cc["bos_token"], cc["eos_token"], cc["unk_token"], cc["pad_token"]) == ("<s>", "</s>", "<unk>", "<unk>")
    assert cc["tokenizer_class"] == "LlamaTokenizer" and cc["model_max_length"] == 65536
    assert cc["chat_template"] == step1.CHAT_TEMPLATE
    assert "chat_template" not in tc and "add_bos_token" not in tc and tc["legacy"] is False

    sp = spm.SentencePieceProcessor(model_file=str(chat / "tokenizer.model"))
    assert sp.vocab_size() == 74752
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    expected = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "<|EOT|>", 4: "<|BOT|>", 5: "<0x00>", 260: "<0xFF>"}
    expected.update({65536 + n: f"<audio_{n}>" for n in (0, 1, 12, 1023, 1024, 5119)})
    for i, piece in expected.items():
        assert sp.id_to_piece(i) == piece
    assert sp.is_control(1) and sp.is_control(2) and sp.is_unknown(0) and sp.is_byte(5)
    assert sp.id_to_piece(65535).startswith("<unused_") and sp.id_to_piece(74751).startswith("<unused_")
    # User-defined pieces encode from text to one id each (SentencePiece adds its dummy-prefix "▁").
    for text, ids in (("<audio_12>", [65548]), ("<|BOT|>", [4]), ("<|EOT|>", [3]), ("<audio_5119><audio_0>", [70655, 65536])):
        got = sp.encode(text)
        assert got[-len(ids) :] == ids and all(sp.id_to_piece(i) == "▁" for i in got[: -len(ids)])
    # Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes.
    assert sp.encode("😀")[-4:] == [5 + b for b in "😀".encode()]
    assert sp.decode(sp.encode("Hello world, 你好！")) == "Hello world, 你好！"


def test_proto_matches_official_schema(written: dict[str, Path]) -> None:
    pb2 = pytest.importorskip("transformers.utils.sentencepiece_model_pb2_new")
    m = pb2.ModelProto()
    m.ParseFromString((written["a"] / CHAT / "tokenizer.model").read_bytes())
    assert len(m.pieces) == 74752
    assert m.trainer_spec.model_type == 2 and m.trainer_spec.byte_fallback and m.trainer_spec.vocab_size == 74752
    assert m.normalizer_spec.name == "identity" and m.normalizer_spec.add_dummy_prefix
    types = [p.type for p in m.pieces]
    assert types[:5] == [2, 3, 3, 4, 4] and set(types[5:261]) == {6}
    assert set(types[65536 : 65536 + 5120]) == {4}
    assert m.SerializeToString(deterministic=True) == (written["a"] / CHAT / "tokenizer.model").read_bytes()


def test_bench_preset_option() -> None:
    cfg = PRESETS["step1-100m"]
    assert cfg.num_parameters == 110_375_424
    # full_size selects the benchmark preset (checked without writing 210 MiB).
    calls = []

    def fake_weights(dest, cfg, seed, n_shards, dtype="bfloat16"):
        calls.append(cfg)
        return {"metadata": {"total_size": 0}, "weight_map": {"lm_head.weight": "model-00001.safetensors"}}

    import tempfile

    mp = pytest.MonkeyPatch()
    mp.setattr(step1, "write_weights", fake_weights)
    try:
        with tempfile.TemporaryDirectory() as d:
            step1.write_step1(Path(d), TinyOptions(full_size=True), "tts")
            assert json.loads((Path(d) / "config.json").read_text())["hidden_size"] == 512
    finally:
        mp.undo()
    assert calls == [cfg]


def test_cli_writes_other_presets(tmp_path: Path) -> None:
    assert step1.main([str(tmp_path), "--kind", "tts", "--preset", "tiny-chat", "--dtype", "float32"]) == 0
    folder = tmp_path / TTS
    cfg = Step1Config.from_file(folder)
    assert cfg.num_attention_heads == 6 and cfg.torch_dtype == "float32"
    assert _load_all(folder)["model.norm.weight"].dtype == torch.float32
    with pytest.raises(SystemExit):
        step1.main([str(tmp_path), "--preset", "chat-130b"])


# ------------------------------------------------------------------------------ Step1Config


def test_config_presets_and_derived() -> None:
    chat, tts = PRESETS["chat-130b"], PRESETS["tts-3b"]
    assert (chat.head_dim, chat.kv_dim, chat.heads_per_group) == (128, 1024, 12)
    assert (tts.head_dim, tts.kv_dim) == (64, 256)
    assert round(chat.num_parameters / 1e9, 1) == 131.9 and round(tts.num_parameters / 1e9, 2) == 3.53
    assert chat.kv_cache_bytes_per_token() == 352 * 1024 and tts.kv_cache_bytes_per_token() == 32 * 1024
    assert PRESETS["tiny-chat"].num_attention_heads == 6


def test_config_round_trip(tmp_path: Path) -> None:
    raw = json.loads(PRESETS["tts-3b"].to_json())
    raw["auto_map"] = {"AutoConfig": "configuration_step1.Step1Config"}
    raw["transformers_version"] = "4.48.3"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    cfg = Step1Config.from_file(path)
    assert cfg == PRESETS["tts-3b"] and cfg.extra["transformers_version"] == "4.48.3"
    assert json.loads(cfg.to_json()) == raw
    # "dtype" (newer transformers) stands in for torch_dtype.
    raw2 = {k: v for k, v in raw.items() if k != "torch_dtype"} | {"dtype": "float32"}
    assert Step1Config.from_dict(raw2).torch_dtype == "float32"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"hidden_size": None}, "'hidden_size' is missing"),
        ({"num_attention_groups": "8"}, "'num_attention_groups' must be int"),
        ({"vocab_size": 74752.0}, "'vocab_size' must be int"),
        ({"num_hidden_layers": True}, "'num_hidden_layers' must be int"),
        ({"rms_norm_eps": "1e-5"}, "'rms_norm_eps' must be float or int"),
        ({"architectures": "Step1ForCausalLM"}, "'architectures' must be list"),
        ({"model_type": "llama"}, "'model_type' is 'llama'"),
        ({"num_attention_heads": 7}, "not divisible by num_attention_heads 7"),
        ({"num_attention_groups": 5}, "not divisible by num_attention_groups 5"),
        ({"torch_dtype": "int8"}, "torch_dtype must be one of"),
        ({"eos_token_id": 80000}, "outside the vocabulary"),
    ],
)
def test_config_errors(tmp_path: Path, change: dict, message: str) -> None:
    raw = json.loads(PRESETS["tts-3b"].to_json())
    for k, v in change.items():
        if v is None:
            del raw[k]
        else:
            raw[k] = v
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as err:
        Step1Config.from_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Step1Config.from_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Step1Config.from_file(tmp_path)
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        Step1Config.from_file(tmp_path)
