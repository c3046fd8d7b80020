"""Loading official-layout Step-1 checkpoints: sharded with an index, single file, bf16/fp32, errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from stepaudio.llm.loader import load_step1, weight_map
from stepaudio.llm.model import TensorParallel
from stepaudio.llm.prefix_cache import PrefixCache
from stepaudio.tokenizer.files import CheckpointError


@pytest.fixture
def chat_dir(tiny_checkpoints, tmp_path):
    dst = tmp_path / "Step-Audio-Chat"
    shutil.copytree(tiny_checkpoints / "Step-Audio-Chat", dst)
    return dst


def _all_tensors(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_sharded_checkpoint_loads_every_tensor_untied(chat_dir):
    files = weight_map(chat_dir)
    assert len(set(files.values())) >= 2  # the tiny Chat checkpoint is sharded like the official one
    model = load_step1(chat_dir, dtype="float32")
    ref = _all_tensors(chat_dir)
    state = model.state_dict()
    assert set(state) == set(ref)
    for name, t in ref.items():
        torch.testing.assert_close(state[name], t.float(), rtol=0, atol=0)
    assert not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])


def test_cpu_load_stores_the_head_column_major(chat_dir):
    model = load_step1(chat_dir, dtype="float32")
    w = model.lm_head.weight
    assert w.stride() == (1, w.shape[0])  # (V, H) values over (H, V) row-major storage
    ref = _all_tensors(chat_dir)["lm_head.weight"].float()
    assert torch.equal(w, ref)
    x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.lm_head(x), x @ ref.t(), rtol=1e-5, atol=1e-5)


def test_bf16_and_single_file(chat_dir, tmp_path):
    assert load_step1(chat_dir).lm_head.weight.dtype == torch.bfloat16  # config torch_dtype
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(chat_dir / "config.json", single / "config.json")
    save_file(_all_tensors(chat_dir), str(single / "model.safetensors"))
    a = load_step1(single, dtype="float32")
    b = load_step1(chat_dir, dtype="float32")
    ids = torch.tensor([[1, 4, 385, 15]])
    torch.testing.assert_close(a(ids, torch.arange(4)[None]).logits, b(ids, torch.arange(4)[None]).logits)


def test_tp_rank_reads_its_slice(chat_dir):
    full = load_step1(chat_dir, dtype="float32")
    r1 = load_step1(chat_dir, dtype="float32", tp=TensorParallel(1, 2))
    q_full = full.model.layers[0].self_attn.q_proj.weight
    q1 = r1.model.layers[0].self_attn.q_proj.weight
    assert q1.shape[0] * 2 == q_full.shape[0]
    torch.testing.assert_close(q1, q_full[q_full.shape[0] // 2 :])
    o1 = r1.model.layers[0].self_attn.o_proj.weight
    torch.testing.assert_close(o1, full.model.layers[0].self_attn.o_proj.weight[:, o1.shape[1] :])


def test_errors_name_the_file(chat_dir):
    index = json.loads((chat_dir / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (chat_dir / victim).unlink()
    with pytest.raises(CheckpointError, match=f"{victim}: shard listed"):
        load_step1(chat_dir)
    (chat_dir / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="weight_map"):
        load_step1(chat_dir)
    (chat_dir / "config.json").write_text(json.dumps({"hidden_size": 48}))
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_step1(chat_dir)


def test_shape_mismatch_and_missing_tensor(chat_dir):
    cfg = json.loads((chat_dir / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (chat_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"has shape .* the config implies"):
        load_step1(chat_dir)
    cfg["intermediate_size"] //= 2
    cfg["num_hidden_layers"] += 1
    (chat_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="tensors missing"):
        load_step1(chat_dir)


def test_prefix_cache_is_bounded_and_evicts_leaves_first():
    cache = PrefixCache(block_size=2, max_tokens=6)  # 3 blocks
    k = [torch.arange(20.0).view(1, 10, 2)]
    cache.insert(list(range(10)), k, k)  # 5 blocks offered, 3 kept
    assert len(cache) == 3
    n, kk, _ = cache.lookup(list(range(10)), max_tokens=10)
    assert n == 6  # the first three blocks (the prefix) survived, the tail was evicted
    torch.testing.assert_close(kk[0], k[0][:, :6])
    assert cache.lookup([9, 9, 9, 9], 4)[0] == 0
