"""One-shot GPU check: Step-1 on CUDA against CPU, Step-1 speed at the TTS-3B size, full-size flow + HiFT,
and the sqrt-ALiBi attention against a plain reference.

    python3 -m benchmarks.gpu_check --out $OUT                       # a CUDA machine; ~3-4 min on an H200
    python3 -m benchmarks.gpu_check --device cpu --quick --out DIR   # every section at tiny sizes on CPU

Run from the repository root. Needs torch, numpy, safetensors, sentencepiece and pyyaml only (no funasr,
kaldi-native-fbank, tritonclient, librosa, soundfile, onnx or Triton: nothing here imports them).

Sections (each in its own try/except with a time budget, so one failure or a slow part loses nothing
else; the JSON is rewritten after every section):

1. ``correctness``: tiny Step-Audio-TTS-3B and Step-Audio-Chat checkpoints written on the fly
   (``export.tiny.step1``: random bf16 weights, real vocabulary and tokenizer) and loaded with
   ``load_step1`` on the CPU (float32) and on the device (float32 and bfloat16); greedy decoding through the
   ``Engine`` of real prompts (a TTS prompt with a built-in-style speaker, a chat prompt), all requests in
   one batch and the first one alone. Reports whether the token ids equal CPU float32's, the first
   divergence and the CPU's top-2 logit margin there (random tiny models have near-ties), and the max abs
   difference of the prompt's last-position logits. TF32 is off during this section.
2. ``step1_speed``: Step-1 with the ``tts-3b`` dimensions (3.5 B parameters), random bfloat16 weights
   created on the device (no checkpoint file): ``Engine`` decode tokens/s at batch 1, 8, 32 (128-token
   prompts, greedy), the model's forward alone per decode step at the same batches (the engine's
   bookkeeping is the difference), prefill time of 512 and 2048 tokens, and TTFT (``Engine.add`` to the
   first token) at those lengths.
3. ``token2wav``: CosyVoice-300M-25Hz flow + HiFT with the official dimensions and random weights
   (``benchmarks.cosyvoice_full``) on the device, flow in float32 and bfloat16 (HiFT float32): offline
   RTF for 10 s of speech tokens after a 3 s prompt (flow and vocoder split), and streaming RTF through
   ``Token2Wav.session`` (the flow on the device; the stream's vocoder and caches run on the CPU, as
   ``Token2WavStream`` is written); mel difference of the device flow against the CPU float32 flow.
4. ``attention``: one Step-1 attention layer (TTS-3B dims: 48 heads, 4 KV groups) on the device in float32
   and bfloat16, prefill and a decode step over a padded cache, against a float64 reference written
   plainly (K/V repeated per head, bias -slope * sqrt(i - j) with slopes from the ALiBi paper's formula);
   also ``F.scaled_dot_product_attention`` with the same bias. Max abs differences.

Writes ``<out>/gpu_check.json``: device, versions, each section's numbers, errors and seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import hashlib
import importlib.util
import math
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, machine_info, percentiles, write_result

NAME = "gpu_check"
ABSENT_ON_GPU_MACHINE = ("funasr", "kaldi_native_fbank", "tritonclient", "librosa", "soundfile", "pytriton",
                         "torchaudio", "onnx")
SECTIONS = ("correctness", "step1_speed", "token2wav", "attention")
BUDGET_S = {"correctness": 45, "step1_speed": 95, "token2wav": 75, "attention": 25}


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# =================================================================================================
# helpers
# =================================================================================================
class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.t0 = time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _tf32_setters():
    """(set strict, restore) using the legacy flags, or torch's newer fp32_precision settings where the
    legacy ones refuse (torch 2.9+ can reject a mix of the two)."""
    import torch

    b = torch.backends
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prev = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)

        def strict():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b.cuda.matmul.allow_tf32 = False
                b.cudnn.allow_tf32 = False

        def restore():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = prev

        return strict, restore
    except RuntimeError:
        prev_new = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)

        def strict_new():
            b.cuda.matmul.fp32_precision = "ieee"
            b.cudnn.conv.fp32_precision = "ieee"

        def restore_new():
            b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = prev_new

        return strict_new, restore_new


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for matmuls and convolutions (restored afterwards)."""
    strict, restore = _tf32_setters()
    strict()
    try:
        yield
    finally:
        restore()


def tf32_settings() -> dict:
    import torch

    b = torch.backends
    getters = {
        "matmul_allow_tf32": lambda: b.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": lambda: b.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "matmul_fp32_precision": lambda: b.cuda.matmul.fp32_precision,
        "cudnn_conv_fp32_precision": lambda: b.cudnn.conv.fp32_precision,
    }
    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, get in getters.items():
            try:
                value = get()
                out[name] = value if isinstance(value, (bool, str)) else str(value)
            except Exception as exc:  # absent in this torch, or refused
                out[name] = f"unavailable ({type(exc).__name__})"
    return out


def source_digest() -> str:
    """sha256 (16 hex) over the sources this check exercises: identifies the code where git is absent."""
    h = hashlib.sha256()
    for pattern in ("stepaudio/llm/*.py", "stepaudio/tts/**/*.py", "export/tiny/step1.py", "export/tiny/cosyvoice.py",
                    "benchmarks/gpu_check.py", "benchmarks/cosyvoice_full.py", "benchmarks/tts_bench.py"):
        for path in sorted(ROOT.glob(pattern)):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def environment(device: str) -> dict:
    import torch

    env: dict = {
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(), "torch_threads": torch.get_num_threads(),
        "modules_absent": [m for m in ABSENT_ON_GPU_MACHINE if importlib.util.find_spec(m) is None],
        "tf32": tf32_settings(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(device_name=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gb=round(p.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return env


def _empty_cache() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# =================================================================================================
# 1. correctness: tiny Step-1 checkpoints, CPU float32 vs device float32 / bfloat16
# =================================================================================================
def _prompts(kind: str, tok, rng: np.random.Generator) -> list[list[int]]:
    from stepaudio.llm.prompts import AUDIO_TOKEN_OFFSET, build_tts_prompt

    if kind == "tts":
        codes = (AUDIO_TOKEN_OFFSET + rng.integers(0, 5120, 40)).tolist()
        return [
            build_tts_prompt(tok, "(高兴1)你好，今天天气不错。", "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？",
                             codes, "Tingting").ids,
            build_tts_prompt(tok, "Hello, this is a short test sentence.", "A prompt transcript.", codes[:25]).ids,
            build_tts_prompt(tok, "(RAP)我们一起去海边，听海浪唱歌。", "（RAP）我们一起去海边", codes[:30], "Tingting").ids,
        ]
    return [
        tok.encode_chat([{"role": "user", "content": "你好，介绍一下你自己"}]),
        tok.encode_chat([{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "What is the capital of France? Answer in one word."}]),
        tok.encode_chat([{"role": "user", "content": "Count from one to five."},
                         {"role": "assistant", "content": "one two three four five"},
                         {"role": "user", "content": "Now backwards."}]),
    ]


def _greedy(model, prompts: list[list[int]], new_tokens: int, batched: bool) -> list[list[int]]:
    from stepaudio.llm.engine import Engine, GenerationRequest
    from stepaudio.llm.sampling import SamplingParams

    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, stop_ids=())
    engine = Engine(model, max_batch_size=len(prompts) if batched else 1)
    out: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    for i, p in enumerate(prompts):
        engine.add(GenerationRequest(f"r{i}", list(p), params))
    while engine.has_work():
        for ev in engine.step():
            if ev.token_id is not None:
                out[ev.request_id].append(ev.token_id)
    return [out[f"r{i}"] for i in range(len(prompts))]


def _last_logits(model, ids: list[int]):
    import torch

    dev = next(model.parameters()).device
    with torch.inference_mode():
        x = torch.tensor([ids], device=dev)
        return model(x, torch.arange(len(ids), device=dev)[None], logits_for="last").logits[0, -1].float().cpu()


def _compare(ref: list[list[int]], got: list[list[int]], cpu_model, prompts) -> dict:
    rows = []
    for i, (a, b) in enumerate(zip(ref, got, strict=True)):
        first = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        row: dict = {"equal": a == b, "tokens": len(a), "first_divergence": first}
        if first is not None:  # why: the CPU's margin between its top-2 logits there
            logits = _last_logits(cpu_model, list(prompts[i]) + a[:first])
            top = logits.topk(2).values
            row["cpu_top2_margin_at_divergence"] = float(top[0] - top[1])
            row["agreement_before_divergence"] = round(first / max(len(a), 1), 3)
        rows.append(row)
    return {"all_equal": all(r["equal"] for r in rows),
            "tokens_before_first_divergence": sum(r["tokens"] if r["first_divergence"] is None else r["first_divergence"]
                                                  for r in rows),
            "tokens_total": sum(len(a) for a in ref), "per_prompt": rows}


def section_correctness(args, budget: Budget) -> dict:
    import torch

    from export.tiny import TinyOptions
    from export.tiny.step1 import write_step1
    from stepaudio.llm.loader import load_step1
    from stepaudio.llm.text_tokenizer import TextTokenizer

    out: dict = {}
    new_tokens = 12 if args.quick else 32
    with tempfile.TemporaryDirectory(prefix="gpu-check-step1-") as tmp, strict_fp32():
        out["tf32_during_section"] = tf32_settings()
        for kind, component in (("tts", "Step-Audio-TTS-3B"), ("chat", "Step-Audio-Chat")):
            if budget.left() < 5:
                out[kind] = {"skipped": "time budget"}
                continue
            t = time.perf_counter()
            d = Path(tmp) / component
            d.mkdir()
            write_step1(d, TinyOptions(seed=0), kind)
            tok = TextTokenizer(d)
            prompts = _prompts(kind, tok, np.random.default_rng(0))
            r: dict = {"write_s": round(time.perf_counter() - t, 2), "prompt_tokens": [len(p) for p in prompts],
                       "new_tokens": new_tokens}
            cpu = load_step1(d, dtype="float32", device="cpu")
            r["preset"] = {"hidden": cpu.config.hidden_size, "layers": cpu.config.num_hidden_layers,
                           "heads": cpu.config.num_attention_heads, "groups": cpu.config.num_attention_groups}
            ref_batch = _greedy(cpu, prompts, new_tokens, batched=True)
            ref_single = _greedy(cpu, prompts[:1], new_tokens, batched=False)
            r["cpu_float32_batch_vs_single_equal"] = ref_batch[0] == ref_single[0]
            ref_logits = _last_logits(cpu, prompts[0])
            for dtype in ("float32", "bfloat16"):
                if budget.left() < 3:
                    r[f"{args.device}_{dtype}"] = {"skipped": "time budget"}
                    continue
                m = load_step1(d, dtype=dtype, device=args.device)
                got = _greedy(m, prompts, new_tokens, batched=True)
                single = _greedy(m, prompts[:1], new_tokens, batched=False)
                res = _compare(ref_batch, got, cpu, prompts)
                res["single_request_equal_to_cpu"] = single[0] == ref_single[0]
                res["last_logits_max_abs_diff"] = float((_last_logits(m, prompts[0]) - ref_logits).abs().max())
                res["last_logits_scale"] = float(ref_logits.abs().max())
                r[f"{args.device}_{dtype}"] = res
                log(f"  {kind} {args.device} {dtype}: greedy ids equal to CPU float32: {res['all_equal']} "
                    f"({res['tokens_before_first_divergence']}/{res['tokens_total']} before a divergence), "
                    f"logits max abs diff {res['last_logits_max_abs_diff']:.2e}")
                del m
                _empty_cache()
            r["seconds"] = round(time.perf_counter() - t, 2)
            out[kind] = r
            del cpu
    with contextlib.suppress(Exception):
        torch.cuda.empty_cache()
    return out


# =================================================================================================
# 2. Step-1 speed at the TTS-3B size, random weights built on the device
# =================================================================================================
def random_step1(cfg, device, dtype, seed: int = 0):
    """Step1ForCausalLM with random weights (normal std 0.02, RMSNorm weights 1) created on ``device``."""
    import torch

    from stepaudio.llm.model import Attention, Step1ForCausalLM, alibi_slopes

    with torch.device("meta"):
        model = Step1ForCausalLM(cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
        for m in model.modules():
            if isinstance(m, Attention):
                m.slopes = alibi_slopes(cfg.num_attention_heads)[: m.n_heads].to(device)  # float32, as loaded
    return model.eval()


def _engine_decode(model, batch: int, prompt_len: int, new_tokens: int, budget_s: float, device, vocab: int) -> dict:
    from stepaudio.llm.engine import Engine, GenerationRequest
    from stepaudio.llm.sampling import SamplingParams

    rng = np.random.default_rng(batch)
    engine = Engine(model, max_batch_size=batch, prefix_reuse=False)
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, stop_ids=())
    sync(device)
    t0 = time.perf_counter()
    for i in range(batch):
        engine.add(GenerationRequest(f"b{i}", [1, *rng.integers(5, vocab, prompt_len - 1).tolist()], params))
    engine.step()  # prefill of every request and its first token
    sync(device)
    first_step_s = time.perf_counter() - t0
    steps: list[float] = []
    stopped = False
    while engine.has_work():
        if time.perf_counter() - t0 > budget_s:
            stopped = True
            for i in range(batch):
                engine.cancel(f"b{i}")
            engine.step()
            break
        t = time.perf_counter()
        engine.step()
        sync(device)
        steps.append(time.perf_counter() - t)
    timed = steps[1:] if len(steps) > 2 else steps  # the first decode step pays one-off allocations
    return {
        "batch": batch, "prompt_tokens": prompt_len, "decode_steps": len(steps), "stopped_by_budget": stopped,
        "prefill_step_s": round(first_step_s, 4),
        "decode_tokens_per_s": round(batch * len(timed) / sum(timed), 1) if timed else None,
        "step_ms": percentiles(timed, 1000, 2),
    }


def _forward_decode(model, batch: int, context: int, reps: int, device) -> dict:
    """The model's forward for one decode step over a ``context``-token cache (no engine)."""
    import torch

    from stepaudio.llm.model import LayerCache

    cfg = model.config
    layers, g, d = cfg.num_hidden_layers, model.n_local_groups, cfg.head_dim
    dtype = next(model.parameters()).dtype
    caches = [LayerCache(torch.randn(batch, g, context, d, device=device, dtype=dtype),
                         torch.randn(batch, g, context, d, device=device, dtype=dtype)) for _ in range(layers)]
    cache_pos = torch.arange(context, device=device).expand(batch, context)
    ids = torch.randint(5, cfg.vocab_size, (batch, 1), device=device)
    pos = torch.full((batch, 1), context, device=device)
    times = []
    with torch.inference_mode():
        for i in range(reps + 1):
            sync(device)
            t = time.perf_counter()
            model(ids, pos, caches, cache_pos, logits_for="last")
            sync(device)
            if i:
                times.append(time.perf_counter() - t)
    return {"batch": batch, "context_tokens": context, "forward_ms": percentiles(times, 1000, 2),
            "tokens_per_s": round(batch / float(np.median(times)), 1)}


def _prefill(model, n: int, reps: int, device, budget: Budget) -> dict:
    import torch

    from stepaudio.llm.engine import Engine, GenerationRequest
    from stepaudio.llm.sampling import SamplingParams

    ids = torch.randint(5, model.config.vocab_size, (1, n), device=device)
    ids[0, 0] = 1
    pos = torch.arange(n, device=device)[None]
    fwd = []
    with torch.inference_mode():
        for i in range(reps + 1):
            if i > 1 and budget.left() < 5:
                break
            sync(device)
            t = time.perf_counter()
            model(ids, pos, logits_for="last")
            sync(device)
            if i:
                fwd.append(time.perf_counter() - t)
    ttft = []
    prompt = ids[0].tolist()
    for i in range(2):
        if i and budget.left() < 5:
            break
        engine = Engine(model, max_batch_size=1, prefix_reuse=False)
        sync(device)
        t = time.perf_counter()
        engine.add(GenerationRequest(f"p{i}", prompt, SamplingParams(temperature=0, max_new_tokens=1, stop_ids=())))
        while not any(ev.token_id is not None for ev in engine.step()):
            pass
        ttft.append(time.perf_counter() - t)
    return {"tokens": n, "prefill_forward_ms": percentiles(fwd, 1000, 2),
            "prefill_tokens_per_s": round(n / float(np.median(fwd)), 1) if fwd else None,
            "ttft_ms": percentiles(ttft, 1000, 2)}


def section_step1_speed(args, budget: Budget) -> dict:
    import torch

    from stepaudio.llm.config import PRESETS

    preset = "tiny-tts" if args.quick else "tts-3b"
    cfg = PRESETS[preset]
    dtype = torch.bfloat16
    t = time.perf_counter()
    model = random_step1(cfg, args.device, dtype)
    sync(args.device)
    out: dict = {"preset": preset, "parameters": sum(p.numel() for p in model.parameters()), "dtype": "bfloat16",
                 "build_s": round(time.perf_counter() - t, 2), "tf32": tf32_settings()}
    if torch.device(args.device).type == "cuda":
        out["gpu_memory_allocated_gb_after_build"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    log(f"  {preset}: {out['parameters'] / 1e9:.2f} B parameters built in {out['build_s']} s")
    batches = (1, 2) if args.quick else (1, 8, 32)
    prompt_len, new_tokens = (24, 8) if args.quick else (128, 64)
    out["engine_decode"] = {}
    out["forward_decode"] = {}
    for b in batches:
        if budget.left() < 15:
            out["engine_decode"][f"batch_{b}"] = {"skipped": "time budget"}
            continue
        r = _engine_decode(model, b, prompt_len, new_tokens, min(20.0, budget.left() - 12), args.device, cfg.vocab_size)
        out["engine_decode"][f"batch_{b}"] = r
        log(f"  engine decode batch {b}: {r['decode_tokens_per_s']} tokens/s, step p50 {r['step_ms'].get('p50')} ms")
        f = _forward_decode(model, b, prompt_len + new_tokens // 2, 3 if args.quick else 10, args.device)
        out["forward_decode"][f"batch_{b}"] = f
        log(f"  forward only batch {b}: {f['tokens_per_s']} tokens/s, {f['forward_ms'].get('p50')} ms")
    out["prefill"] = {}
    for n in ((32, 64) if args.quick else (512, 2048)):
        if budget.left() < 10:
            out["prefill"][f"tokens_{n}"] = {"skipped": "time budget"}
            continue
        r = _prefill(model, n, 3, args.device, budget)
        out["prefill"][f"tokens_{n}"] = r
        log(f"  prefill {n}: {r['prefill_forward_ms'].get('p50')} ms, TTFT {r['ttft_ms'].get('p50')} ms")
    if torch.device(args.device).type == "cuda":
        out["gpu_max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del model
    _empty_cache()
    return out


# =================================================================================================
# 3. flow + HiFT at full size on the device
# =================================================================================================
def _flow_on(flow):
    """A wrapper that runs ``flow`` (on a GPU) for Token2Wav code that hands it CPU tensors: the inputs move
    to the flow's device, the mel comes back to the CPU as float32."""
    import torch

    class FlowOnDevice(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.output_size, self.vocab_size = inner.output_size, inner.vocab_size

        def mel_frames(self, n_tokens: int) -> int:
            return self.inner.mel_frames(n_tokens)

        def inference(self, token, prompt_token, prompt_feat, embedding, noise=None, **kw):
            dev = next(self.inner.parameters()).device

            def mv(x):
                return None if x is None else x.to(dev)

            mel = self.inner.inference(mv(token), mv(prompt_token), mv(prompt_feat), mv(embedding), noise=mv(noise), **kw)
            return mel.float().cpu()

    return FlowOnDevice(flow)


def _t2w_inputs(flow, tokens, voice, device, seed: int):
    import torch

    n_frames = voice.prompt_feat.shape[0] + flow.mel_frames(len(tokens))
    noise = torch.randn((1, flow.output_size, n_frames), generator=torch.Generator().manual_seed(seed))
    return (torch.as_tensor(tokens)[None].to(device), voice.prompt_token[None].to(device),
            voice.prompt_feat[None].to(device), voice.embedding[None].to(device), noise.to(device))


def _offline(flow, hift, inputs, device, reps: int, budget: Budget, audio_s_hint: float) -> dict:
    import torch

    from stepaudio.tts.hift import TorchNoise

    flow_t, voc_t, audio_s = [], [], None
    for i in range(reps + 1):  # the first run warms up
        if i > 1 and budget.left() < 3 * (sum(flow_t) + sum(voc_t)) / max(len(flow_t), 1) + 5:
            break
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            tok, ptok, pfeat, emb, noise = inputs
            mel = flow.inference(tok, ptok, pfeat, emb, noise=noise)
            sync(device)
            t1 = time.perf_counter()
            wav = hift.inference(mel.float(), TorchNoise(i)).wav
            sync(device)
        t2 = time.perf_counter()
        audio_s = wav.shape[-1] / 22050
        if i:
            flow_t.append(t1 - t0)
            voc_t.append(t2 - t1)
    f, v = float(np.median(flow_t)), float(np.median(voc_t))
    return {"runs": len(flow_t), "audio_s": round(audio_s or audio_s_hint, 3), "flow_s": round(f, 4),
            "vocoder_s": round(v, 4), "rtf": round((f + v) / audio_s, 5), "flow_rtf": round(f / audio_s, 5),
            "vocoder_rtf": round(v / audio_s, 5), "wav_finite": bool(torch.isfinite(wav).all())}


def _streaming(flow, hift_cpu, tokens, voice, seed: int, push: int) -> dict:
    from stepaudio.tts.token2wav import Token2Wav

    t2w = Token2Wav(_flow_on(flow), hift_cpu)
    t2w.offline(tokens[:30], voice, seed=seed)  # warm-up
    s = t2w.session(voice, seed=seed)
    first, total, samples = None, 0.0, 0
    for i in range(0, len(tokens), push):
        t = time.perf_counter()
        got = s.push(tokens[i:i + push])
        dt = time.perf_counter() - t
        total += dt
        if got and first is None:
            first = (min(i + push, len(tokens)), dt)
        samples += sum(c.size for c in got)
    t = time.perf_counter()
    samples += sum(c.size for c in s.finish())
    total += time.perf_counter() - t
    audio_s = samples / 22050
    return {"audio_s": round(audio_s, 3), "chunks": len(s.stats), "chunk_tokens": [c.tokens for c in s.stats],
            "first_chunk_tokens": first[0] if first else None,
            "first_chunk_compute_s": round(first[1], 4) if first else None,
            "compute_s": round(total, 4), "rtf": round(total / audio_s, 5),
            "flow_s": round(sum(c.flow_s for c in s.stats), 4), "vocoder_cpu_s": round(sum(c.vocoder_s for c in s.stats), 4)}


def section_token2wav(args, budget: Budget) -> dict:
    import torch

    from benchmarks.cosyvoice_full import build_full_size
    from benchmarks.tts_bench import TOKENS_PER_SECOND, t2w_workload

    full = not args.quick
    speech_s, prompt_s = (1.0, 1.0) if args.quick else (10.0, 3.0)
    t = time.perf_counter()
    flow32, hift = build_full_size(args.device, torch.float32, seed=0, full_size=full)
    hift_cpu = copy.deepcopy(hift).cpu()
    sync(args.device)
    out: dict = {"size": "official CosyVoice-300M dims" if full else "tiny preset dims",
                 "flow_parameters": sum(p.numel() for p in flow32.parameters()),
                 "build_s": round(time.perf_counter() - t, 2), "hift_dtype": "float32", "tf32": tf32_settings(),
                 "cpu_threads_for_stream_vocoder": torch.get_num_threads()}
    tokens, voice = t2w_workload(flow32, speech_s, prompt_s, seed=1)
    out["workload"] = {"speech_tokens": len(tokens), "speech_s": round(len(tokens) / TOKENS_PER_SECOND, 3),
                       "prompt_tokens": int(voice.prompt_token.numel()), "flow_steps": 10}
    inputs = _t2w_inputs(flow32, tokens, voice, args.device, seed=1)
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        if budget.left() < 10:
            out[name] = {"skipped": "time budget"}
            continue
        flow = flow32 if dtype == torch.float32 else copy.deepcopy(flow32).to(dtype)
        r: dict = {"offline": _offline(flow, hift, inputs, args.device, 1 if args.quick else 3, budget, speech_s)}
        log(f"  flow {name}: offline RTF {r['offline']['rtf']} (flow {r['offline']['flow_rtf']}, "
            f"vocoder {r['offline']['vocoder_rtf']})")
        if budget.left() > 15:
            r["streaming"] = _streaming(flow, hift_cpu, tokens, voice, 1, 5)
            log(f"  flow {name}: streaming RTF {r['streaming']['rtf']} (device flow {r['streaming']['flow_s']} s, "
                f"CPU vocoder {r['streaming']['vocoder_cpu_s']} s), first chunk {r['streaming']['first_chunk_compute_s']} s")
        else:
            r["streaming"] = {"skipped": "time budget"}
        out[name] = r
        if flow is not flow32:
            del flow
    # the device flow against the CPU float32 flow on 2 s of tokens (same noise)
    if budget.left() > 20 and torch.device(args.device).type != "cpu":
        short_tokens, short_voice = t2w_workload(flow32, 1.0, 1.0, seed=2)
        short = _t2w_inputs(flow32, short_tokens, short_voice, "cpu", seed=2)
        flow_cpu = copy.deepcopy(flow32).cpu()
        with torch.inference_mode():
            ref = flow_cpu.inference(*short[:4], noise=short[4])
            diffs = {}
            for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
                f = flow32 if dtype == torch.float32 else copy.deepcopy(flow32).to(dtype)
                with strict_fp32() if dtype == torch.float32 else contextlib.nullcontext():
                    mel = f.inference(*[x.to(args.device) for x in short[:4]], noise=short[4].to(args.device))
                diffs[name] = float((mel.float().cpu() - ref).abs().max())
        out["mel_vs_cpu_float32"] = {"speech_s": 1.0, "prompt_s": 1.0, "mel_abs_max": float(ref.abs().max()),
                                     "max_abs_diff": diffs, "tf32_off_for_float32": True}
        del flow_cpu
    del flow32, hift, hift_cpu
    _empty_cache()
    return out


# =================================================================================================
# 4. sqrt-ALiBi attention against a plain float64 reference
# =================================================================================================
def paper_slopes(n: int) -> list[float]:
    """ALiBi slopes as the paper's reference code defines them: a geometric sequence starting at
    2^(-8/n) for a power-of-two n; otherwise those of the nearest lower power of two p, then every
    other slope of 2p."""
    def pow2(m: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(m) - 3)))
        return [start * start**i for i in range(m)]

    if math.log2(n).is_integer():
        return pow2(n)
    p = 2 ** math.floor(math.log2(n))
    return pow2(p) + paper_slopes(2 * p)[0::2][: n - p]


def reference_attention(attn, x, q_pos, k_pos, cache_k=None, cache_v=None):
    """Float64, head by head: K/V repeated per head, scores / sqrt(d) - slope * sqrt(i - j), masked where j > i
    or the key is padding (position < 0), softmax, weighted sum, o_proj."""
    import torch

    f = torch.float64
    b, t, _ = x.shape
    h, g, d = attn.n_heads, attn.n_groups, attn.head_dim
    wq, wk, wv, wo = (m.weight.to(f) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
    xf = x.to(f)
    q = (xf @ wq.T).view(b, t, h, d).transpose(1, 2)
    k = (xf @ wk.T).view(b, t, g, d).transpose(1, 2)
    v = (xf @ wv.T).view(b, t, g, d).transpose(1, 2)
    if cache_k is not None:
        k = torch.cat([cache_k.to(f), k], dim=2)
        v = torch.cat([cache_v.to(f), v], dim=2)
    slopes = torch.tensor(paper_slopes(h), dtype=f, device=x.device)
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).to(f)  # (B, Tq, Tk)
    allowed = (dist >= 0) & (k_pos[:, None, :] >= 0)
    heads = []
    for hh in range(h):
        kg, vg = k[:, hh // (h // g)], v[:, hh // (h // g)]
        s = q[:, hh] @ kg.transpose(-1, -2) / math.sqrt(d) - slopes[hh] * dist.clamp(min=0).sqrt()
        s = s.masked_fill(~allowed, float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
        heads.append(p @ vg)
    out = torch.stack(heads, dim=1).transpose(1, 2).reshape(b, t, h * d)
    return out @ wo.T


def _sdpa_attention(attn, x, bias, cache_k=None, cache_v=None):
    import torch
    import torch.nn.functional as F

    b, t, _ = x.shape
    h, g, d = attn.n_heads, attn.n_groups, attn.head_dim
    q = attn.q_proj(x).view(b, t, h, d).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, g, d).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, g, d).transpose(1, 2)
    if cache_k is not None:
        k, v = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
    k, v = k.repeat_interleave(h // g, dim=1), v.repeat_interleave(h // g, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, h * d))


def section_attention(args, budget: Budget) -> dict:
    import torch

    from stepaudio.llm.config import PRESETS
    from stepaudio.llm.model import Attention, LayerCache, TensorParallel, alibi_slopes, attention_bias

    out: dict = {"slopes_vs_paper_formula_max_abs_diff": {
        str(n): float(max(abs(a - b) for a, b in zip(alibi_slopes(n).tolist(), paper_slopes(n), strict=True)))
        for n in (4, 6, 8, 48, 96)}}
    preset = "tiny-tts" if args.quick else "tts-3b"
    cfg = PRESETS[preset]
    out["preset"] = preset
    t_prefill = 64 if args.quick else 1024
    dev = args.device
    g = torch.Generator(device=dev).manual_seed(0)
    attn32 = Attention(cfg, TensorParallel()).to(dev).eval()
    with torch.no_grad():
        for p in attn32.parameters():
            p.normal_(0.0, 0.02, generator=g)
    x = torch.randn(2, t_prefill, cfg.hidden_size, device=dev, generator=g)
    pos = torch.arange(t_prefill, device=dev)[None].expand(2, t_prefill)
    # decode: one new token over a cache; row 1's cache is 7 tokens shorter (padding at the end, position -1)
    t_cache = t_prefill
    kv_shape = (2, attn32.n_groups, t_cache, cfg.head_dim)
    ck, cv = torch.randn(kv_shape, device=dev, generator=g), torch.randn(kv_shape, device=dev, generator=g)
    cache_pos = torch.arange(t_cache, device=dev)[None].repeat(2, 1)
    cache_pos[1, t_cache - 7:] = -1
    q_pos = torch.tensor([[t_cache], [t_cache - 7]], device=dev)
    x1 = torch.randn(2, 1, cfg.hidden_size, device=dev, generator=g)
    with torch.inference_mode():
        ref_prefill = reference_attention(attn32, x, pos, pos)
        k_pos = torch.cat([cache_pos, q_pos], dim=1)
        ref_decode = reference_attention(attn32, x1, q_pos, k_pos, ck, cv)
        out["output_abs_max"] = {"prefill": float(ref_prefill.abs().max()), "decode": float(ref_decode.abs().max())}
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            if budget.left() < 3:
                out[name] = {"skipped": "time budget"}
                continue
            attn = attn32 if dtype == torch.float32 else copy.deepcopy(attn32).to(dtype)
            attn.slopes = alibi_slopes(cfg.num_attention_heads).to(dev)  # float32 as loaded
            ctx = strict_fp32() if dtype == torch.float32 else contextlib.nullcontext()
            with ctx:
                bias_p = attention_bias(pos, pos, attn.slopes)
                ours_p = attn(x.to(dtype), bias_p, None)[0]
                bias_d = attention_bias(q_pos, k_pos, attn.slopes)
                ours_d = attn(x1.to(dtype), bias_d, LayerCache(ck.to(dtype), cv.to(dtype)))[0]
                sdpa_p = _sdpa_attention(attn, x.to(dtype), bias_p)
                sdpa_d = _sdpa_attention(attn, x1.to(dtype), bias_d, ck.to(dtype), cv.to(dtype))
            out[name] = {
                "ours_prefill_max_abs_diff": float((ours_p.double() - ref_prefill).abs().max()),
                "ours_decode_max_abs_diff": float((ours_d.double() - ref_decode).abs().max()),
                "sdpa_prefill_max_abs_diff": float((sdpa_p.double() - ref_prefill).abs().max()),
                "sdpa_decode_max_abs_diff": float((sdpa_d.double() - ref_decode).abs().max()),
            }
            log(f"  attention {name}: ours prefill {out[name]['ours_prefill_max_abs_diff']:.2e} decode "
                f"{out[name]['ours_decode_max_abs_diff']:.2e}; sdpa prefill {out[name]['sdpa_prefill_max_abs_diff']:.2e}")
    out["prefill_tokens"], out["decode_cache_tokens"] = t_prefill, t_cache
    return out


# =================================================================================================
# driver
# =================================================================================================
RUNNERS = {"correctness": section_correctness, "step1_speed": section_step1_speed,
           "token2wav": section_token2wav, "attention": section_attention}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere (a check of the code paths)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=",".join(SECTIONS))
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    args = p.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in args.sections if s not in RUNNERS]
    if bad:
        p.error(f"unknown section(s) {bad}; known: {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    log(f"importing torch (device {args.device}{', quick' if args.quick else ''}) ...")
    import torch

    results: dict = {"environment": environment(args.device), "source_digest": source_digest(), "sections": {}}
    config = {"device": args.device, "quick": args.quick, "sections": args.sections,
              "budget_s": {k: v * args.budget_scale for k, v in BUDGET_S.items()}, "argv": sys.argv[1:]}
    log(f"torch {torch.__version__}, device {results['environment'].get('device_name', args.device)}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        results["error"] = "CUDA is not available"
        write_result(NAME, config, results, args.out)
        log("CUDA is not available; nothing run")
        return 1
    if torch.device(args.device).type == "cuda":
        torch.zeros(1, device=args.device)  # context creation outside the timed sections
    for name in args.sections:
        log(f"section {name} ...")
        budget = Budget(BUDGET_S[name] * args.budget_scale)
        entry: dict = {}
        try:
            entry["result"] = RUNNERS[name](args, budget)
            entry["ok"] = True
        except Exception as exc:  # one section's failure must not lose the others
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()[-4000:]
            log(f"  FAILED: {entry['error']}")
            traceback.print_exc()
        entry["seconds"] = round(budget.elapsed(), 1)
        results["sections"][name] = entry
        _empty_cache()
        results["total_s"] = round(time.perf_counter() - t_start, 1)
        write_result(NAME, config, results, args.out, machine=machine_info())
        log(f"section {name}: {'ok' if entry['ok'] else 'FAILED'} in {entry['seconds']} s")
    ok = [n for n, e in results["sections"].items() if e["ok"]]
    log(f"done in {results['total_s']} s: {len(ok)}/{len(args.sections)} sections ok; wrote {args.out / (NAME + '.json')}")
    return 0 if len(ok) == len(args.sections) else 2


if __name__ == "__main__":
    sys.exit(main())
