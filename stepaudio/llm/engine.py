"""A continuous-batching generation engine for Step-1 models (one model instance, many streams).

Requests join and leave the running batch between decode steps. A new request first reuses the
longest cached K/V prefix (see prefix_cache.py) and prefills only the rest of its prompt; then all
running sequences decode together, one token per step, in one batched forward over their K/V, kept
in preallocated slots (slot_kv.py). Cancelled requests leave at the next step boundary and their
K/V are freed.

The engine is synchronous and single-threaded (``step()``); ``AsyncEngine`` runs it in a thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from stepaudio.llm.model import LayerCache, Step1ForCausalLM
from stepaudio.llm.prefix_cache import PrefixCache
from stepaudio.llm.sampling import SamplingParams, sample_rows
from stepaudio.llm.slot_kv import SlotKV


class RequestError(ValueError):
    """A request the engine cannot take; the message names the problem."""


@dataclass
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class TokenEvent:
    request_id: str
    token_id: int | None  # None on a final event without a new token
    finished: bool = False
    finish_reason: str | None = None  # stop | length | cancelled | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    error: str | None = None


@dataclass
class _Seq:
    req: GenerationRequest
    tokens: list[int]
    generator: torch.Generator | None
    slot: int | None = None  # where its K/V (of tokens[:kv_len]) are in the engine's SlotKV; None: none yet / freed
    kv_len: int = 0
    generated: int = 0
    cached_prompt_tokens: int = 0
    t_arrival_s: float = 0.0
    t_first_token_s: float | None = None
    done: bool = False


@dataclass
class EngineStats:
    steps: int = 0
    prefill_tokens: int = 0
    cached_prompt_tokens: int = 0
    decode_tokens: int = 0
    max_batch: int = 0


class Engine:
    def __init__(
        self,
        model: Step1ForCausalLM,
        max_batch_size: int = 16,
        prefix_cache_tokens: int = 65536,
        block_size: int = 16,
        prefix_reuse: bool = True,
    ):
        self.model = model
        self.cfg = model.config
        self.max_batch_size = max_batch_size
        self.prefix_reuse = prefix_reuse
        self.cache = PrefixCache(block_size, prefix_cache_tokens if prefix_reuse else 0)
        self.device = next(model.parameters()).device
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self.stats = EngineStats()
        dtype = next(model.parameters()).dtype
        self.kv = SlotKV(self.cfg.num_hidden_layers, model.n_local_groups, self.cfg.head_dim, max_batch_size, dtype,
                         self.device)

    # -- requests ---------------------------------------------------------------------------
    def validate(self, req: GenerationRequest) -> None:
        req.params.validate()
        ids = req.prompt_ids
        if not ids:
            raise RequestError("empty prompt")
        if len(ids) >= self.cfg.max_seq_len:
            raise RequestError(
                f"prompt of {len(ids)} tokens does not fit the model's context of {self.cfg.max_seq_len} tokens"
            )
        bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise RequestError(f"token ids outside the vocabulary [0, {self.cfg.vocab_size}): {bad[:5]}")
        columns = self.model.output_columns
        if columns is not None and not all(t in columns for t in req.params.stop_ids):
            raise RequestError(f"stop ids {list(req.params.stop_ids)} are not all among this model's output ids")

    def add(self, req: GenerationRequest) -> None:
        self.validate(req)
        gen = None
        if req.params.seed is not None:
            gen = torch.Generator().manual_seed(int(req.params.seed))
        with self._lock:
            if any(s.req.request_id == req.request_id for s in (*self._waiting, *self._running)):
                raise RequestError(f"request id {req.request_id!r} is already active")
            self._cancelled.discard(req.request_id)
            self._waiting.append(_Seq(req, list(req.prompt_ids), gen, t_arrival_s=time.perf_counter()))

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.add(request_id)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    @property
    def num_running(self) -> int:
        return len(self._running)

    # -- the loop ---------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        events = self._drop_cancelled()
        admitted = []
        with self._lock:
            while self._waiting and len(self._running) + len(admitted) < self.max_batch_size:
                admitted.append(self._waiting.popleft())
        decoding = list(self._running)  # in slots 0..n-1
        for i, seq in enumerate(admitted):
            events += self._prefill(seq, len(decoding) + i)
        if decoding:
            events += self._decode(decoding)
        self._running = [s for s in self._running + admitted if not self._is_done(s)]
        self._compact()
        self.stats.steps += 1
        self.stats.max_batch = max(self.stats.max_batch, len(self._running))
        return events

    def _compact(self) -> None:
        """Running sequences back in slots 0..n-1, in batch order (a finished one's slot is taken by the next)."""
        for i, seq in enumerate(self._running):
            if seq.slot != i:
                self.kv.move(seq.slot, i)
                seq.slot = i
        for slot in range(len(self._running), self.kv.slots):
            if self.kv.lengths[slot]:
                self.kv.free(slot)
        self.kv.shrink(len(self._running))

    def _drop_cancelled(self) -> list[TokenEvent]:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            if not cancelled:
                return []
            dropped = [s for s in (*self._waiting, *self._running) if s.req.request_id in cancelled]
            self._waiting = deque(s for s in self._waiting if s.req.request_id not in cancelled)
            self._running = [s for s in self._running if s.req.request_id not in cancelled]
        events = [self._final(s, "cancelled") for s in dropped]
        self._compact()
        return events

    def _prefill(self, seq: _Seq, slot: int) -> list[TokenEvent]:
        prompt = seq.tokens
        n_cached, k, v = (0, None, None)
        if self.prefix_reuse:
            # at least the last prompt token is recomputed: its logits pick the first new token
            n_cached, k, v = self.cache.lookup(prompt, max_tokens=len(prompt) - 1)
        suffix = prompt[n_cached:]
        ids = torch.tensor([suffix], dtype=torch.long, device=self.device)
        pos = torch.arange(n_cached, len(prompt), device=self.device)[None]
        caches = cache_pos = None
        if n_cached:
            caches = [LayerCache(k[i][None], v[i][None]) for i in range(len(k))]
            cache_pos = torch.arange(n_cached, device=self.device)[None]
        out = self.model(ids, pos, caches, cache_pos, logits_for="last")
        self.kv.put(slot, [torch.cat([k[i], nk[0]], dim=1) if n_cached else nk[0] for i, nk in enumerate(out.new_k)],
                    [torch.cat([v[i], nv[0]], dim=1) if n_cached else nv[0] for i, nv in enumerate(out.new_v)])
        seq.slot, seq.kv_len = slot, len(prompt)
        seq.cached_prompt_tokens = n_cached
        self.stats.prefill_tokens += len(suffix)
        self.stats.cached_prompt_tokens += n_cached
        if self.prefix_reuse:
            self.cache.insert(prompt, *self.kv.get(slot))
        return self._accept([seq], out.logits[:, -1])

    def _decode(self, seqs: list[_Seq]) -> list[TokenEvent]:
        b = len(seqs)  # in slots 0..b-1
        ids = torch.tensor([[s.tokens[-1]] for s in seqs], dtype=torch.long, device=self.device)
        pos = torch.tensor([[s.kv_len] for s in seqs], dtype=torch.long, device=self.device)
        caches, key_pos = self.kv.step(b)  # the layers write the new K/V into the slots as they go
        out = self.model(ids, pos, caches, logits_for="last", key_positions=key_pos)
        for s in seqs:
            s.kv_len += 1
        self.stats.decode_tokens += b
        return self._accept(seqs, out.logits[:, -1])

    def _accept(self, seqs: list[_Seq], logits: torch.Tensor) -> list[TokenEvent]:
        """Samples one token per sequence from (B, V) logits, all rows at once."""
        tokens = sample_rows(logits, [s.req.params for s in seqs], [s.tokens for s in seqs],
                             [s.generator for s in seqs], self.model.output_columns)
        events = []
        for seq, token in zip(seqs, tokens, strict=True):
            events += self._take(seq, token)
        return events

    def _take(self, seq: _Seq, token: int) -> list[TokenEvent]:
        p = seq.req.params
        if seq.t_first_token_s is None:
            seq.t_first_token_s = time.perf_counter()
        if token in p.stop_ids:
            return [self._final(seq, "stop")]
        seq.tokens.append(token)
        seq.generated += 1
        ev = TokenEvent(seq.req.request_id, token, prompt_tokens=len(seq.req.prompt_ids),
                        completion_tokens=seq.generated, cached_prompt_tokens=seq.cached_prompt_tokens)
        if seq.generated >= p.max_new_tokens or len(seq.tokens) >= self.cfg.max_seq_len:
            ev.finished, ev.finish_reason = True, "length"
            self._finish(seq)
        return [ev]

    def _final(self, seq: _Seq, reason: str) -> TokenEvent:
        self._finish(seq)
        return TokenEvent(seq.req.request_id, None, True, reason, len(seq.req.prompt_ids), seq.generated,
                          seq.cached_prompt_tokens)

    def _finish(self, seq: _Seq) -> None:
        if self.prefix_reuse and seq.slot is not None and seq.generated:
            self.cache.insert(seq.tokens, *self.kv.get(seq.slot))  # the reply's K/V serve the next turn
        seq.slot = None  # the slot is freed or taken over at the step's end
        seq.done = True

    @staticmethod
    def _is_done(seq: _Seq) -> bool:
        return seq.done

    # -- convenience ------------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], params: SamplingParams | None = None) -> list[int]:
        """Run one request to completion (no other traffic); returns the new token ids."""
        rid = f"gen-{time.monotonic_ns()}"
        self.add(GenerationRequest(rid, list(prompt_ids), params or SamplingParams(temperature=0)))
        out: list[int] = []
        while True:
            for ev in self.step():
                if ev.request_id != rid:
                    continue
                if ev.token_id is not None:
                    out.append(ev.token_id)
                if ev.finished:
                    return out
