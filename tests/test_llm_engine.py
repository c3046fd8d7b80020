import asyncio

import pytest
import torch

from stepaudio.llm.async_engine import AsyncEngine
from stepaudio.llm.engine import Engine, GenerationRequest, RequestError
from stepaudio.llm.sampling import SamplingError, SamplingParams, apply_repetition_ban, sample
from tests.llm_helpers import tiny_model

GREEDY = SamplingParams(temperature=0, max_new_tokens=12, stop_ids=())


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _prompt(seed, n):
    return torch.randint(5, 320, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _full_greedy(model, prompt, n):
    """Greedy decoding by full recomputation at every step (no K/V cache)."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            t = torch.tensor([ids])
            ids.append(int(model(t, torch.arange(len(ids))[None]).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_cached_decoding_equals_full_recompute(model):
    p = _prompt(1, 21)
    assert Engine(model, prefix_reuse=False).generate(p, GREEDY) == _full_greedy(model, p, 12)


def test_batched_equals_unbatched_and_prefix_hit_equals_miss(model):
    prompts = [_prompt(s, n) for s, n in ((2, 5), (3, 40), (4, 17), (5, 33))]
    alone = [Engine(model, prefix_reuse=False).generate(p, GREEDY) for p in prompts]
    eng = Engine(model, max_batch_size=4, block_size=8)
    for i, p in enumerate(prompts):
        eng.add(GenerationRequest(f"r{i}", p, GREEDY))
    got = {f"r{i}": [] for i in range(4)}
    while eng.has_work():
        for ev in eng.step():
            if ev.token_id is not None:
                got[ev.request_id].append(ev.token_id)
    assert eng.stats.max_batch == 4
    assert [got[f"r{i}"] for i in range(4)] == alone
    # The same prompts again: whole blocks come from the cache, results are unchanged.
    before = eng.stats.cached_prompt_tokens
    assert [eng.generate(p, GREEDY) for p in prompts] == alone
    assert eng.stats.cached_prompt_tokens - before >= 8 * (0 + 4 + 2 + 4)


def test_prefix_cache_logits_match_recompute(model):
    eng = Engine(model, block_size=4)
    history = _prompt(6, 30)
    reply = eng.generate(history, GREEDY)
    follow = history + reply + _prompt(7, 9)  # the next turn shares history + reply
    n0 = eng.stats.cached_prompt_tokens
    cached = eng.generate(follow, GREEDY)
    assert eng.stats.cached_prompt_tokens - n0 >= 36  # history and most of the reply were reused
    assert cached == Engine(model, prefix_reuse=False).generate(follow, GREEDY)


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(model):
    p = _prompt(8, 10)
    assert Engine(model).generate(p, GREEDY) == Engine(model).generate(p, GREEDY)
    sp = SamplingParams(temperature=1.0, top_k=40, top_p=0.9, seed=123, max_new_tokens=20, stop_ids=())
    a = Engine(model).generate(p, sp)
    assert a == Engine(model).generate(p, sp)
    assert a != Engine(model).generate(p, SamplingParams(**{**sp.__dict__, "seed": 124}))


def test_stop_and_length(model):
    p = _prompt(9, 10)
    first = Engine(model).generate(p, GREEDY)[0]
    eng = Engine(model)
    eng.add(GenerationRequest("a", p, SamplingParams(temperature=0, stop_ids=(first,))))
    [ev] = eng.step()
    assert ev.finished and ev.finish_reason == "stop" and ev.token_id is None
    eng.add(GenerationRequest("b", p, SamplingParams(temperature=0, max_new_tokens=3, stop_ids=())))
    evs = []
    while eng.has_work():
        evs += eng.step()
    assert len(evs) == 3 and evs[-1].finish_reason == "length" and evs[-1].completion_tokens == 3


def test_context_limit_and_bad_requests(model):
    eng = Engine(model)
    with pytest.raises(RequestError, match="context of 512"):
        eng.add(GenerationRequest("x", [5] * 512))
    with pytest.raises(RequestError, match="empty prompt"):
        eng.add(GenerationRequest("x", []))
    with pytest.raises(RequestError, match="outside the vocabulary"):
        eng.add(GenerationRequest("x", [5, 999]))
    with pytest.raises(SamplingError, match="top_p"):
        eng.add(GenerationRequest("x", [5], SamplingParams(top_p=0)))
    with pytest.raises(SamplingError, match="temperature"):
        eng.add(GenerationRequest("x", [5], SamplingParams(temperature=-1)))
    # generation stops at the context end
    eng.add(GenerationRequest("y", [5] * 505, SamplingParams(temperature=0, max_new_tokens=100, stop_ids=())))
    evs = []
    while eng.has_work():
        evs += eng.step()
    assert evs[-1].finish_reason == "length" and evs[-1].completion_tokens == 7


def test_cancel_frees_slot_at_once(model):
    eng = Engine(model, max_batch_size=1)
    eng.add(GenerationRequest("a", _prompt(10, 8), SamplingParams(temperature=0, max_new_tokens=100, stop_ids=())))
    eng.add(GenerationRequest("b", _prompt(11, 8), SamplingParams(temperature=0, max_new_tokens=2, stop_ids=())))
    eng.step()
    assert eng.num_running == 1
    eng.cancel("a")
    evs = eng.step()
    assert any(e.request_id == "a" and e.finish_reason == "cancelled" for e in evs)
    assert any(e.request_id == "b" for e in evs)  # b took the freed slot in the same step


def test_repetition_processor_matches_reference_rule():
    logits = torch.zeros(10)
    apply_repetition_ban(logits, [1, 2, 3, 4, 5, 6, 7, 8, 9, 9], 10, 0.1)
    assert logits[9] == float("-inf")
    logits = torch.zeros(10)
    apply_repetition_ban(logits, [1, 2, 3, 4, 5, 6, 7, 8, 0, 9], 10, 0.1)  # once: 0.1 is not > 0.1
    assert torch.isfinite(logits).all()
    logits = torch.zeros(10)
    apply_repetition_ban(logits, [9, 9, 9], 10, 0.1)  # fewer than 10 tokens: no ban
    assert torch.isfinite(logits).all()
    assert sample(torch.tensor([0.0, 5.0, 1.0]), SamplingParams(temperature=0, repetition_window=2),
                  [1, 1], None) == 2


def test_top_k_top_p_restrict_choices():
    logits = torch.tensor([5.0, 4.0, 3.0, 0.0, -1.0])
    g = torch.Generator().manual_seed(0)
    picks = {sample(logits, SamplingParams(top_k=2), [], g) for _ in range(200)}
    assert picks <= {0, 1}
    picks = {sample(logits, SamplingParams(top_p=0.5), [], g) for _ in range(200)}
    assert picks == {0}


def test_async_engine_streams_and_cancels(model):
    aeng = AsyncEngine(Engine(model, max_batch_size=4))

    async def run():
        sp = SamplingParams(temperature=0, max_new_tokens=8, stop_ids=())
        outs = await asyncio.gather(*[
            _collect(aeng, GenerationRequest(f"r{i}", _prompt(20 + i, 6 + i), sp)) for i in range(4)])
        # leaving the iteration early cancels the request in the engine
        gen = aeng.generate(GenerationRequest("long", _prompt(30, 6),
                                              SamplingParams(temperature=0, max_new_tokens=400, stop_ids=())))
        async for _ev in gen:
            break
        await gen.aclose()
        for _ in range(100):
            if not aeng.engine.has_work():
                break
            await asyncio.sleep(0.01)
        return outs

    try:
        outs = asyncio.run(run())
    finally:
        aeng.close()
    assert [len(o) for o in outs] == [8, 8, 8, 8]
    assert not aeng.engine.has_work()
    assert outs[0] == Engine(model).generate(_prompt(20, 6), SamplingParams(temperature=0, max_new_tokens=8,
                                                                            stop_ids=()))


async def _collect(aeng, req):
    return [ev.token_id async for ev in aeng.generate(req) if ev.token_id is not None]


def test_async_engine_batches_hold_min_tokens(model):
    """``generate_batches(req, min_tokens=5)``: every batch but the last holds >= 5 ids, the ids are the
    same as unbatched, and a bad value is refused before anything runs."""
    aeng = AsyncEngine(Engine(model, max_batch_size=4))
    sp = SamplingParams(temperature=0, max_new_tokens=23, stop_ids=())

    async def run():
        batches = [b async for b in aeng.generate_batches(GenerationRequest("b", _prompt(40, 7), sp), min_tokens=5)]
        with pytest.raises(RequestError, match="min_tokens_per_response"):
            await anext(aeng.generate_batches(GenerationRequest("z", _prompt(41, 7), sp), min_tokens=0))
        return batches

    try:
        batches = asyncio.run(run())
    finally:
        aeng.close()
    counts = [sum(ev.token_id is not None for ev in b) for b in batches]
    assert all(c >= 5 for c in counts[:-1]) and batches[-1][-1].finished
    assert sum(counts) == 23
    ids = [ev.token_id for b in batches for ev in b if ev.token_id is not None]
    assert ids == Engine(model).generate(_prompt(40, 7), sp)


def test_min_tokens_per_response_parsing():
    import numpy as np

    from stepaudio.llm.requests import min_tokens_per_response

    assert min_tokens_per_response({}) == 1
    assert min_tokens_per_response({"min_tokens_per_response": np.array([5], np.int32)}) == 5
    for bad in (0, -1, 5000):
        with pytest.raises(RequestError, match=r"min_tokens_per_response must be in 1\.\.1024"):
            min_tokens_per_response({"min_tokens_per_response": np.array([bad], np.int32)})


def test_batched_top_k_draw_equals_a_multinomial_per_row():
    """sample_rows draws each row's token from its own generator as torch.multinomial over the row's top-k
    distribution would (same ids), also with rows of different k, temperature and top-p in one batch, and
    on the whole-vocabulary path (top-k off)."""
    from stepaudio.llm.sampling import sample_rows

    gen = torch.Generator().manual_seed(0)
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, seed=i) for i, (t, k, p) in
              enumerate([(0.7, 50, 1.0), (1.0, 5, 1.0), (1.3, 40, 0.8), (0.5, 1, 1.0), (0.9, 0, 0.7)])]
    for draw in range(30):
        logits = 3 * torch.randn(len(params), 300, generator=gen)
        seeds = [draw * 10 + i for i in range(len(params))]
        got = sample_rows(logits, params, [[] for _ in params], [torch.Generator().manual_seed(s) for s in seeds])
        expect = []
        for row, p, s in zip(logits, params, seeds, strict=True):
            vals, idx = torch.topk(row / p.temperature, p.top_k or row.numel())
            probs = torch.softmax(vals, dim=-1)
            if p.top_p < 1.0:
                keep = (probs.cumsum(-1) - probs) <= p.top_p
                probs = torch.softmax(vals.masked_fill(~keep, float("-inf")), dim=-1)
            if not p.top_k:  # the whole vocabulary is drawn from in id order
                probs, idx = torch.zeros_like(row).scatter(0, idx, probs), torch.arange(row.numel())
            expect.append(int(idx[torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(s))]))
        assert got == expect
