"""The Step-1 text tokenizer (``tokenizer.model`` + ``tokenizer_config.json``) over the ``sentencepiece`` library.

``TextTokenizer`` produces the ids of the Hugging Face ``LlamaTokenizer`` the reference loads with
``AutoTokenizer`` (fast tokenizer converted from ``tokenizer.model``, ``legacy: false``), id for id:

* special and user-defined pieces (``<unk>``, ``<s>``, ``</s>``, ``<|EOT|>``, ``<|BOT|>``,
  ``<audio_N>``) are cut out of the text first, leftmost-longest, and map to their ids -- so the
  string ``<audio_12>`` is one id, 65548, and a literal ``<s>`` in text is id 1, as in HF;
* each text span between them is BPE-encoded by SentencePiece with the dummy prefix disabled, spaces
  escaped to ``▁``, no other normalisation; only the span at the very start of the text gets a ``▁``
  prepended (unless it already starts with a space) -- HF's ``Metaspace(prepend_scheme="first")``.
  With ``legacy: true`` every span gets one (the converter's legacy ``Prepend("▁")`` normaliser);
* ``add_bos_token`` (default true when the key is absent, as for Step-Audio-TTS-3B) puts 1 in front.

Absent keys take transformers 4.x's defaults (the reference pins 4.48.3): ``add_bos_token`` true,
``legacy`` true.  transformers 5 changed both defaults; the official and the tiny configs carry
``legacy: false``, and only Step-Audio-TTS-3B lacks ``add_bos_token`` (see ``prompts``).

SentencePiece's own ``encode`` differs (it would prepend ``▁`` before ``<|BOT|>`` and after nothing
else), so the loaded model proto gets an identity normaliser without dummy prefix; the proto is read
and rewritten with a few lines of protobuf wire format, no protobuf runtime needed.

``decode`` follows HF's decoder chain (``▁`` -> space, byte pieces -> UTF-8, one leading space
stripped) with one deliberate difference: bytes of an invalid UTF-8 sequence become one U+FFFD each
while the valid characters around them stay, where HF turns a whole run of byte pieces into U+FFFDs
as soon as any byte in it is bad.  For valid text both agree; ours can be streamed
(``stepaudio.llm.detokenize``), HF's cannot.

Chat rendering has two explicit modes (``default_system_prompt``):

* ``True`` -- the Chat repository's HF ``chat_template``: a default system turn
  ``<|BOT|>system\\nYou are a helpful assistant.<|EOT|>`` when the first message is not a system
  message, generation prompt always appended when asked for;
* ``False`` -- the reference pipeline's hand-built template (``StepAudio.apply_chat_template``): no
  default system turn, ``content=None`` opens a turn, and ``<|BOT|>assistant\\n`` is appended unless
  the text already ends with it.  (``content=None`` is accepted in both modes.)

Both render ``<|BOT|>{role}\\n{content}<|EOT|>`` with ``user`` renamed to ``human``; audio content is
``{"type": "audio", "tokens": [65536 + N, ...]}`` and renders as ``<audio_N>`` strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepaudio.tokenizer.files import CheckpointError

__all__ = [
    "AUDIO_TOKEN_OFFSET",
    "BOS_ID",
    "BOT_ID",
    "EOS_ID",
    "EOT_ID",
    "N_AUDIO_TOKENS",
    "UNK_ID",
    "TextTokenizer",
]

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
EOT_ID = 3
BOT_ID = 4
AUDIO_TOKEN_OFFSET = 65536
N_AUDIO_TOKENS = 5120
SPIECE_UNDERLINE = "▁"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
GENERATION_PROMPT = "<|BOT|>assistant\n"

# SentencePiece piece types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


# ------------------------------------------------------------------------- protobuf wire format


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int, Any, int, int]]:
    """(field number, wire type, value, start, end) of each top-level record of a message."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated record")
        yield field, wire, value, start, pos


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


@dataclass(frozen=True)
class _Piece:
    piece: str
    type: int


def _parse_piece(msg: bytes) -> _Piece:
    """One ``ModelProto.SentencePiece``: piece = 1 (string), score = 2 (float), type = 3 (enum)."""
    piece, ptype = "", NORMAL
    pos, n = 0, len(msg)
    while pos < n:
        key = msg[pos]
        if key == 0x0A:  # field 1, length-delimited (pieces are far shorter than 128 bytes)
            size = msg[pos + 1]
            if size < 0x80:
                piece = msg[pos + 2 : pos + 2 + size].decode("utf-8")
                pos += 2 + size
                continue
        elif key == 0x15:  # field 2, fixed32
            pos += 5
            continue
        elif key == 0x18 and msg[pos + 1] < 0x80:  # field 3, varint
            ptype = msg[pos + 1]
            pos += 2
            continue
        for field, wire, value, _, end in _fields(msg[pos:]):  # anything else: the general reader
            if field == 1 and wire == 2:
                piece = value.decode("utf-8")
            elif field == 3 and wire == 0:
                ptype = value
            pos += end
            break
    return _Piece(piece, ptype)


def _parse_model_proto(data: bytes) -> tuple[list[_Piece], bytes]:
    """The pieces of a serialised ``sentencepiece.ModelProto`` and the same proto with an identity
    normaliser that adds no dummy prefix and keeps every space (what the HF conversion does)."""
    pieces: list[_Piece] = []
    kept = bytearray()
    pos, n = 0, len(data)
    while pos < n and data[pos] == 0x0A and pos + 1 < n and data[pos + 1] < 0x80:  # the pieces, fast
        end = pos + 2 + data[pos + 1]
        pieces.append(_parse_piece(data[pos + 2 : end]))
        pos = end
    if pos > n:
        raise ValueError("truncated record")
    kept += data[:pos]
    for field, wire, value, start, end in _fields(data[pos:]):
        if field == 1 and wire == 2:
            pieces.append(_parse_piece(value))
        if field not in (3, 5):  # drop normalizer_spec / denormalizer_spec
            kept += data[pos + start : pos + end]
    normalizer = (
        b"\x0a\x08identity"  # name
        + b"\x18\x00"  # add_dummy_prefix false
        + b"\x20\x00"  # remove_extra_whitespaces false
        + b"\x28\x01"  # escape_whitespaces true
    )
    kept += b"\x1a" + _encode_varint(len(normalizer)) + normalizer
    return pieces, bytes(kept)


def _token_content(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string or {"content": ...}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"unexpected special-token value {value!r}")


# ------------------------------------------------------------------------------------- tokenizer


class TextTokenizer:
    """Step-1 tokenizer read from a folder holding ``tokenizer.model`` and ``tokenizer_config.json``."""

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        path = Path(path)
        root = path if path.is_dir() else path.parent
        model_file = path if path.is_file() else root / "tokenizer.model"
        self.root = root
        try:
            data = model_file.read_bytes()
        except FileNotFoundError as exc:
            raise CheckpointError(f"{model_file}: SentencePiece tokenizer.model not found") from exc
        try:
            pieces, proto = _parse_model_proto(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{model_file}: not a SentencePiece model ({exc})") from exc
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError depending on version
            raise CheckpointError(f"{model_file}: SentencePiece cannot load it ({exc})") from exc
        self.config = self._read_config(root / "tokenizer_config.json")
        cfg = self.config

        self.pieces: list[str] = [p.piece for p in pieces]
        self._types: list[int] = [p.type for p in pieces]
        self._index = {p: i for i, p in enumerate(self.pieces)}
        self._bytes = {
            i: int(m.group(1), 16)
            for i, (p, t) in enumerate(zip(self.pieces, self._types, strict=True))
            if t == BYTE and (m := _BYTE_PIECE.match(p))
        }

        def token_id(key: str, default: str | None) -> int | None:
            try:
                text = _token_content(cfg.get(key, default))
            except ValueError as exc:
                raise CheckpointError(f"{root / 'tokenizer_config.json'}: key {key!r}: {exc}") from exc
            if text is None:
                return None
            if text not in self._index:
                raise CheckpointError(f"{root / 'tokenizer_config.json'}: {key} {text!r} is not a piece of {model_file}")
            return self._index[text]

        self.unk_id = token_id("unk_token", "<unk>")
        self.bos_id = token_id("bos_token", "<s>")
        self.eos_id = token_id("eos_token", "</s>")
        self.pad_id = token_id("pad_token", None)
        self.add_bos_token = bool(cfg.get("add_bos_token", True))
        self.add_eos_token = bool(cfg.get("add_eos_token", False))
        self.add_prefix_space = cfg.get("add_prefix_space") is None or bool(cfg["add_prefix_space"])
        self.legacy = bool(cfg.get("legacy", True))
        self.model_max_length = cfg.get("model_max_length")
        self.chat_template = cfg.get("chat_template")

        # Ids decode() drops with skip_special_tokens: the tokenizer's special tokens.
        self.special_ids = frozenset(i for i in (self.unk_id, self.bos_id, self.eos_id, self.pad_id) if i is not None)
        # Strings cut out of the text before BPE: control and user-defined pieces and the special tokens.
        added = {p for p, t in zip(self.pieces, self._types, strict=True) if t in (CONTROL, USER_DEFINED)}
        added |= {self.pieces[i] for i in self.special_ids}
        self._added = frozenset(added)
        self._added_lengths = sorted({len(a) for a in added}, reverse=True)
        first = sorted({a[0] for a in added})
        self._added_start = re.compile("[" + "".join(re.escape(c) for c in first) + "]") if first else None

    @staticmethod
    def _read_config(path: Path) -> dict[str, Any]:
        if not path.exists():
            return {}
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return cfg

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def id_to_piece(self, token_id: int) -> str:
        return self.pieces[token_id]

    def piece_to_id(self, piece: str) -> int | None:
        return self._index.get(piece)

    def byte_value(self, token_id: int) -> int | None:
        """The byte a byte-fallback piece stands for, else None."""
        return self._bytes.get(token_id)

    @staticmethod
    def is_audio_id(token_id: int) -> bool:
        return AUDIO_TOKEN_OFFSET <= token_id < AUDIO_TOKEN_OFFSET + N_AUDIO_TOKENS

    @staticmethod
    def audio_string(llm_ids: Sequence[int]) -> str:
        """``<audio_N>`` pieces for audio token ids 65536 + N."""
        out = []
        for i in llm_ids:
            i = int(i)
            if not TextTokenizer.is_audio_id(i):
                raise ValueError(
                    f"audio token ids must be in [{AUDIO_TOKEN_OFFSET}, {AUDIO_TOKEN_OFFSET + N_AUDIO_TOKENS}); got {i}"
                )
            out.append(f"<audio_{i - AUDIO_TOKEN_OFFSET}>")
        return "".join(out)

    # ------------------------------------------------------------------ encode

    def _split_added(self, text: str) -> list[tuple[str, bool]]:
        """(span, is_added_token) in order; added tokens matched leftmost-longest."""
        out: list[tuple[str, bool]] = []
        if self._added_start is None:
            return [(text, False)] if text else []
        start = pos = 0
        while True:
            m = self._added_start.search(text, pos)
            if m is None:
                break
            i = m.start()
            match = next((text[i : i + n] for n in self._added_lengths if text[i : i + n] in self._added), None)
            if match is None:
                pos = i + 1
                continue
            if i > start:
                out.append((text[start:i], False))
            out.append((match, True))
            start = pos = i + len(match)
        if start < len(text):
            out.append((text[start:], False))
        return out

    def _encode_span(self, span: str, at_start: bool) -> list[int]:
        if self.add_prefix_space:
            if self.legacy:
                span = SPIECE_UNDERLINE + span
            elif at_start and not span.startswith((" ", SPIECE_UNDERLINE)):
                span = SPIECE_UNDERLINE + span
        return list(self._sp.encode(span))

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Ids of ``text``.

        ``add_bos`` None is HF's default special-token handling: BOS per ``add_bos_token`` (and EOS
        per ``add_eos_token``, false in the Step configs); True / False force the BOS on / off."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        if self.add_bos_token if add_bos is None else add_bos:
            if self.bos_id is None:
                raise ValueError("this tokenizer has no bos_token")
            ids.append(self.bos_id)
        offset = 0
        for span, is_added in self._split_added(text):
            if is_added:
                ids.append(self._index[span])
            else:
                ids.extend(self._encode_span(span, at_start=offset == 0))
            offset += len(span)
        if self.add_eos_token and add_bos is None and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    # ------------------------------------------------------------------ decode

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        from stepaudio.llm.detokenize import IncrementalDetokenizer

        d = IncrementalDetokenizer(self, skip_special_tokens=skip_special_tokens)
        return "".join(d.feed(i) for i in ids) + d.finish()

    # ------------------------------------------------------------------ chat

    def render_content(self, content: Any) -> str | None:
        """The text of one message's content: a string, {"type": "text", "text": ...},
        {"type": "audio", "tokens": [65536 + N, ...]}, a list of such parts, or None (open turn)."""
        if content is None or isinstance(content, str):
            return content
        if isinstance(content, list):
            parts = [self.render_content(part) for part in content]
            if any(p is None for p in parts):
                raise ValueError("a content list cannot contain None")
            return "".join(p for p in parts if p is not None)
        if isinstance(content, dict):
            kind = content.get("type")
            if kind == "text":
                text = content.get("text")
                if not isinstance(text, str):
                    raise ValueError("text content needs a string 'text'")
                return text
            if kind == "audio":
                tokens = content.get("tokens")
                if tokens is None:
                    raise ValueError(
                        "audio content needs 'tokens' (audio token ids 65536 + N); tokenize the audio first"
                    )
                if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
                    raise ValueError("audio 'tokens' must be a list of integers")
                return self.audio_string(tokens)
            raise ValueError(f"unsupported content type {kind!r}")
        raise ValueError(f"unsupported content {type(content).__name__}")

    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        *,
        default_system_prompt: bool = False,
    ) -> str:
        """The prompt text of a conversation (see the module docstring for the two modes)."""
        if not messages:
            raise ValueError("the conversation has no messages")
        turns: list[tuple[str, str | None]] = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                raise ValueError(f"message {i} must be an object with a string 'role'")
            role = "human" if msg["role"] == "user" else msg["role"]
            if not role or "\n" in role or "<|" in role:
                raise ValueError(f"message {i}: invalid role {msg['role']!r}")
            turns.append((role, self.render_content(msg.get("content"))))
        out: list[str] = []
        if default_system_prompt and messages[0]["role"] != "system":
            out.append(f"<|BOT|>system\n{DEFAULT_SYSTEM_PROMPT}<|EOT|>")
        for role, content in turns:
            out.append(f"<|BOT|>{role}\n" if content is None else f"<|BOT|>{role}\n{content}<|EOT|>")
        text = "".join(out)
        if add_generation_prompt and (default_system_prompt or not text.endswith(GENERATION_PROMPT)):
            text += GENERATION_PROMPT
        return text

    def encode_chat(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        *,
        default_system_prompt: bool = False,
    ) -> list[int]:
        """Prompt ids of a conversation: one BOS (1) at position 0, then the rendered text."""
        text = self.render_chat(messages, add_generation_prompt, default_system_prompt=default_system_prompt)
        return self.encode(text, add_bos=True)
