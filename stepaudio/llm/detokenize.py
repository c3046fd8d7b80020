"""Streaming detokenization: text deltas from token ids, never half a UTF-8 character.

A CJK character outside the vocabulary arrives as three byte-fallback tokens (``<0xE4>`` ``<0xBD>``
``<0xA0>``); its bytes are held back until the character is complete.  The concatenated deltas equal
``TextTokenizer.decode`` of all ids (which is defined through this class): ``▁`` becomes a space,
the first space of the whole text is dropped (HF's ``Strip(left=1)`` for ``add_prefix_space``
tokenizers), special tokens are rendered as their strings unless ``skip_special_tokens``.

Invalid UTF-8 is resolved as soon as it is known to be invalid: each byte of a broken sequence
becomes one U+FFFD and decoding resumes at the next byte.  A sequence still incomplete at
``finish()`` (or when a non-byte token interrupts it) is broken.  No delta ever holds U+FFFD for a
character that might still be completed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepaudio.llm.text_tokenizer import TextTokenizer

__all__ = ["IncrementalDetokenizer"]

REPLACEMENT = "\ufffd"


def _sequence_length(lead: int) -> int:
    """Length of the UTF-8 sequence a lead byte starts; 0 if it cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _continuation_ok(first: int, index: int, byte: int) -> bool:
    """Whether ``byte`` may be byte ``index`` (1-based after the lead) of a sequence led by ``first``."""
    lo, hi = 0x80, 0xBF
    if index == 1:  # no overlong forms, no surrogates, nothing above U+10FFFF
        if first == 0xE0:
            lo = 0xA0
        elif first == 0xED:
            hi = 0x9F
        elif first == 0xF0:
            lo = 0x90
        elif first == 0xF4:
            hi = 0x8F
    return lo <= byte <= hi


class IncrementalDetokenizer:
    """Feed token ids one at a time; each ``feed`` returns the text that became final."""

    def __init__(self, tokenizer: TextTokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._strip_first_space = tokenizer.add_prefix_space
        self._pending = bytearray()  # an incomplete UTF-8 sequence
        self._started = False  # some text has been produced (the leading-space rule is settled)
        self._parts: list[str] = []
        self.n_tokens = 0

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._parts)

    @property
    def has_pending(self) -> bool:
        """Bytes of an unfinished character are held back."""
        return bool(self._pending)

    def _emit(self, s: str) -> str:
        if not s:
            return ""
        if not self._started:
            self._started = True
            if self._strip_first_space and s[0] == " ":
                s = s[1:]
        if s:
            self._parts.append(s)
        return s

    def _break_pending(self) -> str:
        n = len(self._pending)
        self._pending.clear()
        return REPLACEMENT * n

    def _push_byte(self, b: int) -> str:
        out = ""
        if self._pending:
            first = self._pending[0]
            if _continuation_ok(first, len(self._pending), b):
                self._pending.append(b)
                if len(self._pending) == _sequence_length(first):
                    out = self._pending.decode("utf-8")
                    self._pending.clear()
                return out
            out = self._break_pending()
        n = _sequence_length(b)
        if n == 0:
            return out + REPLACEMENT
        if n == 1:
            return out + chr(b)
        self._pending.append(b)
        return out

    def feed(self, token_id: int) -> str:
        """The new text made final by ``token_id`` (possibly empty)."""
        tok = self.tokenizer
        token_id = int(token_id)
        if not 0 <= token_id < tok.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {tok.vocab_size})")
        self.n_tokens += 1
        if self.skip_special_tokens and token_id in tok.special_ids:
            return ""
        b = tok.byte_value(token_id)
        if b is not None:
            return self._emit(self._push_byte(b))
        text = tok.id_to_piece(token_id).replace("▁", " ")
        return self._emit(self._break_pending() + text)

    def feed_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.feed(t) for t in token_ids)

    def finish(self) -> str:
        """End of the sequence: an unfinished character becomes U+FFFD per byte."""
        return self._emit(self._break_pending())
