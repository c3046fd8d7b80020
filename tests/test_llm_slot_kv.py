"""The engine's slot K/V buffers, and the engine over them when sequences join, leave and outgrow the buffers."""

import torch

from stepaudio.llm.engine import Engine, GenerationRequest
from stepaudio.llm.sampling import SamplingParams
from stepaudio.llm.slot_kv import MIN_CAPACITY, SlotKV
from tests.llm_helpers import tiny_model


def _kv(seed, g, t, d):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(g, t, d, generator=gen) for _ in range(2)], [torch.randn(g, t, d, generator=gen) for _ in range(2)]


def _append(kv, n, new_k, new_v):
    """A decode step's K/V writes, as the model's layers make them: the views and key positions they attend to."""
    layers, key_pos = kv.step(n)
    views = [layer.extend(k, v) for layer, k, v in zip(layers, new_k, new_v, strict=True)]
    return [k for k, _ in views], [v for _, v in views], key_pos


def test_put_step_move_and_free():
    kv = SlotKV(n_layers=2, groups=3, head_dim=4, slots=3, dtype=torch.float32)
    k0, v0 = _kv(0, 3, 5, 4)
    k1, v1 = _kv(1, 3, 2, 4)
    kv.put(0, k0, v0)
    kv.put(1, k1, v1)
    new_k = [torch.randn(2, 3, 1, 4) for _ in range(2)]
    new_v = [torch.randn(2, 3, 1, 4) for _ in range(2)]
    ks, vs, pos = _append(kv, 2, new_k, new_v)
    assert kv.lengths[:2] == [6, 3]
    assert ks[0].shape == (2, 3, 6, 4)
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, -1, -1, -1]]  # a shorter slot's new key at its length
    for layer in range(2):
        torch.testing.assert_close(ks[layer][0, :, :5], k0[layer], rtol=0, atol=0)
        torch.testing.assert_close(ks[layer][0, :, 5], new_k[layer][0, :, 0], rtol=0, atol=0)
        torch.testing.assert_close(vs[layer][1, :, :2], v1[layer], rtol=0, atol=0)
        torch.testing.assert_close(vs[layer][1, :, 2], new_v[layer][1, :, 0], rtol=0, atol=0)
    # Slot 0's sequence leaves; slot 1's takes its place: its K/V and positions, nothing of the old one.
    got_k, _ = kv.get(1)
    expect = [t.clone() for t in got_k]
    kv.move(1, 0)
    assert kv.lengths[:2] == [3, 0]
    moved_k, _ = kv.get(0)
    for a, b in zip(moved_k, expect, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert kv.pos[0, :6].tolist() == [0, 1, 2, -1, -1, -1]
    assert bool((kv.pos[1] == -1).all())


def test_capacity_grows_keeps_values_and_shrinks_back():
    kv = SlotKV(n_layers=1, groups=1, head_dim=2, slots=2, dtype=torch.float32)
    assert kv.capacity == MIN_CAPACITY
    k, v = _kv(2, 1, MIN_CAPACITY - 1, 2)
    kv.put(0, k[:1], v[:1])
    _append(kv, 1, [torch.ones(1, 1, 1, 2)], [torch.ones(1, 1, 1, 2)])
    _append(kv, 1, [2 * torch.ones(1, 1, 1, 2)], [2 * torch.ones(1, 1, 1, 2)])  # past the first capacity
    assert kv.capacity > MIN_CAPACITY and kv.lengths[0] == MIN_CAPACITY + 1
    got_k, _ = kv.get(0)
    torch.testing.assert_close(got_k[0][:, : MIN_CAPACITY - 1], k[0], rtol=0, atol=0)
    assert got_k[0][0, -1].tolist() == [2.0, 2.0]
    assert kv.pos[0, : MIN_CAPACITY + 1].tolist() == list(range(MIN_CAPACITY + 1))
    kv.free(0)
    kv.put(0, *[[t[:, :3]] for t in (k[0], v[0])])
    kv.shrink(in_use=1)
    assert kv.capacity == MIN_CAPACITY
    torch.testing.assert_close(kv.get(0)[0][0], k[0][:, :3], rtol=0, atol=0)


def test_engine_staggered_lengths_cancel_and_growth_equal_solo_runs():
    """Sequences of different lengths finish at different steps (their slots are taken over), one is cancelled
    mid-way, a late one joins, and one grows past the first buffer capacity: every stream gets exactly the
    tokens it gets alone."""
    model = tiny_model()

    def params(n, seed):
        return SamplingParams(temperature=0.9, top_k=40, seed=seed, max_new_tokens=n, stop_ids=())

    prompts = [torch.randint(5, 320, (n,), generator=torch.Generator().manual_seed(s)).tolist()
               for s, n in ((1, 7), (2, 30), (3, 12), (4, 200), (5, 9))]
    lengths = [4, 15, 9, MIN_CAPACITY, 6]
    alone = [Engine(model, prefix_reuse=False).generate(p, params(n, i)) for i, (p, n) in
             enumerate(zip(prompts, lengths, strict=True))]
    assert len(alone[3]) == MIN_CAPACITY and len(prompts[3]) + MIN_CAPACITY > MIN_CAPACITY

    eng = Engine(model, max_batch_size=4, prefix_reuse=False)
    for i in range(4):
        eng.add(GenerationRequest(f"r{i}", prompts[i], params(lengths[i], i)))
    eng.add(GenerationRequest("x", prompts[4], params(50, 99)))  # waits for a slot, then is cancelled
    got = {f"r{i}": [] for i in range(5)}
    got["x"] = []
    step = 0
    while eng.has_work():
        for ev in eng.step():
            if ev.token_id is not None:
                got[ev.request_id].append(ev.token_id)
        step += 1
        if step == 12:
            eng.cancel("x")
            eng.add(GenerationRequest("r4", prompts[4], params(lengths[4], 4)))
    assert [got[f"r{i}"] for i in range(5)] == alone
    assert 0 < len(got["x"]) < 50
    assert eng.kv.capacity == MIN_CAPACITY  # shrunk back once the long one left
    assert eng.kv.lengths == [0] * 4
