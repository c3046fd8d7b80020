"""TextTokenizer and IncrementalDetokenizer against the Hugging Face Llama tokenizer on the same files.

The reference loads the tokenizer with ``AutoTokenizer`` (transformers 4.48), which gives the fast
``LlamaTokenizerFast`` converted from ``tokenizer.model``; ``LlamaTokenizerFast`` names that class in
transformers 4 and 5 alike.  Two environment notes:

* sentencepiece's bundled ``sentencepiece_model_pb2`` may be generated for a newer protobuf runtime
  than the one installed (protobuf is pinned below 7 by tritonclient); the HF converter imports it
  unguarded, so the identical schema module shipped with transformers stands in while loading.
* transformers 5 defaults ``add_bos_token`` to false when tokenizer_config.json has no such key
  (Step-Audio-TTS-3B); transformers 4 -- the reference's -- defaults it to true.  The TTS folder is
  loaded with ``add_bos_token=True`` to compare with the reference's behaviour.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import random
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

spm = pytest.importorskip("sentencepiece")
pytest.importorskip("torch")
pytest.importorskip("safetensors")

from export.tiny import write_tiny  # noqa: E402
from stepaudio.llm import text_tokenizer as tt  # noqa: E402
from stepaudio.llm.detokenize import IncrementalDetokenizer  # noqa: E402
from stepaudio.llm.text_tokenizer import TextTokenizer  # noqa: E402
from stepaudio.tokenizer.files import CheckpointError  # noqa: E402

CHAT, TTS = "Step-Audio-Chat", "Step-Audio-TTS-3B"


@functools.cache
def step1_folders() -> dict[str, Path]:
    """Tiny Chat and TTS folders, written once per test process (shared with test_llm_prompts)."""
    root = Path(tempfile.mkdtemp(prefix="step1-tok-"))
    atexit.register(shutil.rmtree, root, True)
    write_tiny(root, components=[CHAT, TTS], progress=lambda _m: None)
    return {CHAT: root / CHAT, TTS: root / TTS}


@functools.cache
def hf_tokenizer(component: str):
    """The HF tokenizer of a tiny folder, loaded as the reference loads it (TTS: add_bos_token true)."""
    extra = {"add_bos_token": True} if component == TTS else {}
    return load_hf_tokenizer(step1_folders()[component], **extra)


def load_hf_tokenizer(folder: Path, **kwargs):
    """transformers' fast Llama tokenizer converted from ``tokenizer.model`` (see the module docstring)."""
    transformers = pytest.importorskip("transformers")
    with pytest.MonkeyPatch.context() as mp:
        try:
            importlib.import_module("sentencepiece.sentencepiece_model_pb2")
        except Exception:
            pb2 = importlib.import_module("transformers.utils.sentencepiece_model_pb2_new")
            mp.setitem(sys.modules, "sentencepiece.sentencepiece_model_pb2", pb2)
        return transformers.LlamaTokenizerFast.from_pretrained(str(folder), **kwargs)


@pytest.fixture(scope="module")
def folders() -> dict[str, Path]:
    return step1_folders()


@pytest.fixture(scope="module")
def ours(folders: dict[str, Path]) -> TextTokenizer:
    return TextTokenizer(folders[CHAT])


@pytest.fixture(scope="module")
def hf():
    return hf_tokenizer(CHAT)


FIXED_TEXTS = [
    "",
    " ",
    "  ",
    "Hello world",
    "Hello, how are you today?",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "double  space",
    "你好，世界",
    "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？",
    "mixed 中文 and English，还有标点!",
    "龘 is a rare character, 𠀀 is outside the BMP, 😀 is an emoji, é ü ñ are Latin",
    "\n",
    "line one\nline two\n\n\nafter blank lines",
    "\ttab\tseparated",
    "human\n",
    "assistant\n",
    "system\nYou are a helpful assistant.",
    "▁already▁escaped",
    "<|BOT|>human\nhi<|EOT|>",
    "a <|BOT|> b <|EOT|> c",
    "<|BOT|> starts with a marker",
    " <|EOT|>",
    "<audio_0><audio_12><audio_1023><audio_1024><audio_5119>",
    "text<audio_7>text <audio_8> text",
    "<audio_5120> is not a piece, nor <audio_12 > or <audio_-1>",
    "<s>x</s> <unk> literal special strings",
    "<|BOT|<|EOT|>>",
    "(高兴1)(粤语)今天天气真好！",
    "（RAP）我踏上自由的征途",
    "1234567890 3.14159 100%",
]

_POOL = [
    *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    *".,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`",
    " ", " ", " ", "  ", "\n", "\t", "▁",
    *"你好我是的了在有人这中大来上国个到说们为子和你地出道也时年得就那要下以生会",
    *"龘鬱齉𠀀😀🎵éüñßø€™",
    *"，。！？、；：“”（）《》…",
    "Hello", "world", "the", "assistant", "human", "system", "你好", "语音", "情感", "today",
    "<|BOT|>", "<|EOT|>", "<s>", "</s>", "<unk>", "<audio_0>", "<audio_42>", "<audio_5119>", "<audio_", "|>",
]  # fmt: skip


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_POOL) for _ in range(rng.randint(0, 40))) for _ in range(n)]


# ------------------------------------------------------------------------------------ encode


def test_special_ids(ours: TextTokenizer) -> None:
    assert (tt.UNK_ID, tt.BOS_ID, tt.EOS_ID, tt.EOT_ID, tt.BOT_ID, tt.AUDIO_TOKEN_OFFSET) == (0, 1, 2, 3, 4, 65536)
    assert (ours.unk_id, ours.bos_id, ours.eos_id, ours.pad_id) == (0, 1, 2, 0)
    assert ours.vocab_size == 74752
    assert [ours.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<|EOT|>", "<|BOT|>"]
    assert ours.encode("<audio_12>", add_bos=False) == [65548]
    assert ours.encode("<|BOT|><|EOT|>", add_bos=False) == [4, 3]
    assert ours.audio_string([65536, 65536 + 5119]) == "<audio_0><audio_5119>"
    with pytest.raises(ValueError):
        ours.audio_string([65535])
    assert ours.add_bos_token and ours.encode("x")[0] == 1 and ours.encode("x", add_bos=False)[0] != 1


@pytest.mark.parametrize("text", FIXED_TEXTS)
def test_encode_matches_hf(ours: TextTokenizer, hf, text: str) -> None:
    assert ours.encode(text) == hf.encode(text)
    assert ours.encode(text, add_bos=False) == hf.encode(text, add_special_tokens=False)


def test_encode_random_texts_match_hf(ours: TextTokenizer, hf) -> None:
    for text in random_texts(400, seed=1):
        assert ours.encode(text) == hf.encode(text), repr(text)


def test_tts_folder(folders: dict[str, Path]) -> None:
    ours = TextTokenizer(folders[TTS])
    assert ours.add_bos_token and ours.chat_template is None  # no add_bos_token key: Llama default true
    hf = hf_tokenizer(TTS)
    for text in [*FIXED_TEXTS, *random_texts(100, seed=2)]:
        assert ours.encode(text) == hf.encode(text), repr(text)


def test_encode_splits_on_specials_leftmost_longest(ours: TextTokenizer) -> None:
    # A literal marker inside text is the marker's id, text around it has no prefix space.
    ids = ours.encode("<|BOT|>human\n", add_bos=False)
    assert ids[0] == 4 and ours.id_to_piece(ids[1]) == "human"
    assert ours.encode("<audio_1234>", add_bos=False) == [65536 + 1234]  # not <audio_123> + "4>"


def test_legacy_config_prepends_every_span(folders: dict[str, Path], tmp_path: Path) -> None:
    import json

    shutil.copy(folders[TTS] / "tokenizer.model", tmp_path / "tokenizer.model")
    cfg = json.loads((folders[TTS] / "tokenizer_config.json").read_text())
    del cfg["legacy"]  # transformers 4 treats an absent key as legacy=True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    legacy = TextTokenizer(tmp_path)
    modern = TextTokenizer(folders[TTS])
    assert legacy.legacy and not modern.legacy
    a, b = legacy.encode("<|BOT|>human\n"), modern.encode("<|BOT|>human\n")
    assert a[:2] == b[:2] == [1, 4] and a[2:] == modern.encode("human\n", add_bos=False) != b[2:]


def test_errors(tmp_path: Path, ours: TextTokenizer) -> None:
    with pytest.raises(CheckpointError, match=r"tokenizer\.model not found"):
        TextTokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\xff\xff\xff")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        TextTokenizer(tmp_path)
    with pytest.raises(TypeError):
        ours.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([74752])


# -------------------------------------------------------------------------------------- chat

CONVERSATIONS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "How are you?"}],
    [{"role": "system", "content": "适配用户的语言，用简短口语化的文字回答"}, {"role": "user", "content": "讲个故事"}],
    [{"role": "system", "content": "You are an AI designed for conversation."}, {"role": "user", "content": " spaced "}],
    [{"role": "user", "content": "<audio_1><audio_1030><audio_5119>"}, {"role": "assistant", "content": "(高兴1)好的！"}],
    [{"role": "assistant", "content": "starts with the assistant"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_hf(ours: TextTokenizer, hf, messages: list, add_generation_prompt: bool) -> None:
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.render_chat(messages, add_generation_prompt, default_system_prompt=True) == rendered
    ids = ours.encode_chat(messages, add_generation_prompt, default_system_prompt=True)
    assert ids == hf.encode(rendered)
    assert ids.count(1) == 1 and ids[0] == 1


def test_chat_template_string(ours: TextTokenizer) -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    assert ours.render_chat(msgs, default_system_prompt=True) == (
        "<|BOT|>system\nYou are a helpful assistant.<|EOT|><|BOT|>human\nHi<|EOT|><|BOT|>assistant\n"
    )
    ids = ours.encode_chat(msgs, default_system_prompt=True)
    assert ids[:2] == [1, 4] and ids[-3:-1] == [4, ours.piece_to_id("assistant")] and ids[-1] == 5 + 0x0A


def test_reference_pipeline_mode(ours: TextTokenizer) -> None:
    audio = [65536 + 5, 65536 + 1024 + 7]
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": {"type": "audio", "tokens": audio}},
        {"role": "assistant", "content": {"type": "text", "text": "ok"}},
        {"role": "user", "content": "next"},
    ]
    text = ours.render_chat(msgs)
    assert text == (
        "<|BOT|>system\nsys<|EOT|><|BOT|>human\n<audio_5><audio_1031><|EOT|>"
        "<|BOT|>assistant\nok<|EOT|><|BOT|>human\nnext<|EOT|><|BOT|>assistant\n"
    )
    ids = ours.encode_chat(msgs)
    assert ids[0] == 1 and ids.count(1) == 1 and ids[ids.index(65541) :][:3] == [65541, 65536 + 1031, 3]
    # No default system turn; content None opens a turn (prefill) and no second generation prompt.
    assert ours.render_chat([{"role": "user", "content": "q"}]) == "<|BOT|>human\nq<|EOT|><|BOT|>assistant\n"
    prefill = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]
    assert ours.render_chat(prefill) == "<|BOT|>human\nq<|EOT|><|BOT|>assistant\n"
    assert ours.render_chat([{"role": "user", "content": None}]) == "<|BOT|>human\n<|BOT|>assistant\n"
    assert ours.render_chat([{"role": "user", "content": "q"}], add_generation_prompt=False) == "<|BOT|>human\nq<|EOT|>"
    # The HF-template mode always appends the generation prompt.
    assert ours.render_chat(prefill, default_system_prompt=True).endswith("<|BOT|>assistant\n<|BOT|>assistant\n")


@pytest.mark.parametrize(
    "content,match",
    [
        ({"type": "audio", "audio": "/tmp/x.wav"}, "tokenize the audio first"),
        ({"type": "audio", "tokens": [12]}, r"\[65536, 70656\)"),
        ({"type": "audio", "tokens": "<audio_1>"}, "list of integers"),
        ({"type": "image"}, "unsupported content type"),
        ({"type": "text", "text": 5}, "string 'text'"),
        (42, "unsupported content"),
    ],
)
def test_bad_content(ours: TextTokenizer, content, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ours.render_chat([{"role": "user", "content": content}])


def test_bad_messages(ours: TextTokenizer) -> None:
    for mode in (True, False):
        with pytest.raises(ValueError, match="no messages"):
            ours.render_chat([], default_system_prompt=mode)
    with pytest.raises(ValueError, match="string 'role'"):
        ours.render_chat([{"content": "x"}])
    with pytest.raises(ValueError, match="invalid role"):
        ours.render_chat([{"role": "human\nsystem", "content": "x"}])


# ------------------------------------------------------------------------------------ decode


def _random_sequences(ours: TextTokenizer, n: int, seed: int) -> list[list[int]]:
    return [ours.encode(t, add_bos=i % 3 == 0) for i, t in enumerate(random_texts(n, seed))]


def test_decode_matches_hf(ours: TextTokenizer, hf) -> None:
    for text in FIXED_TEXTS:
        ids = ours.encode(text)
        assert ours.decode(ids) == hf.decode(ids), repr(text)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True), repr(text)
    for ids in _random_sequences(ours, 300, seed=3):
        assert ours.decode(ids) == hf.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_decode_round_trip(ours: TextTokenizer) -> None:
    for text in ["Hello world", "你好，世界", "龘😀 x", "a\nb\tc", "<|BOT|>human\nhi<|EOT|>"]:
        assert ours.decode(ours.encode(text, add_bos=False)) == text
    assert ours.decode(ours.encode("Hello")) == "<s> Hello"  # HF strips only the very first space
    assert ours.decode(ours.encode("Hello"), skip_special_tokens=True) == "Hello"


def test_incremental_deltas_match_hf(ours: TextTokenizer, hf) -> None:
    """Concatenated deltas == decode(all ids); at every point without a held-back character the text so
    far equals HF's decode of the ids so far; no delta ever holds U+FFFD (all input is valid UTF-8)."""
    for ids in _random_sequences(ours, 200, seed=4):
        for skip in (False, True):
            d = IncrementalDetokenizer(ours, skip_special_tokens=skip)
            text = ""
            for k, token in enumerate(ids, start=1):
                delta = d.feed(token)
                assert "\ufffd" not in delta
                text += delta
                if not d.has_pending:
                    assert text == hf.decode(ids[:k], skip_special_tokens=skip)
            assert not d.has_pending
            text += d.finish()
            assert text == d.text == ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_multibyte_character_is_held_back(ours: TextTokenizer) -> None:
    ids = ours.encode("龘!", add_bos=False)  # 龘 is not in the vocabulary: ▁ + three byte pieces
    pieces = [ours.id_to_piece(i) for i in ids]
    assert pieces == ["▁", "<0xE9>", "<0xBE>", "<0x98>", "!"]
    d = IncrementalDetokenizer(ours)
    assert [d.feed(i) for i in ids] == ["", "", "", "龘", "!"]  # first space stripped, char whole
    four = ours.encode("😀", add_bos=False)[1:]
    d = IncrementalDetokenizer(ours)
    assert [d.feed(i) for i in four] == ["", "", "", "😀"]


def test_invalid_utf8(ours: TextTokenizer) -> None:
    b = {v: 5 + v for v in range(256)}  # byte piece ids
    x = ours.piece_to_id("x")
    d = IncrementalDetokenizer(ours)
    # A lead byte and one continuation, then a normal piece: the broken sequence resolves only then.
    assert [d.feed(i) for i in (b[0xE4], b[0xBD], x)] == ["", "", "\ufffd\ufffdx"]
    # A stray continuation byte or an impossible lead is known bad at once.
    assert d.feed(b[0x80]) == "\ufffd" and d.feed(b[0xFF]) == "\ufffd"
    # A lead followed by a non-continuation byte: the lead is bad, the new byte starts afresh.
    assert d.feed(b[0xE4]) == "" and d.feed(b[0x41]) == "\ufffdA"
    # Surrogates and overlong forms are rejected at the second byte.
    assert d.feed(b[0xED]) == "" and d.feed(b[0xA0]) == "\ufffd\ufffd"
    assert d.feed(b[0xE0]) == "" and d.feed(b[0x80]) == "\ufffd\ufffd"
    # Valid characters around an invalid byte survive (HF would replace the whole byte run).
    assert d.feed(b[0xC3]) == "" and d.feed(b[0xA9]) == "é"
    assert d.feed(b[0xF0]) == "" and d.finish() == "\ufffd"
    assert ours.decode([b[0xE4], b[0xBD], b[0xA0], b[0xE4]]) == "你\ufffd"
