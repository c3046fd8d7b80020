"""The conversation of one session, kept as text where it can be.

The user's current turn reaches the chat model as audio tokens; once ASR has transcribed a turn,
its transcript replaces the tokens for later turns (the reference's text-based context management).
Assistant turns are their text, cut back to what the user heard when the client truncates them.
A token budget keeps the system prompt and as many of the newest turns as fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

AUDIO_TOKEN_OFFSET = 65536  # LLM id of <audio_0>
_MARKUP = re.compile(r"<[^<>\s]{1,40}>")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]")
MESSAGE_OVERHEAD_TOKENS = 4  # <|BOT|>, the role, its newline, <|EOT|>


def estimate_text_tokens(text: str) -> int:
    """An upper-leaning estimate without the tokenizer: a special piece or a CJK character is about one
    token, other text about three characters a token. Used only for the context budget."""
    pieces = len(_MARKUP.findall(text))
    rest = _MARKUP.sub("", text)
    cjk = len(_CJK.findall(rest))
    return pieces + cjk + -(-(len(rest) - cjk) // 3)


@dataclass
class Item:
    id: str
    role: str  # user | assistant | system
    kind: str  # input_audio | input_text | output_audio | output_text
    status: str = "completed"
    text: str = ""  # input_text / output_* text (the assistant's transcript)
    audio_tokens: list[int] | None = None  # input_audio: LLM ids (65536 + N)
    audio_ms: int = 0  # input_audio: duration of the user's audio; output_audio: audio sent
    transcript: str | None = None  # input_audio: the ASR transcript, once known
    use_transcript: bool = False  # input_audio: history renders the transcript instead of the tokens
    segments: list[tuple[str, int]] = field(default_factory=list)  # output_audio: (clause, audio ms)

    def content(self) -> dict[str, Any]:
        if self.kind == "input_audio":
            return {"type": "input_audio", "transcript": self.transcript}
        if self.kind == "output_audio":
            return {"type": "output_audio", "transcript": self.text}
        return {"type": self.kind, "text": self.text}

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "object": "realtime.item", "type": "message", "role": self.role,
                "status": self.status, "content": [self.content()]}

    def message(self) -> dict[str, Any] | None:
        """This item as a chat message for the LLM (None: nothing to say)."""
        if self.kind == "input_audio":
            if self.use_transcript and self.transcript:
                return {"role": "user", "content": self.transcript}
            if self.audio_tokens:
                return {"role": "user", "content": {"type": "audio", "tokens": list(self.audio_tokens)}}
            return None
        if not self.text:
            return None
        return {"role": self.role, "content": self.text}

    def estimate_tokens(self) -> int:
        if self.kind == "input_audio" and not (self.use_transcript and self.transcript):
            return MESSAGE_OVERHEAD_TOKENS + len(self.audio_tokens or ())
        text = self.transcript if self.kind == "input_audio" else self.text
        return MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(text or "")


class ItemNotFound(KeyError):
    pass


class Conversation:
    def __init__(self) -> None:
        self.items: list[Item] = []

    def get(self, item_id: str) -> Item:
        for it in self.items:
            if it.id == item_id:
                return it
        raise ItemNotFound(item_id)

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Inserts after ``previous_item_id`` ("root": first; None: last); returns the id before it."""
        if previous_item_id is None:
            prev = self.last_id()
            self.items.append(item)
            return prev
        if previous_item_id == "root":
            self.items.insert(0, item)
            return None
        for i, it in enumerate(self.items):
            if it.id == previous_item_id:
                self.items.insert(i + 1, item)
                return previous_item_id
        raise ItemNotFound(previous_item_id)

    def delete(self, item_id: str) -> None:
        self.items.remove(self.get(item_id))

    def apply_transcripts(self) -> None:
        """From now on, turns with a transcript are text (called when a new user turn begins, so that a
        transcript landing in the middle of a turn does not change the turn's request under it)."""
        for it in self.items:
            if it.kind == "input_audio" and it.transcript:
                it.use_transcript = True

    def truncate(self, item_id: str, audio_end_ms: int) -> Item:
        """Cuts an assistant audio item's text to what ``audio_end_ms`` of its audio said."""
        item = self.get(item_id)
        if item.kind != "output_audio":
            raise ValueError(f"item {item_id} is not assistant audio")
        if audio_end_ms < 0 or audio_end_ms > item.audio_ms:
            raise ValueError(f"audio_end_ms {audio_end_ms} is outside the item's {item.audio_ms} ms of audio")
        item.text = heard_text(item.segments, audio_end_ms)
        item.audio_ms = audio_end_ms
        item.status = "incomplete"
        return item

    def messages(self, system_prompt: str, budget_tokens: int, extra: Item | None = None) -> list[dict[str, Any]]:
        """The system prompt and the newest messages within ``budget_tokens`` (the newest always).
        ``extra``: an item not (yet) in the conversation, taken as the newest."""
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        used = sum(MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(m["content"]) for m in system)
        picked: list[dict[str, Any]] = []
        for it in reversed([*self.items, extra] if extra is not None else self.items):
            msg = it.message()
            if msg is None:
                continue
            cost = it.estimate_tokens()
            if picked and used + cost > budget_tokens:
                break
            picked.append(msg)
            used += cost
        return system + picked[::-1]


def heard_text(segments: list[tuple[str, int]], audio_end_ms: int) -> str:
    """The text of the clauses played within ``audio_end_ms``; of a clause cut short, the share of its
    characters that its played share of audio spoke (never splitting a ``<...>`` piece)."""
    out, t = [], 0
    for text, ms in segments:
        if t + ms <= audio_end_ms:
            out.append(text)
            t += ms
            continue
        share = (audio_end_ms - t) / ms if ms > 0 else 0.0
        cut = int(len(text) * share)
        for m in _MARKUP.finditer(text):
            if m.start() < cut < m.end():
                cut = m.start()
        out.append(text[:cut])
        break
    return "".join(out)
