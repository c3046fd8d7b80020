"""Paraformer token pieces -> text, following FunASR's sentence post-processing.

Chinese characters (and digits) are written without spaces; English words are separated by one
space, and a word directly before a Chinese character loses its space; ``xx@@`` pieces are glued
onto the next English word; runs of single letters ("i b m") become one upper-case acronym
("IBM"). Like FunASR, a piece never closed by a word is dropped. Unlike FunASR, a token that is
neither (punctuation, say) never makes a following Chinese character delete it.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = frozenset({"<blank>", "<s>", "</s>", "<unk>", "<OOV>"})
CONTINUATION = "@@"  # a piece ending in it continues into the next token


def _is_joined_char(ch: str) -> bool:
    """Characters written without spaces: CJK unified ideographs, ASCII digits, and '@'
    (so a bare "@@" token is written as it is, as FunASR does)."""
    return "\u4e00" <= ch <= "\u9fff" or "0" <= ch <= "9" or ch == "@"


def _is_joined(token: str) -> bool:
    return bool(token) and all(_is_joined_char(c) for c in token)


def _is_word(token: str) -> bool:
    """An English (or other alphabetic, non-CJK) word; apostrophes allowed."""
    return bool(token) and all(c == "'" or (c.isalpha() and not _is_joined_char(c)) for c in token)


def _is_letter(item: str) -> bool:
    return len(item) == 1 and item.isascii() and item.isalpha()


def _merge_acronyms(items: list[str]) -> list[str]:
    """["i", " ", "b", " ", "m", " "] -> ["IBM", " "]: letters separated by single spaces."""
    out: list[str] = []
    i = 0
    while i < len(items):
        end = i
        while end + 2 < len(items) and _is_letter(items[end]) and items[end + 1] == " " and _is_letter(items[end + 2]):
            end += 2
        if end > i:
            out.append("".join(items[k].upper() for k in range(i, end + 1, 2)))
            i = end + 1
        else:
            out.append(items[i])
            i += 1
    return out


def tokens_to_text(tokens: Iterable[str]) -> str:
    items: list[str] = []  # words, characters, and the " " after each English word
    pending = ""  # an English word assembled from "@@" pieces
    space_last = False  # items ends with the space after an English word
    for token in tokens:
        if token in SPECIAL_TOKENS:
            continue
        if _is_joined(token):
            if space_last:
                items.pop()
            items.append(token)
            space_last = False
        elif CONTINUATION in token:
            pending += token.replace(CONTINUATION, "")
            space_last = False
        elif _is_word(token):
            items += [pending + token, " "]
            pending = ""
            space_last = True
        else:
            items.append(token)
            space_last = False
    return "".join(_merge_acronyms(items)).strip()
