"""Where the streamed reply text is cut into clauses for TTS: a pure policy.

The first clause is kept short (the first audio waits for it); later ones may be longer, because the
TTS of one clause runs while the previous clause plays, and longer inputs give better prosody.
A clause ends after clause punctuation (Chinese and Latin) once it has ``min_chars``; without
punctuation it is cut at ``max_chars``, at the last space or markup boundary (``<...>``, which the
chat model's special pieces look like) so that no word or piece is split when avoidable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Clause-ending punctuation; a run of it ("?!", "……", '."') stays with the clause it ends.
_ENDERS = "。！？；：，、,.!?;:…\n"
_CLOSERS = "\"'”’）)」』】》"
_MARKUP = re.compile(r"<[^<>\s]{1,40}>")
SPEECH_TOKENS_PER_S = 125 / 3  # Step-Audio: 2 vq02 + 3 vq06 tokens per 120 ms


@dataclass(frozen=True)
class ClausePolicy:
    first_min_chars: int = 4
    first_max_chars: int = 40
    min_chars: int = 12
    max_chars: int = 120
    # A later clause's TTS waits for this many speech tokens (about 1.2 s) before its first audio, instead of
    # the model's small first chunk, when the reply's queued audio covers the wait: each token2wav flow run
    # re-reads the whole voice prompt, so one run instead of two per short clause saves ~40% of token2wav's
    # work. The wait is predicted from the pace of the reply's previous clause (wall seconds per second of
    # audio it delivered), so a loaded server, whose clauses come slower, falls back to the small chunk
    # instead of leaving the listener in silence; at least ``later_min_ahead_s`` must be queued beyond it.
    # Except when that clause came slower than real time: the listener then hears gaps either way, and
    # the small chunk's extra flow run makes the reply finish later and loads a server that is already
    # behind (16 sessions on 2 cores: token2wav ~17% fewer CPU-s, underrun p90 lower).
    # None: always the model's first chunk.
    later_first_chunk_tokens: int | None = 50
    later_min_ahead_s: float = 0.5
    # Start a clause's TTS as soon as the previous clause has delivered audio (its chunks wait for their
    # turn), instead of after the previous clause's last chunk: the set-up of the next clause (prompt,
    # first tokens, first flow run) then overlaps the previous clause's playback. Off by default: on a
    # CPU-bound server (2 cores, 8 sessions) the next clause's work competed with the current one's
    # remaining chunks, and both voice-to-voice and underruns got worse; where concurrent streams are
    # nearly free (a GPU's batches) it hides each clause's set-up.
    tts_ahead: bool = False

    def tts_first_chunk(self, clause_index: int, audio_ahead_s: float,
                        pace_s_per_audio_s: float | None = None) -> int | None:
        """The ``first_chunk_tokens`` to ask for clause ``clause_index`` (None: the model's default).
        ``pace_s_per_audio_s``: how long the previous clause took per second of its audio (None: unknown)."""
        if clause_index == 0 or self.later_first_chunk_tokens is None:
            return None
        if pace_s_per_audio_s is not None and pace_s_per_audio_s >= 1.0:
            return self.later_first_chunk_tokens
        wait_s = 0.0 if pace_s_per_audio_s is None else pace_s_per_audio_s * self.later_first_chunk_tokens / SPEECH_TOKENS_PER_S
        if audio_ahead_s < wait_s + self.later_min_ahead_s:
            return None
        return self.later_first_chunk_tokens


def _safe_cut(text: str, limit: int) -> int:
    """A cut position <= limit that splits no markup piece and, if possible, no word."""
    cut = limit
    for m in _MARKUP.finditer(text):
        if m.start() < cut < m.end():
            cut = m.start() if m.start() > 0 else m.end()
            break
    space = text.rfind(" ", 0, cut)
    markup_end = max((m.end() for m in _MARKUP.finditer(text, 0, cut) if m.end() <= cut), default=-1)
    boundary = max(space + 1 if space > 0 else -1, markup_end)
    return boundary if boundary > limit // 2 else cut


def _punct_cut(text: str, min_chars: int) -> int | None:
    """The end of the first punctuation run at or after min_chars, if it is complete."""
    i = min_chars - 1 if min_chars > 0 else 0
    while i < len(text):
        if text[i] in _ENDERS:
            j = i + 1
            while j < len(text) and (text[j] in _ENDERS or text[j] in _CLOSERS):
                j += 1
            if j == len(text):
                return None  # more of the run may still come
            return j
        i += 1
    return None


@dataclass
class ClauseSegmenter:
    """Feed text deltas, take complete clauses; ``finish`` returns what is left."""

    policy: ClausePolicy = field(default_factory=ClausePolicy)
    _pending: str = ""
    _carry: str = ""  # whitespace-only pieces, prepended to the next clause so no text is lost
    _emitted: int = 0

    def _limits(self) -> tuple[int, int]:
        p = self.policy
        return (p.first_min_chars, p.first_max_chars) if self._emitted == 0 else (p.min_chars, p.max_chars)

    def feed(self, delta: str) -> list[str]:
        self._pending += delta
        out = []
        while True:
            lo, hi = self._limits()
            cut = _punct_cut(self._pending, lo)
            if cut is None or cut > hi:
                if len(self._pending) <= hi:
                    break
                cut = _safe_cut(self._pending, hi)
            clause, self._pending = self._carry + self._pending[:cut], self._pending[cut:]
            if clause.strip():
                out.append(clause)
                self._carry = ""
                self._emitted += 1
            else:
                self._carry = clause
        return out

    def finish(self) -> list[str]:
        rest, self._pending, self._carry = self._carry + self._pending, "", ""
        if rest.strip():
            self._emitted += 1
            return [rest]
        return []
