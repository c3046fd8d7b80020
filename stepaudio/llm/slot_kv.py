"""K/V of the running sequences in preallocated per-layer buffers, one slot per sequence.

Slots 0..n-1 hold the n running sequences in batch order, so a decode step reads the batch's K/V and
positions as views (``batch``) and writes each sequence's new K/V in place (``append``): no per-step,
per-sequence copies or concatenations (on a small model those were ~20% of a decode step). Buffers are
laid out (slot, time, group, dim), so one ``index_copy_`` over the flattened (slot, time) rows appends a
token to every slot; ``batch`` and ``get`` hand out (group, time) transposed views. A slot's
positions past its length are -1 (padding, never attended to). The time capacity is shared by all
slots; it grows to fit the longest sequence and shrinks back once no sequence needs it.
"""

from __future__ import annotations

import torch

MIN_CAPACITY = 256  # tokens; capacities are multiples of this


def _round_up(n: int) -> int:
    return max(MIN_CAPACITY, -(-n // MIN_CAPACITY) * MIN_CAPACITY)


class SlotKV:
    def __init__(self, n_layers: int, groups: int, head_dim: int, slots: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        self.n_layers, self.groups, self.head_dim, self.slots = n_layers, groups, head_dim, slots
        self.dtype, self.device = dtype, torch.device(device)
        self.lengths = [0] * slots  # valid tokens per slot
        self._alloc(MIN_CAPACITY)

    @property
    def capacity(self) -> int:
        return self.pos.shape[1]

    def _alloc(self, capacity: int, keep: int = 0) -> None:
        """New buffers of ``capacity`` tokens, keeping each slot's first ``keep`` tokens."""
        shape = (self.slots, capacity, self.groups, self.head_dim)
        k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        pos = torch.full((self.slots, capacity), -1, dtype=torch.long, device=self.device)
        if keep:
            for layer in range(self.n_layers):
                k[layer][:, :keep] = self.k[layer][:, :keep]
                v[layer][:, :keep] = self.v[layer][:, :keep]
            pos[:, :keep] = self.pos[:, :keep]
        self.k, self.v, self.pos = k, v, pos

    def reserve(self, tokens: int) -> None:
        """Room for ``tokens`` tokens in every slot."""
        if tokens > self.capacity:
            self._alloc(_round_up(max(tokens, self.capacity * 3 // 2)), keep=max(self.lengths))

    def shrink(self, in_use: int) -> None:
        """Gives memory back when the slots 0..in_use-1 fit in a smaller capacity with room to double."""
        longest = max(self.lengths[:in_use], default=0)
        if _round_up(2 * longest + 1) < self.capacity:
            self._alloc(_round_up(2 * longest + 1), keep=longest)

    def put(self, slot: int, k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        """Slot ``slot`` now holds one sequence's K/V: per layer (G, T, D), positions 0..T-1."""
        n = k[0].shape[1]
        self.reserve(n)
        for layer in range(self.n_layers):
            self.k[layer][slot, :n] = k[layer].transpose(0, 1)
            self.v[layer][slot, :n] = v[layer].transpose(0, 1)
        old = self.lengths[slot]
        self.pos[slot, :n] = torch.arange(n, device=self.device)
        if old > n:
            self.pos[slot, n:old] = -1
        self.lengths[slot] = n

    def get(self, slot: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Views of a slot's K/V, per layer (G, T, D); valid until the slot is changed."""
        n = self.lengths[slot]
        return [t[slot, :n].transpose(0, 1) for t in self.k], [t[slot, :n].transpose(0, 1) for t in self.v]

    def batch(self, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Slots 0..n-1 as a batch: per layer K and V views (n, G, T, D) and positions (n, T), T the longest length."""
        t = max(self.lengths[:n])
        return ([x[:n, :t].transpose(1, 2) for x in self.k], [x[:n, :t].transpose(1, 2) for x in self.v],
                self.pos[:n, :t])

    def append(self, n: int, new_k: list[torch.Tensor], new_v: list[torch.Tensor]) -> None:
        """One new token for each of slots 0..n-1 (per layer (n, G, 1, D)), written after each slot's K/V."""
        self.reserve(max(self.lengths[:n]) + 1)
        at = torch.tensor(self.lengths[:n], dtype=torch.long, device=self.device)
        flat = torch.arange(0, n * self.capacity, self.capacity, device=self.device) + at  # rows of (slot, time)
        for layer in range(self.n_layers):
            self.k[layer].view(-1, self.groups, self.head_dim).index_copy_(0, flat, new_k[layer][:, :, 0])
            self.v[layer].view(-1, self.groups, self.head_dim).index_copy_(0, flat, new_v[layer][:, :, 0])
        self.pos.view(-1).index_copy_(0, flat, at)
        for i in range(n):
            self.lengths[i] += 1

    def move(self, src: int, dst: int) -> None:
        """Slot ``src``'s sequence moves to slot ``dst`` (whose sequence is gone); ``src`` becomes free."""
        n = self.lengths[src]
        for layer in range(self.n_layers):
            self.k[layer][dst, :n] = self.k[layer][src, :n]
            self.v[layer][dst, :n] = self.v[layer][src, :n]
        old = self.lengths[dst]
        self.pos[dst, :n] = self.pos[src, :n]
        if old > n:
            self.pos[dst, n:old] = -1
        self.lengths[dst] = n
        self.free(src)

    def free(self, slot: int) -> None:
        self.pos[slot, : self.lengths[slot]] = -1
        self.lengths[slot] = 0
