"""A restricted output head (``Step1ForCausalLM.restrict_head``): logits for some ids only.

The TTS LM's ``output_vocab=audio`` keeps the audio ids and the stop id. It must sample only kept ids,
give the same ids as the full head whenever top-k never reaches past them (here: a model whose other
rows are zero, as the benchmarks' ``audio_only`` variant), and refuse what it cannot serve.
"""

import copy

import pytest
import torch

from stepaudio.llm.engine import Engine, GenerationRequest, RequestError
from stepaudio.llm.model import TensorParallel
from stepaudio.llm.prompts import AUDIO_TOKEN_OFFSET, EOT_ID, N_AUDIO_TOKENS, tts_output_ids
from stepaudio.llm.sampling import OutputColumns, SamplingParams, apply_repetition_ban, sample_rows
from tests.llm_helpers import tiny_model

KEPT = [EOT_ID, *range(200, 300)]  # the stop id and a block of "audio" ids of the 320-id tiny vocabulary


def _zero_other_rows(model, kept):
    mask = torch.ones(model.lm_head.weight.shape[0], dtype=torch.bool)
    mask[kept] = False
    with torch.no_grad():
        model.lm_head.weight[mask] = 0.0
        model.lm_head.weight[kept] *= 20  # kept logits well above 0, so top-k stays inside them
    return model


def _generate(model, prompts, params):
    eng = Engine(model, prefix_reuse=False)
    for i, p in enumerate(prompts):
        eng.add(GenerationRequest(f"r{i}", p, params(i)))
    out = {f"r{i}": [] for i in range(len(prompts))}
    while eng.has_work():
        for ev in eng.step():
            if ev.token_id is not None:
                out[ev.request_id].append(ev.token_id)
    return out


def test_tts_output_ids_are_the_audio_ids_and_the_stop_id():
    ids = tts_output_ids()
    assert ids[0] == EOT_ID and len(ids) == N_AUDIO_TOKENS + 1
    assert ids[1:] == list(range(AUDIO_TOKEN_OFFSET, AUDIO_TOKEN_OFFSET + N_AUDIO_TOKENS))


def test_same_ids_as_the_full_head_when_top_k_stays_inside():
    full = _zero_other_rows(tiny_model(seed=3), KEPT)
    restricted = copy.deepcopy(full)
    restricted.restrict_head(KEPT)
    prompts = [[1, 4, *range(200 + i, 230 + i)] for i in range(4)]

    def tts(i):
        return SamplingParams.for_tts(max_new_tokens=40, seed=i)  # top_k 50, temperature 0.7, repetition ban

    a, b = _generate(full, prompts, tts), _generate(restricted, prompts, tts)
    assert a == b
    assert sum(len(v) for v in a.values()) >= 60, a  # enough draws for the comparison to mean something
    assert {t for v in b.values() for t in v} <= set(KEPT)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_new_tokens=30, stop_ids=(EOT_ID,)),  # greedy
    SamplingParams(temperature=1.0, top_k=0, top_p=0.9, max_new_tokens=30, seed=1),  # whole-row path
    SamplingParams.for_tts(max_new_tokens=30, seed=2),
])
def test_only_kept_ids_are_drawn_from_a_random_model(params):
    model = tiny_model(seed=5)  # every row random: the full head would draw ids outside KEPT
    model.restrict_head(KEPT)
    out = _generate(model, [[1, 4, 7, 9, 11]], lambda i: params)["r0"]
    assert out and set(out) <= set(KEPT)


def test_repetition_ban_hits_the_column_of_the_repeated_id():
    cols = OutputColumns([3, 10, 250, 7])
    assert cols.ids.tolist() == [3, 7, 10, 250] and cols.column(250) == 3 and cols.column(11) is None
    logits = torch.zeros(4)
    apply_repetition_ban(logits, [250] * 10, 10, 0.1, cols)
    assert logits.tolist() == [0, 0, 0, float("-inf")]
    logits = torch.zeros(4)
    apply_repetition_ban(logits, [11] * 10, 10, 0.1, cols)  # not a column: nothing to ban
    assert torch.isfinite(logits).all()
    picks = sample_rows(torch.tensor([[0.0, 5.0, 1.0, 9.0]]), [SamplingParams(temperature=0, repetition_window=2)],
                        [[250, 250]], [None], cols)
    assert picks == [7]  # 250 banned, next best column 1 -> id 7


def test_head_keeps_values_and_layout():
    model = tiny_model(seed=1)
    ref = model.lm_head.weight.detach().clone()
    ids, pos = torch.tensor([[1, 5, 9]]), torch.arange(3)[None]
    full_logits = model(ids, pos).logits
    model.column_major_head()
    model.restrict_head(KEPT)
    w = model.lm_head.weight
    assert w.shape == (len(KEPT), ref.shape[1]) and model.lm_head.out_features == len(KEPT)
    assert w.stride() == (1, len(KEPT))  # still column-major
    assert torch.equal(w, ref[sorted(KEPT)])
    torch.testing.assert_close(model(ids, pos).logits, full_logits[..., sorted(KEPT)], rtol=1e-5, atol=1e-5)


def test_refusals():
    model = tiny_model(seed=2)
    with pytest.raises(ValueError, match="output ids must be in"):
        model.restrict_head([3, 320])
    with pytest.raises(ValueError, match="at least one"):
        model.restrict_head([])
    model.restrict_head(KEPT)
    with pytest.raises(ValueError, match="already restricted"):
        model.restrict_head(KEPT)
    with pytest.raises(RequestError, match="stop ids"):
        Engine(model).add(GenerationRequest("x", [1, 4, 5], SamplingParams(stop_ids=(2,))))
    with pytest.raises(ValueError, match="tensor parallelism"):
        tiny_model(seed=2, tp=TensorParallel(0, 2)).restrict_head(KEPT)
