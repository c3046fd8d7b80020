"""Random-weight ``Step-Audio-Chat/`` and ``Step-Audio-TTS-3B/`` (the Step-1 LM part) in the official layout.

::

    Step-Audio-Chat/
      config.json                       official keys, tiny dims, real vocab (74752) and special ids
      model-00001.safetensors ...       several shards (names without "-of-N"), bf16, official key names
      model.safetensors.index.json      {"metadata": {"total_size": ...}, "weight_map": {key: file}}
      tokenizer.model                   SentencePiece BPE model, 74752 pieces, real special/audio ids
      tokenizer_config.json             LlamaTokenizer, legacy false, add_bos_token true, chat_template
    Step-Audio-TTS-3B/
      config.json  model-00001.safetensors  model.safetensors.index.json  (one shard, as released)
      tokenizer.model  tokenizer_config.json  (no chat_template, no add_bos_token key)

Weights are stored as bfloat16 like the released checkpoints (``torch_dtype`` "bfloat16"): normal
std 0.02 for every matrix, 1 + N(0, 0.02) for the RMSNorm weights.  Each tensor has its own RNG
stream seeded by (seed, tensor name), so the values do not depend on the shard layout.  The
tokenizer does not depend on the seed.

``tokenizer.model`` pieces: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2 (control), ``<|EOT|>`` 3 and
``<|BOT|>`` 4 (user-defined, so they encode from text), the 256 byte-fallback pieces ``<0x00>`` ..
``<0xFF>`` (5..260), then BPE merges learned from a small built-in English/Chinese text, the single
characters (``▁``, printable ASCII, several hundred common CJK characters and punctuation), unused
``<unused_ID>`` fillers up to 65535, ``<audio_N>`` (user-defined) at 65536 + N for N in 0..5119 and
fillers up to 74751.  The model proto is serialised here field by field (protobuf wire format), which
keeps the bytes deterministic and independent of the installed protobuf runtime.

Tiny dims by default (presets ``tiny-chat``, ``tiny-tts`` of ``stepaudio.llm.config``); with
``full_size`` (or ``preset="step1-100m"``) both components get the ~110M-parameter ``step1-100m``
preset for benchmarks -- the released 130B / 3B dims are not something to write as random weights.
``python -m export.tiny.step1 --preset step1-100m OUT`` writes one component with any preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from stepaudio.llm.config import PRESETS, VOCAB_SIZE, Step1Config
from stepaudio.llm.prompts import SYS_PROMPT_FOR_RAP, SYS_PROMPT_FOR_VOCAL, SYS_PROMPT_WO_SPK

from . import TinyOptions

KINDS = {
    "chat": {"component": "Step-Audio-Chat", "preset": "tiny-chat", "shards": 3},
    "tts": {"component": "Step-Audio-TTS-3B", "preset": "tiny-tts", "shards": 1},
}
BENCH_PRESET = "step1-100m"

AUDIO_TOKEN_OFFSET = 65536
N_AUDIO_TOKENS = 5120
SPECIAL_PIECES = ("<unk>", "<s>", "</s>", "<|EOT|>", "<|BOT|>")
N_MERGES = 2000
INIT_STD = 0.02

# SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"

AUTO_MAP = {
    "AutoConfig": "configuration_step1.Step1Config",
    "AutoModelForCausalLM": "modeling_step1.Step1ForCausalLM",
}

# The Chat repository's chat template (spec 2.3): a default system turn when the first message is
# not a system message, "user" renamed to "human", generation prompt "<|BOT|>assistant\n".
CHAT_TEMPLATE = (
    "{% if not messages or messages[0]['role'] != 'system' %}"
    "{{ '<|BOT|>system\\nYou are a helpful assistant.<|EOT|>' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set role = 'human' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<|BOT|>' + role + '\\n' + message['content'] + '<|EOT|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|BOT|>assistant\\n' }}{% endif %}"
)

# ---------------------------------------------------------------------------------------- vocabulary

# Text the BPE merges are learned from (written for this purpose; it only shapes the vocabulary).
_CORPUS_EN = """
Hello, how are you today? I am fine, thank you. What is your name? My name is Alex and I live in a
small town near the sea. The weather is nice and the sun is shining. We are going to the park this
afternoon, and then we will have dinner with our friends. Please tell me a story about the ocean.
Once upon a time there was a little fish who wanted to see the world. She swam through the deep blue
water, past the coral and the old ships, until she found a quiet place where the light was warm.
The quick brown fox jumps over the lazy dog. Speech synthesis turns written text into spoken
language; speech recognition turns spoken language into text. A voice assistant listens, thinks and
answers. The model reads the audio tokens and writes the reply one token at a time. This is a test
of the streaming interface: every new token is sent to the client as soon as it is ready. Thank you
for listening, and have a good day. Can you help me with my homework? Of course, I would be happy to
help. Let me think about it for a moment. The answer is that the number of people in the room is
twenty three. I think that is right, but let me check again. Would you like some tea or coffee?
Music, singing and rap are forms of expression. People like to sing songs together at night.
<|BOT|>system
You are a helpful assistant.<|EOT|><|BOT|>human
Hello! Who are you?<|EOT|><|BOT|>assistant
Hi, I am your assistant. How can I help you?<|EOT|><|BOT|>human
你好<|EOT|><|BOT|>assistant
你好！有什么可以帮你的吗？<|EOT|>
"""
_CORPUS_ZH = (
    "你好，我是你的朋友，我叫小明，你叫什么名字？今天天气很好，我们一起去公园散步吧。"
    "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？我想听一个关于大海的故事。"
    "从前有一条小鱼，它想去看看外面的世界。它游过深蓝色的海水，游过美丽的珊瑚，终于找到了一个安静的地方。"
    "语音合成把文字变成声音，语音识别把声音变成文字。这个模型一边听一边想，然后用自然的声音回答问题。"
    "请用简短口语化的文字回答。我们现在开始测试流式接口，每一个新的词都会马上发送给用户。"
    "谢谢你的帮助，祝你有美好的一天。这个问题的答案是二十三个人，我觉得应该是对的。"
    "适配用户的语言，用简短口语化的文字回答。"
) + SYS_PROMPT_WO_SPK + SYS_PROMPT_FOR_RAP + SYS_PROMPT_FOR_VOCAL

# Common Chinese characters (single-character pieces); duplicates are removed when the vocabulary is built.
_COMMON_CJK = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心"
    "多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外"
    "但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电"
    "四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性"
    "通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清"
    "物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连"
    "远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告"
    "江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单"
    "据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坐集编宝谈府拉黑且随格尽剑讲布杀微怕母调局根曾"
    "准团段终乐切级克精哪官示冷域鱼鸟狗猫吗吧啊哦嗯呀哈谢您好久见晚早饭茶咖啡唱歌曲跳舞玩游戏朋友家庭妈爸哥姐妹弟"
    "爷奶孩春夏秋冬雨雪云星太阳月亮河湖岛桥楼街店买卖钱贵便宜左右上下前后里外今明昨"
)
_CJK_PUNCT = "，。！？、；：“”‘’（）《》【】…—～·「」"


def _char_class(ch: str) -> str:
    if ch.isascii():
        if ch.isalpha():
            return "L"
        if ch.isdigit():
            return "D"
        return "P"
    if "\u4e00" <= ch <= "\u9fff":
        return "H"
    return "P"


def _pretokenize(text: str) -> list[str]:
    """Words as SentencePiece training sees them: "▁" marks a preceding space (and each line start),
    runs of letters, digits or CJK characters are words, every other character stands alone."""
    words: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        for chunk in line.split(" "):
            if not chunk:
                continue
            runs: list[str] = []
            for ch in chunk:
                if runs and _char_class(ch) == _char_class(runs[-1][-1]) != "P":
                    runs[-1] += ch
                else:
                    runs.append(ch)
            runs[0] = "▁" + runs[0]
            words.extend(runs)
    return words


def _learn_bpe(words: Counter[str], n_merges: int) -> list[str]:
    """Greedy BPE merges over ``words`` (most frequent pair first; ties broken lexicographically)."""
    vocab: dict[tuple[str, ...], int] = {tuple(w): c for w, c in sorted(words.items())}
    merged: list[str] = []
    seen: set[str] = set()
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for syms, count in vocab.items():
            for a, b in itertools.pairwise(syms):
                pairs[(a, b)] += count
        if not pairs:
            break
        (a, b), _count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        new = a + b
        if new not in seen:
            seen.add(new)
            merged.append(new)
        updated: dict[tuple[str, ...], int] = {}
        for syms, c in vocab.items():
            if a in syms:
                out: list[str] = []
                i = 0
                while i < len(syms):
                    if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                        out.append(new)
                        i += 2
                    else:
                        out.append(syms[i])
                        i += 1
                syms = tuple(out)
            updated[syms] = updated.get(syms, 0) + c
        vocab = updated
    return merged


@lru_cache(maxsize=1)
def vocabulary() -> tuple[tuple[str, float, int], ...]:
    """All 74752 (piece, score, type) entries in id order."""
    pieces: list[tuple[str, float, int]] = [
        ("<unk>", 0.0, UNKNOWN),
        ("<s>", 0.0, CONTROL),
        ("</s>", 0.0, CONTROL),
        ("<|EOT|>", 0.0, USER_DEFINED),
        ("<|BOT|>", 0.0, USER_DEFINED),
    ]
    pieces += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]

    corpus = _CORPUS_EN + "\n" + _CORPUS_ZH
    words = Counter(_pretokenize(corpus))
    merges = _learn_bpe(words, N_MERGES)
    chars: list[str] = ["▁"]
    chars += [chr(c) for c in range(0x21, 0x7F)]
    chars += list(_CJK_PUNCT) + list(_COMMON_CJK)
    chars += sorted({c for c in corpus if not c.isspace()})
    seen: set[str] = set()
    singles = [c for c in chars if not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]
    rank = 0
    for piece in [*merges, *singles]:
        pieces.append((piece, -float(rank), NORMAL))
        rank += 1
    while len(pieces) < AUDIO_TOKEN_OFFSET:
        pieces.append((f"<unused_{len(pieces)}>", -float(rank), NORMAL))
        rank += 1
    pieces += [(f"<audio_{n}>", 0.0, USER_DEFINED) for n in range(N_AUDIO_TOKENS)]
    while len(pieces) < VOCAB_SIZE:
        pieces.append((f"<unused_{len(pieces)}>", -float(rank), NORMAL))
        rank += 1
    _check_vocabulary(pieces)
    return tuple(pieces)


def _check_vocabulary(pieces: list[tuple[str, float, int]]) -> None:
    """The invariants that make SentencePiece's BPE and the Hugging Face BPE conversion agree."""
    index = {p: i for i, (p, _, _) in enumerate(pieces)}
    if len(index) != len(pieces) or len(pieces) != VOCAB_SIZE:
        raise AssertionError("duplicate pieces or wrong vocabulary size")
    normal = {p for p, _, t in pieces if t == NORMAL}
    for p, _, t in pieces:
        if t != NORMAL or len(p) == 1 or p.startswith("<unused_"):
            continue
        # Every character of a merged piece is a piece itself, no piece spans a word boundary or a
        # newline, and each merged piece can be formed from two pieces.
        if any(c not in normal for c in p) or "▁" in p[1:] or "\n" in p or p[0] == "<" or p[-1] == ">":
            raise AssertionError(f"piece {p!r} breaks the vocabulary invariants")
        if not any(p[:k] in normal and p[k:] in normal for k in range(1, len(p))):
            raise AssertionError(f"piece {p!r} cannot be formed by a merge")
    for name, i in (("<|EOT|>", 3), ("<|BOT|>", 4), ("<audio_0>", AUDIO_TOKEN_OFFSET)):
        if index[name] != i:
            raise AssertionError(f"{name} is at {index[name]}, not {i}")


# ------------------------------------------------------------------------- protobuf wire format


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int32/int64 negatives are sign-extended to 64 bits
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _pb_int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(int(value))


def _pb_bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _key(field, 2) + _varint(len(data)) + data


def _pb_float(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def model_proto_bytes(pieces: tuple[tuple[str, float, int], ...] | None = None) -> bytes:
    """The serialised ``sentencepiece.ModelProto`` (fields in number order)."""
    pieces = vocabulary() if pieces is None else pieces
    out = bytearray()
    for piece, score, ptype in pieces:  # ModelProto.pieces = 1
        body = _pb_bytes(1, piece) + _pb_float(2, score)
        if ptype != NORMAL:  # NORMAL is the default
            body += _pb_int(3, ptype)
        out += _pb_bytes(1, body)
    trainer = (  # ModelProto.trainer_spec = 2
        _pb_bytes(2, "tokenizer")  # model_prefix
        + _pb_int(3, 2)  # model_type BPE
        + _pb_int(4, len(pieces))  # vocab_size
        + _pb_int(35, 1)  # byte_fallback
        + _pb_int(40, 0)  # unk_id
        + _pb_int(41, 1)  # bos_id
        + _pb_int(42, 2)  # eos_id
        + _pb_int(43, -1)  # pad_id (none; tokenizer_config maps pad to <unk>)
    )
    out += _pb_bytes(2, trainer)
    normalizer = (  # ModelProto.normalizer_spec = 3
        _pb_bytes(1, "identity")  # name
        + _pb_int(3, 1)  # add_dummy_prefix
        + _pb_int(4, 0)  # remove_extra_whitespaces
        + _pb_int(5, 1)  # escape_whitespaces
    )
    out += _pb_bytes(3, normalizer)
    return bytes(out)


# ---------------------------------------------------------------------------------------- files


def tokenizer_config(kind: str) -> dict[str, Any]:
    """tokenizer_config.json: Chat carries add_bos_token and the chat template; TTS-3B has neither."""
    cfg: dict[str, Any] = {}
    if kind == "chat":
        cfg["add_bos_token"] = True
        cfg["add_eos_token"] = False
    cfg.update(
        {
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": False,
            "model_max_length": 65536,
            "pad_token": "<unk>",
            "padding_side": "left",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>",
        }
    )
    if kind == "chat":
        cfg["chat_template"] = CHAT_TEMPLATE
    return cfg


def config_dict(cfg: Step1Config) -> dict[str, Any]:
    out = cfg.to_dict()
    out.setdefault("auto_map", AUTO_MAP)
    return out


def _tensor_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def init_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 values of one tensor: RMSNorm weights 1 + N(0, 0.02), everything else N(0, 0.02)."""
    rng = _tensor_rng(seed, name)
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)
    if name.endswith("norm.weight"):
        x += np.float32(1.0)
    return x


def shard_plan(cfg: Step1Config, n_shards: int) -> dict[str, str]:
    """key -> shard file: layers split evenly, the embedding in the first, norm and lm_head in the last."""
    n_shards = max(1, min(n_shards, cfg.num_hidden_layers))
    names = [f"model-{i + 1:05d}.safetensors" for i in range(n_shards)]
    plan: dict[str, str] = {}
    layer_re = re.compile(r"^model\.layers\.(\d+)\.")
    for key in cfg.weight_shapes():
        m = layer_re.match(key)
        if m:
            plan[key] = names[int(m.group(1)) * n_shards // cfg.num_hidden_layers]
        elif key == "model.embed_tokens.weight":
            plan[key] = names[0]
        else:
            plan[key] = names[-1]
    return plan


def write_weights(dest: Path, cfg: Step1Config, seed: int, n_shards: int, dtype: str = "bfloat16") -> dict[str, Any]:
    """Write the shards and the index; return the index contents."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    shapes = cfg.weight_shapes()
    plan = shard_plan(cfg, n_shards)
    total = 0
    for file in sorted(set(plan.values())):
        tensors = {}
        for key in (k for k in shapes if plan[k] == file):
            t = torch.from_numpy(init_tensor(key, shapes[key], seed)).to(torch_dtype)
            tensors[key] = t.contiguous()
            total += t.numel() * t.element_size()
        save_file(tensors, str(dest / file), metadata={"format": "pt"})
        os.chmod(dest / file, 0o644)  # safetensors creates its files 0600
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(plan.items()))}
    (dest / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def write_step1(
    dest: Path,
    opts: TinyOptions,
    kind: str,
    preset: str | None = None,
    n_shards: int | None = None,
    dtype: str = "bfloat16",
) -> Path:
    """Fill ``dest`` (an existing, empty directory) with a Step-1 checkpoint of ``kind`` "chat" or "tts"."""
    if kind not in KINDS:
        raise KeyError(f"unknown Step-1 kind {kind!r}; known: {sorted(KINDS)}")
    spec = KINDS[kind]
    preset = preset or (BENCH_PRESET if opts.full_size else spec["preset"])
    if preset not in PRESETS:
        raise KeyError(f"unknown Step-1 preset {preset!r}; known: {sorted(PRESETS)}")
    cfg = dataclasses.replace(PRESETS[preset], torch_dtype=dtype)
    say = opts.progress
    dest = Path(dest)
    t0 = time.perf_counter()

    (dest / CONFIG_FILE).write_text(json.dumps(config_dict(cfg), indent=2) + "\n", encoding="utf-8")
    index = write_weights(dest, cfg, opts.seed, spec["shards"] if n_shards is None else n_shards, dtype)
    files = sorted(set(index["weight_map"].values()))
    say(
        f"  {preset}: {cfg.num_parameters:,} params ({dtype}) in {len(files)} shard(s), "
        f"{index['metadata']['total_size'] / 2**20:.1f} MiB"
    )
    (dest / TOKENIZER_MODEL).write_bytes(model_proto_bytes())
    (dest / TOKENIZER_CONFIG).write_text(
        json.dumps(tokenizer_config(kind), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    say(f"  {spec['component']} written in {time.perf_counter() - t0:.1f} s")
    return dest


def main(argv: list[str] | None = None) -> int:
    from . import _replace_dir

    parser = argparse.ArgumentParser(prog="python -m export.tiny.step1", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder to write <component>/ into")
    parser.add_argument("--kind", choices=sorted(KINDS), default="chat")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=BENCH_PRESET)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    args = parser.parse_args(argv)
    if args.preset in ("chat-130b", "tts-3b"):
        parser.error(f"{args.preset} has the size of a released model; pick a smaller preset")
    component = KINDS[args.kind]["component"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{component}.", suffix=".partial", dir=out))
    try:
        write_step1(tmp, TinyOptions(seed=args.seed, progress=print), args.kind, preset=args.preset, dtype=args.dtype)
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, out / component)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out / component} ({args.preset})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

