"""K/V of the running sequences in preallocated per-layer buffers, one slot per sequence.

Slots 0..n-1 hold the n running sequences in batch order, so a decode step reads the batch's K/V and
positions as views and writes each sequence's new K/V in place, from inside the model's attention
(``step``): no per-step, per-sequence copies or concatenations (on a small model those were ~20% of a
decode step, and concatenating the past with the new keys another ~10%). Buffers are laid out (slot,
group, time, dim): a batch's view then has one stride over (slot, group), which a batched matmul takes
as it is (a (time, group) layout made matmul copy the view every step), and one ``index_copy_`` over the
flattened (slot, group, time) rows appends a token to every slot. A slot's positions past its length
are -1 (padding, never attended to). The time capacity is shared by all slots; it grows to fit the
longest sequence and shrinks back once no sequence needs it.
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
        shape = (self.slots, self.groups, capacity, self.head_dim)
        k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        pos = torch.full((self.slots, capacity), -1, dtype=torch.long, device=self.device)
        if keep:
            for layer in range(self.n_layers):
                k[layer][:, :, :keep] = self.k[layer][:, :, :keep]
                v[layer][:, :, :keep] = self.v[layer][:, :, :keep]
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
            self.k[layer][slot, :, :n] = k[layer]
            self.v[layer][slot, :, :n] = v[layer]
        old = self.lengths[slot]
        self.pos[slot, :n] = torch.arange(n, device=self.device)
        if old > n:
            self.pos[slot, n:old] = -1
        self.lengths[slot] = n

    def get(self, slot: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Views of a slot's K/V, per layer (G, T, D); valid until the slot is changed."""
        n = self.lengths[slot]
        return [t[slot, :, :n] for t in self.k], [t[slot, :, :n] for t in self.v]

    def step(self, n: int) -> tuple[list[_SlotLayer], torch.Tensor]:
        """A decode step of slots 0..n-1, one new token each: per-layer caches for the model, whose ``extend``
        writes the token's K/V after each slot's and returns the batch's K/V views, and the key positions
        (n, T + 1), T the longest length (a shorter slot's new key sits at its length, padding after it).
        The slots' lengths count the new token from here on."""
        t = max(self.lengths[:n])
        self.reserve(t + 1)
        at = torch.tensor(self.lengths[:n], dtype=torch.long, device=self.device)
        cap = self.capacity
        self.pos.view(-1).index_copy_(0, torch.arange(0, n * cap, cap, device=self.device) + at, at)
        # the new token's rows of the flattened (slot, group, time) K/V, slot-major then group
        slot_group = torch.arange(n * self.groups, device=self.device).view(n, self.groups)
        rows = (slot_group * cap + at[:, None]).view(-1)
        for i in range(n):
            self.lengths[i] += 1
        layers = [_SlotLayer(self, layer, n, t + 1, rows) for layer in range(self.n_layers)]
        return layers, self.pos[:n, : t + 1]

    def move(self, src: int, dst: int) -> None:
        """Slot ``src``'s sequence moves to slot ``dst`` (whose sequence is gone); ``src`` becomes free."""
        n = self.lengths[src]
        for layer in range(self.n_layers):
            self.k[layer][dst, :, :n] = self.k[layer][src, :, :n]
            self.v[layer][dst, :, :n] = self.v[layer][src, :, :n]
        old = self.lengths[dst]
        self.pos[dst, :n] = self.pos[src, :n]
        if old > n:
            self.pos[dst, n:old] = -1
        self.lengths[dst] = n
        self.free(src)

    def free(self, slot: int) -> None:
        self.pos[slot, : self.lengths[slot]] = -1
        self.lengths[slot] = 0


class _SlotLayer:
    """One layer's view of a decode step (see ``SlotKV.step``), in the role of ``LayerCache``."""

    def __init__(self, kv: SlotKV, layer: int, n: int, t: int, rows: torch.Tensor):
        self.kv, self.layer, self.n, self.t, self.rows = kv, layer, n, t, rows

    def extend(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.kv.head_dim
        k, v = self.kv.k[self.layer], self.kv.v[self.layer]
        k.view(-1, d).index_copy_(0, self.rows, k_new.reshape(-1, d).to(k.dtype))  # (n, G, 1, D) -> n * G rows
        v.view(-1, d).index_copy_(0, self.rows, v_new.reshape(-1, d).to(v.dtype))
        return k[: self.n, :, : self.t], v[: self.n, :, : self.t]
