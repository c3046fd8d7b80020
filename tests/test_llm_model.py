import math

import pytest
import torch

from stepaudio.llm.model import LayerCache, alibi_slopes, attention_bias
from tests.llm_helpers import tiny_model


def _spec_slopes(h):
    n = 2 ** math.floor(math.log2(h))
    s = [2 ** (-8 * i / n) for i in range(1, n + 1)]
    s += [2 ** (-4 * k / n) for k in range(1, 2 * (h - n), 2)]
    return s


@pytest.mark.parametrize("heads", [96, 48, 6, 8, 12])
def test_alibi_slopes_match_spec_formula(heads):
    torch.testing.assert_close(alibi_slopes(heads), torch.tensor(_spec_slopes(heads)), rtol=1e-6, atol=0)


def test_96_and_48_head_slope_lists():
    s96 = alibi_slopes(96)
    assert torch.allclose(s96[:64], torch.tensor([2 ** (-i / 8) for i in range(1, 65)]))
    assert torch.allclose(s96[64:], torch.tensor([2 ** (-k / 16) for k in range(1, 64, 2)]))
    s48 = alibi_slopes(48)
    assert torch.allclose(s48[:32], torch.tensor([2 ** (-i / 4) for i in range(1, 33)]))
    assert torch.allclose(s48[32:], torch.tensor([2 ** (-k / 8) for k in range(1, 32, 2)]))


def test_sqrt_alibi_bias():
    pos = torch.arange(4)[None]
    b = attention_bias(pos, pos, torch.tensor([0.5]))[0, 0]
    assert b[3, 0] == pytest.approx(-0.5 * math.sqrt(3))
    assert b[2, 2] == 0
    assert torch.isinf(b[0, 1]) and b[0, 1] < 0


def _reference_forward(model, ids):
    """Naive full-sequence attention written independently of the model's attention code."""
    cfg = model.config
    x = model.model.embed_tokens(ids)
    t = ids.shape[1]
    d = cfg.head_dim
    slopes = alibi_slopes(cfg.num_attention_heads)
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    bias = -slopes[:, None, None] * (i - j).clamp(min=0).float().sqrt()
    bias = bias.masked_fill(j > i, float("-inf"))
    rep = cfg.num_attention_heads // cfg.num_attention_groups
    for layer in model.model.layers:
        a = layer.self_attn
        h = layer.input_layernorm(x)
        q = a.q_proj(h).view(1, t, -1, d).transpose(1, 2)
        k = a.k_proj(h).view(1, t, -1, d).transpose(1, 2)
        v = a.v_proj(h).view(1, t, -1, d).transpose(1, 2)
        k = torch.stack([k[:, hh // rep] for hh in range(cfg.num_attention_heads)], 1)
        v = torch.stack([v[:, hh // rep] for hh in range(cfg.num_attention_heads)], 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, -1) @ v
        x = x + a.o_proj(att.transpose(1, 2).reshape(1, t, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x))


@torch.inference_mode()
def test_forward_matches_naive_reference():
    model = tiny_model()
    ids = torch.randint(0, 320, (1, 23), generator=torch.Generator().manual_seed(1))
    out = model(ids, torch.arange(23)[None])
    torch.testing.assert_close(out.logits, _reference_forward(model, ids), rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_incremental_decoding_equals_full_recompute():
    model = tiny_model()
    ids = torch.randint(0, 320, (1, 30), generator=torch.Generator().manual_seed(2))
    full = model(ids, torch.arange(30)[None]).logits
    out = model(ids[:, :10], torch.arange(10)[None])
    k, v = out.new_k, out.new_v
    steps = [out.logits]
    for t in range(10, 30):
        caches = [LayerCache(k[i], v[i]) for i in range(len(k))]
        o = model(ids[:, t : t + 1], torch.tensor([[t]]), caches, torch.arange(t)[None])
        k = [torch.cat([k[i], o.new_k[i]], 2) for i in range(len(k))]
        v = [torch.cat([v[i], o.new_v[i]], 2) for i in range(len(v))]
        steps.append(o.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_padding_does_not_change_results():
    model = tiny_model()
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(3))
    alone = model(ids, torch.arange(12)[None]).logits
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    padded_pos = torch.cat([torch.arange(12), torch.full((5,), -1)])[None]
    out = model(padded_ids, padded_pos).logits[:, :12]
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(model(padded_ids, padded_pos).logits).all()
