"""Block-level prefix cache for K/V.

Without rotary embeddings a token's K/V depend only on the tokens before it (and the absolute
positions, which equal the prefix length), so K/V computed for one request are exact for any other
request that starts with the same tokens. Blocks of ``block_size`` tokens are keyed by a hash chain
over all tokens up to the block's end; lookups return the longest cached run of whole blocks.
Memory is bounded by ``max_tokens`` with least-recently-used eviction.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class _Block:
    k: list[torch.Tensor]  # per layer (G, block_size, D)
    v: list[torch.Tensor]


def _chain(prev: bytes, tokens: list[int]) -> bytes:
    return hashlib.blake2b(prev + np.asarray(tokens, dtype=np.int64).tobytes(), digest_size=16).digest()


class PrefixCache:
    def __init__(self, block_size: int = 16, max_tokens: int = 65536):
        self.block_size = block_size
        self.max_blocks = max(0, max_tokens // block_size)
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()
        self.hits_tokens = 0
        self.lookups = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def cached_tokens(self) -> int:
        return len(self._blocks) * self.block_size

    def lookup(self, tokens: list[int], max_tokens: int) -> tuple[int, list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """Longest cached prefix of at most ``max_tokens`` tokens: (n, k per layer (G, n, D), v)."""
        self.lookups += 1
        bs = self.block_size
        found: list[_Block] = []
        keys: list[bytes] = []
        key = b""
        for i in range(min(len(tokens), max_tokens) // bs):
            key = _chain(key, tokens[i * bs : (i + 1) * bs])
            block = self._blocks.get(key)
            if block is None:
                break
            found.append(block)
            keys.append(key)
        self._touch(keys)
        if not found:
            return 0, None, None
        n_layers = len(found[0].k)
        k = [torch.cat([b.k[layer] for b in found], dim=1) for layer in range(n_layers)]
        v = [torch.cat([b.v[layer] for b in found], dim=1) for layer in range(n_layers)]
        self.hits_tokens += len(found) * bs
        return len(found) * bs, k, v

    def insert(self, tokens: list[int], k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        """Cache the whole blocks of ``tokens`` whose K/V are given (k[layer]: (G, >= n, D))."""
        if self.max_blocks == 0:
            return
        bs = self.block_size
        n = min(len(tokens), k[0].shape[1])
        keys: list[bytes] = []
        key = b""
        for i in range(n // bs):
            key = _chain(key, tokens[i * bs : (i + 1) * bs])
            keys.append(key)
            if key not in self._blocks:
                sl = slice(i * bs, (i + 1) * bs)
                self._blocks[key] = _Block([t[:, sl].clone() for t in k], [t[:, sl].clone() for t in v])
        self._touch(keys)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)

    def _touch(self, keys: list[bytes]) -> None:
        # Children first, so a prefix is always more recent than its continuations: eviction then
        # removes the leaves of the chain before the blocks they depend on.
        for key in reversed(keys):
            self._blocks.move_to_end(key)

    def clear(self) -> None:
        self._blocks.clear()
