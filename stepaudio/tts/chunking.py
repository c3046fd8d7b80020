"""The streaming token2wav chunk policy: one pure function, ``plan_chunks``.

Speech tokens arrive at 41.67 tokens/s (Step-Audio interleaves 2 vq02 + 3 vq06 tokens per 120 ms, a
"group" of 5). The first chunk is small, so the first audio leaves after about 0.5 s of tokens
(0.5 s * 41.67 = 20.8 -> 20 tokens, four whole groups); later hops grow geometrically (doubling by
default) up to a cap, which amortises the per-chunk flow cost once the listener has a buffer.

A chunk is released only when ``lookahead`` more tokens are already available, so the flow sees a
little right context past the chunk edge (its encoder attends both ways). On ``final`` everything
left is released in one chunk, without look-ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_SECOND = 125 / 3  # 41.67: 5 tokens per 120 ms
TOKEN_GROUP = 5  # 2 vq02 + 3 vq06 tokens per 120 ms


@dataclass(frozen=True)
class ChunkPolicy:
    first: int = 20  # tokens in the first chunk (about 0.48 s of speech)
    growth: float = 2.0  # each hop is the previous one times this (1.0: constant hops)
    cap: int = 100  # the largest hop, tokens (about 2.4 s)
    lookahead: int = 5  # tokens that must exist past a chunk before it is released
    group: int = TOKEN_GROUP  # hop sizes are rounded down to whole groups (at least one group)

    def __post_init__(self) -> None:
        if self.group < 1 or self.first < 1 or self.cap < self.first:
            raise ValueError(f"bad chunk policy {self}: need group >= 1, first >= 1 and cap >= first")
        if self.growth < 1.0 or self.lookahead < 0:
            raise ValueError(f"bad chunk policy {self}: need growth >= 1 and lookahead >= 0")

    @classmethod
    def from_parameters(cls, p: dict[str, str]) -> ChunkPolicy:
        """From a rendered model config's parameters (token2wav's, which tts also gets, to align its pushes)."""
        return cls(first=int(p["first_chunk_tokens"]), growth=float(p["chunk_growth"]),
                   cap=int(p["max_chunk_tokens"]), lookahead=int(p["lookahead_tokens"]))

    def with_first(self, first: int | None) -> ChunkPolicy:
        """This policy with another first chunk (None: unchanged); the cap grows to hold it."""
        if first is None:
            return self
        return ChunkPolicy(first, self.growth, max(self.cap, first), self.lookahead, self.group)

    def hop(self, index: int) -> int:
        """Size of chunk number ``index`` (0 = the first chunk)."""
        size = min(float(self.cap), self.first * self.growth ** index)
        whole = int(size) // self.group * self.group
        return max(self.group if self.first >= self.group else self.first, min(self.cap, whole))


def plan_chunks(n_available: int, n_emitted: int, final: bool, policy: ChunkPolicy | None = None) -> int | None:
    """Tokens to release now as the next chunk, or None to wait.

    ``n_available``: generated tokens received so far; ``n_emitted``: tokens already released in
    chunks; ``final``: no more tokens will come. Pure: the schedule position is recovered from
    ``n_emitted`` (the chunk index is the number of whole schedule hops that fit into it).
    Call repeatedly until it returns None; released chunks then cover every token exactly once.
    """
    policy = policy or ChunkPolicy()
    if n_emitted < 0 or n_available < n_emitted:
        raise ValueError(f"bad counts: {n_emitted} emitted of {n_available} available")
    remaining = n_available - n_emitted
    if remaining == 0:
        return None
    if final:
        return remaining
    start, index = 0, 0
    while start + policy.hop(index) <= n_emitted:
        start += policy.hop(index)
        index += 1
    size = policy.hop(index)
    return size if remaining >= size + policy.lookahead else None
