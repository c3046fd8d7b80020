"""Step-1 engine on CPU: decode throughput by concurrency, and time to first token as a chat grows.

    python -m benchmarks.llm_bench [--presets tiny,100m] [--out benchmarks/results] [--checkpoints DIR]
                                   [--threads 2] [--dtype float32] [--concurrency 1,4,16] [--turns 16] ...

Presets: ``tiny`` is the seeded ``tiny-chat`` checkpoint (3 x 48, 7.3 M parameters, nearly all of them
the 74752-wide embedding and lm_head); ``100m`` is the ~110 M-parameter ``step1-100m`` preset with random
weights (12 x 512, GQA 8 heads / 2 groups). Both are written by ``export.tiny`` (Step-Audio-Chat layout,
bf16 on disk) into a temporary directory, unless ``--checkpoints DIR`` holds ``DIR/<preset>/Step-Audio-Chat``,
and loaded as ``--dtype`` (float32, the CPU deployment default) with ``--threads`` torch threads.

For each preset, in one process:

1. decode: N = 1, 4, 16 requests added at once (distinct 64-token prompts cut from tokenized English
   text, 64 new tokens each, greedy, ``stop_ids=()`` so every request runs to length), engine with
   prefix reuse on (the deployment default; the prompts share no 16-token block, so nothing hits).
   Generated tokens/s end to end (add() to the last token, the prefill of all N prompts included) and
   over the pure decode steps only; per-step latency p50/p99 of the decode steps.
2. conversation: a chat rendered with ``encode_chat``: the default system prompt, then alternating
   user and assistant messages of ~40 tokens of text each. The assistant text is fixed (not the
   model's reply): a random-weight model answers with ``<unused_N>``/``<audio_N>`` pieces whose
   decoded text re-encodes to ~14 tokens each, so its replies would blow the prompt up instead of
   modelling a chat. Turn n's prompt is the conversation up to the n-th user message plus the
   generation prompt, so it extends turn n-1's prompt (checked). Turns 1..16 go, in order, to one
   engine kept across the turns, with ``prefix_reuse=True`` and with ``prefix_reuse=False``; each
   request generates ``--reply-tokens`` tokens. TTFT = time from add() until the first TokenEvent of
   the request. Repeated ``--conversation-repeats`` times with fresh engines; the median per turn is
   reported, with cached_prompt_tokens per turn and where the prefill time goes (prefix-cache
   lookup, model forward, cache insert, the rest). The issue's goal: with reuse on,
   TTFT(turn 16) / TTFT(turn 1) <= 1.2.
3. long-context decode: 1 and 16 requests sharing a ``--long-context``-token prefix (so prefix reuse
   makes their prefill cheap) decoding ``--long-new-tokens`` tokens: the per-step cost of a chat-sized
   context.
4. profile (unless ``--no-profile``): extra decode runs with timers around the engine's stages:
   preparing the step's K/V slots (``Engine._decode`` before the forward: ids, positions, the
   ``SlotKV`` step), ALiBi bias, attention projections, attention core (writing the new K/V into the
   slots, scores, softmax), MLP, lm_head, the rest of the forward, the rest of ``_decode`` after the
   forward, sampling, prefix-cache inserts; and a torch.profiler table of the top aten ops.

Results: ``<out>/llm_bench.json`` (the common envelope: config, git SHA, machine) and, when matplotlib is
installed, ``<out>/llm_bench.png``. A readable table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks.common import (
    RESULTS_DIR,
    SENTENCES,
    BackgroundLoad,
    csv_of,
    machine_info,
    peak_rss_mb,
    percentiles,
    wait_for_quiet,
    write_result,
)

NAME = "llm_bench"
COMPONENT = "Step-Audio-Chat"
PRESETS = {"tiny": "tiny-chat", "100m": "step1-100m"}  # benchmark name -> stepaudio.llm.config preset
TTFT_RATIO_GOAL = 1.2  # TTFT(last turn) / TTFT(turn 1) with prefix reuse on
BLOCK_SIZE = 16
PREFIX_CACHE_TOKENS = 65536


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# =================================================================================================
# workloads
# =================================================================================================
def _words() -> list[str]:
    return " ".join(SENTENCES).split()


def text_of_tokens(tok, n_tokens: int, start: int) -> str:
    """English text starting at word ``start`` of the sentence pool (cyclic), cut at the first word
    boundary where it reaches ``n_tokens`` tokens (without BOS)."""
    words = _words()
    out: list[str] = []
    i = start
    while True:
        out.append(words[i % len(words)])
        i += 1
        text = " ".join(out)
        if len(tok.encode(text, add_bos=False)) >= n_tokens:
            return text


def decode_prompts(tok, n: int, length: int) -> list[list[int]]:
    """``n`` distinct prompts of exactly ``length`` tokens: BOS + windows, 5 tokens apart, of the
    tokenized sentence pool repeated (no two share a first block, so the prefix cache never hits)."""
    base = tok.encode(" ".join(SENTENCES), add_bos=False)
    ids = base * ((length + 5 * n) // len(base) + 1)
    prompts = [[tok.bos_id, *ids[5 * i : 5 * i + length - 1]] for i in range(n)]
    assert len({tuple(p[:BLOCK_SIZE]) for p in prompts}) == n, "decode prompts share a first block"
    return prompts


def conversation_prompts(tok, turns: int, turn_tokens: int) -> tuple[list[list[int]], list[dict]]:
    """Prompt ids of turns 1..``turns`` and the full message list (system + user/assistant pairs)."""
    from stepaudio.llm.text_tokenizer import DEFAULT_SYSTEM_PROMPT

    messages: list[dict] = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]
    prompts = []
    for t in range(turns):
        messages.append({"role": "user", "content": text_of_tokens(tok, turn_tokens, 11 * t)})
        prompts.append(tok.encode_chat(messages))
        messages.append({"role": "assistant", "content": text_of_tokens(tok, turn_tokens, 11 * t + 5)})
    return prompts, messages


# =================================================================================================
# timers: wrap methods / functions / modules, accumulate wall time by name
# =================================================================================================
class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.marks: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] += dt
        self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)

    def wrap_attr(self, owner: object, attr: str, name: str, mark: str | None = None) -> None:
        """Time calls of ``owner.attr`` (an instance attribute shadows a method; a module global is
        replaced). ``mark``: also remember the entry time of the latest call."""
        fn = getattr(owner, attr)
        had_own = attr in getattr(owner, "__dict__", {})

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            if mark:
                self.marks[mark] = t0
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)

        setattr(owner, attr, timed)
        if had_own:  # a module global or an instance attribute: put it back
            self._undo.append(lambda: setattr(owner, attr, fn))
        else:  # a method found on the class: drop the shadowing instance attribute
            self._undo.append(lambda: delattr(owner, attr))

    def wrap_module(self, module, name: str) -> None:
        """Time an nn.Module's forward with pre/post hooks (nesting-safe per module)."""
        start: list[float] = []

        def pre(_m, _a):
            start.append(time.perf_counter())

        def post(_m, _a, _o):
            self.add(name, time.perf_counter() - start.pop())

        h1 = module.register_forward_pre_hook(pre)
        h2 = module.register_forward_hook(post)
        self._undo += [h1.remove, h2.remove]

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


@contextlib.contextmanager
def instrumented(engine, model) -> Iterator[Timers]:
    """Timers around the engine's prefill/decode stages and the model's parts (see the module doc)."""
    import stepaudio.llm.engine as engine_mod
    import stepaudio.llm.model as model_mod

    t = Timers()
    t.wrap_attr(engine, "step", "step")
    t.wrap_attr(engine, "_prefill", "prefill")
    t.wrap_attr(engine, "_decode", "decode", mark="decode_enter")
    t.wrap_attr(engine, "_accept", "accept")
    t.wrap_attr(engine.cache, "lookup", "cache_lookup")
    t.wrap_attr(engine.cache, "insert", "cache_insert")
    t.wrap_attr(engine_mod, "sample_rows", "sampling")
    t.wrap_attr(model_mod, "attention_bias", "alibi_bias")

    fwd = model.forward

    def forward(*args, **kwargs):
        t0 = time.perf_counter()
        if "decode_enter" in t.marks:  # the step's K/V slots were prepared between the two
            t.add("kv_step", t0 - t.marks.pop("decode_enter"))
        try:
            return fwd(*args, **kwargs)
        finally:
            t.add("forward", time.perf_counter() - t0)

    model.forward = forward
    t._undo.append(lambda: delattr(model, "forward"))
    t.wrap_module(model.lm_head, "lm_head")
    for layer in model.model.layers:
        t.wrap_module(layer.self_attn, "attention")
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                     layer.self_attn.o_proj):
            t.wrap_module(proj, "attn_proj")
        t.wrap_module(layer.mlp, "mlp")
    try:
        yield t
    finally:
        t.remove()


def decode_breakdown(s: dict[str, float], steps: int) -> dict:
    """ms per decode step by stage, and shares of the step, from a Timers snapshot of decode-only steps."""
    fwd = s.get("forward", 0.0)
    attn = s.get("attention", 0.0)
    parts = {
        "kv_step": s.get("kv_step", 0.0),
        "alibi_bias": s.get("alibi_bias", 0.0),
        "attn_proj": s.get("attn_proj", 0.0),
        "attn_core": attn - s.get("attn_proj", 0.0),
        "mlp": s.get("mlp", 0.0),
        "lm_head": s.get("lm_head", 0.0),
        "forward_other": fwd - attn - s.get("mlp", 0.0) - s.get("lm_head", 0.0) - s.get("alibi_bias", 0.0),
        "decode_other": s.get("decode", 0.0) - s.get("kv_step", 0.0) - fwd - s.get("accept", 0.0),
        "sampling": s.get("sampling", 0.0),
        "cache_insert": s.get("cache_insert", 0.0),
        "accept_other": s.get("accept", 0.0) - s.get("sampling", 0.0) - s.get("cache_insert", 0.0),
        "step_other": s.get("step", 0.0) - s.get("decode", 0.0),
    }
    total = s.get("step", 0.0)
    return {
        "steps": steps,
        "step_ms": round(1000 * total / max(steps, 1), 3),
        "ms_per_step": {k: round(1000 * v / max(steps, 1), 3) for k, v in parts.items()},
        "share": {k: round(v / total, 4) if total else None for k, v in parts.items()},
    }


def prefill_breakdown(s: dict[str, float]) -> dict:
    """ms of one request's first step by stage (a Timers snapshot around that step alone): prefix-cache
    lookup, model forward, cache inserts, sampling, the rest of ``_prefill`` (K/V concatenation of the
    cached prefix and the new part, tensors, the event) and of ``step()`` outside ``_prefill``."""
    pre = s.get("prefill", 0.0)
    parts = {
        "cache_lookup": s.get("cache_lookup", 0.0),
        "forward": s.get("forward", 0.0),
        "cache_insert": s.get("cache_insert", 0.0),
        "sampling": s.get("sampling", 0.0),
    }
    parts["prefill_other"] = pre - sum(parts.values())
    parts["step_other"] = s.get("step", 0.0) - pre
    # the forward's parts (fwd_*: they add up to "forward", which they are part of)
    fwd_parts = {
        "fwd_alibi_bias": s.get("alibi_bias", 0.0),
        "fwd_attn_proj": s.get("attn_proj", 0.0),
        "fwd_attn_core": s.get("attention", 0.0) - s.get("attn_proj", 0.0),
        "fwd_mlp": s.get("mlp", 0.0),
        "fwd_lm_head": s.get("lm_head", 0.0),
    }
    fwd_parts["fwd_other"] = parts["forward"] - sum(fwd_parts.values())
    return {k: round(1000 * v, 3) for k, v in {**parts, **fwd_parts}.items()}


# =================================================================================================
# measurements
# =================================================================================================
def clean(fn: Callable[[], dict], args, label: str) -> dict:
    """Run ``fn`` after waiting (up to --wait-quiet-s) for other processes to go quiet; while others
    used more than --max-other-share of the CPU during it, run it again (up to --retries times) and
    keep the cleanest run. The result gets ``background_load``."""
    best: tuple[dict, dict] | None = None
    for attempt in range(args.retries + 1):
        before = wait_for_quiet(args.wait_quiet_s, args.max_other_share, log=log) if args.wait_quiet_s > 0 else {}
        with BackgroundLoad() as bg:
            r = fn()
        load = {**bg.result(), **before, "attempt": attempt + 1}
        if best is None or load["other_cpu_share"] < best[1]["other_cpu_share"]:
            best = (r, load)
        if load["other_cpu_share"] <= args.max_other_share:
            break
        log(f"    {label}: other processes used {100 * load['other_cpu_share']:.0f}% of the CPU"
            + (", again" if attempt < args.retries else ""))
    r, load = best
    r["background_load"] = load
    return r


def make_engine(model, reuse: bool = True, max_batch: int = 16):
    from stepaudio.llm.engine import Engine

    return Engine(model, max_batch_size=max_batch, prefix_cache_tokens=PREFIX_CACHE_TOKENS, block_size=BLOCK_SIZE,
                  prefix_reuse=reuse)


def run_batch(engine, prompts: list[list[int]], new_tokens: int, timers: Timers | None = None) -> dict:
    """Add all prompts at once and step until every request is done.

    A step that prefilled (stats.prefill_tokens moved) is a prefill step; the others are pure decode
    steps with every request in the batch."""
    from stepaudio.llm.engine import GenerationRequest
    from stepaudio.llm.sampling import SamplingParams

    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, stop_ids=())
    first: dict[str, float] = {}
    generated = cached = decode_tokens = 0
    prefill_steps: list[float] = []
    decode_steps: list[float] = []
    decode_timers: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add(GenerationRequest(f"r{i}", p, params))
    while engine.has_work():
        before = engine.stats.prefill_tokens
        snap = timers.snapshot() if timers else {}
        ts = time.perf_counter()
        events = engine.step()
        te = time.perf_counter()
        toks = 0
        for ev in events:
            if ev.token_id is None:
                continue
            toks += 1
            if ev.request_id not in first:
                first[ev.request_id] = te - t0
                cached += ev.cached_prompt_tokens
        generated += toks
        if engine.stats.prefill_tokens != before:
            prefill_steps.append(te - ts)
            continue
        decode_steps.append(te - ts)
        decode_tokens += toks
        if timers:
            for k, v in timers.snapshot().items():
                decode_timers[k] += v - snap.get(k, 0.0)
    wall = time.perf_counter() - t0
    out = {
        "requests": len(prompts),
        "prompt_tokens": len(prompts[0]),
        "new_tokens": new_tokens,
        "generated_tokens": generated,
        "cached_prompt_tokens": cached,
        "wall_s": round(wall, 4),
        "tokens_per_s": round(generated / wall, 2),
        "decode_steps": len(decode_steps),
        "decode_tokens_per_s": round(decode_tokens / sum(decode_steps), 2) if decode_steps else None,
        "prefill_steps_ms": [round(1000 * x, 2) for x in prefill_steps],
        "step_latency_ms": percentiles(decode_steps, 1000.0),
        "ttft_ms": percentiles(first.values(), 1000.0),
    }
    if timers:
        out["breakdown"] = decode_breakdown(decode_timers, len(decode_steps))
    return out


def profile_ops(engine, prompts: list[list[int]], steps: int, top: int = 15) -> dict:
    """torch.profiler over ``steps`` pure decode steps of all ``prompts``: the top aten ops by self CPU time."""
    from stepaudio.llm.engine import GenerationRequest
    from stepaudio.llm.sampling import SamplingParams

    params = SamplingParams(temperature=0, max_new_tokens=steps + 2, stop_ids=())
    for i, p in enumerate(prompts):
        engine.add(GenerationRequest(f"p{i}", p, params))
    engine.step()  # prefills them all (the batch fits)
    with _profiler() as prof:
        for _ in range(steps):
            engine.step()
    while engine.has_work():
        engine.step()
    return {"requests": len(prompts), "context_tokens": len(prompts[0]), **_top_ops(prof, steps, top)}


def _profiler():
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU])


def _top_ops(prof, steps: int, top: int = 15) -> dict:
    rows = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "steps": steps,
        "aten_self_cpu_ms_per_step": round(total / 1000 / steps, 2),
        "top_ops": [{"op": e.key, "calls_per_step": round(e.count / steps, 1),
                     "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 3),
                     "share_of_aten": round(e.self_cpu_time_total / total, 4)} for e in rows[:top]],
    }


def run_conversation(model, prompts: list[list[int]], reuse: bool, reply_tokens: int,
                     profile_turns: tuple[int, ...] = ()) -> dict:
    """Turns in order on one engine; per turn: TTFT, cached tokens, prefill breakdown, first token.
    ``profile_turns``: turn numbers whose first step runs under torch.profiler (top aten ops)."""
    from stepaudio.llm.engine import GenerationRequest
    from stepaudio.llm.sampling import SamplingParams

    engine = make_engine(model, reuse=reuse, max_batch=1)
    params = SamplingParams(temperature=0, max_new_tokens=reply_tokens, stop_ids=())
    ttft, cached, first_tok, breakdown = [], [], [], []
    ops: dict[str, dict] = {}
    with instrumented(engine, model) as timers:
        for n, prompt in enumerate(prompts, 1):
            rid = f"turn{n}"
            prof = _profiler() if n in profile_turns else contextlib.nullcontext()
            timers.reset()
            with prof:
                t0 = time.perf_counter()
                engine.add(GenerationRequest(rid, prompt, params))
                got = None
                while got is None:
                    for ev in engine.step():
                        if ev.request_id == rid and ev.token_id is not None:
                            got = ev
                            break
                ttft.append(time.perf_counter() - t0)
            if n in profile_turns:
                ops[f"turn_{n}"] = {"prompt_tokens": len(prompt), "cached_prompt_tokens": got.cached_prompt_tokens,
                                    "ttft_ms": round(1000 * ttft[-1], 2), **_top_ops(prof, 1)}
            cached.append(got.cached_prompt_tokens)
            first_tok.append(got.token_id)
            breakdown.append(prefill_breakdown(timers.snapshot()))
            while engine.has_work():
                engine.step()
    return {"ttft_s": ttft, "cached": cached, "first_token": first_tok, "breakdown": breakdown, "ops": ops}


def conversation_bench(model, tok, args) -> dict:
    prompts, messages = conversation_prompts(tok, args.turns, args.turn_tokens)
    extends = all(prompts[i] == prompts[i + 1][: len(prompts[i])] for i in range(len(prompts) - 1))
    lens = [len(p) for p in prompts]
    # warm-up: two short turns in both modes (first-call allocations are not what is measured)
    for reuse in (True, False):
        run_conversation(model, prompts[:2], reuse, args.reply_tokens)
    runs: dict[str, list[dict]] = {"reuse_on": [], "reuse_off": []}
    for r in range(args.conversation_repeats):
        for mode in ("reuse_on", "reuse_off") if r % 2 == 0 else ("reuse_off", "reuse_on"):
            runs[mode].append(clean(
                lambda mode=mode: run_conversation(model, prompts, mode == "reuse_on", args.reply_tokens),
                args, f"conversation {mode}"))
            log(f"    conversation {mode} repeat {r + 1}: turn 1 {1000 * runs[mode][-1]['ttft_s'][0]:.1f} ms,"
                f" turn {args.turns} {1000 * runs[mode][-1]['ttft_s'][-1]:.1f} ms")
    out: dict = {
        "assistant_text": "fixed (not the model's reply; see the module doc)",
        "system_prompt": messages[0]["content"],
        "turn_text_tokens": args.turn_tokens,
        "reply_tokens": args.reply_tokens,
        "repeats": args.conversation_repeats,
        "prompt_extends_previous": extends,
        "prompt_tokens": lens,
        "new_prompt_tokens": [lens[0]] + [lens[i] - lens[i - 1] for i in range(1, len(lens))],
    }
    for mode, rs in runs.items():
        med = [statistics.median(r["ttft_s"][i] for r in rs) for i in range(len(prompts))]
        cached = rs[0]["cached"]
        assert all(r["cached"] == cached for r in rs), "cached tokens differ between repeats"
        bd_keys = rs[0]["breakdown"][0].keys()
        bd = [{k: round(statistics.median(r["breakdown"][i][k] for r in rs), 3) for k in bd_keys}
              for i in range(len(prompts))]
        out[mode] = {
            "ttft_ms": [round(1000 * x, 3) for x in med],
            "ttft_ms_repeats": [[round(1000 * x, 3) for x in r["ttft_s"]] for r in rs],
            "cached_prompt_tokens": cached,
            "prefilled_tokens": [n - c for n, c in zip(lens, cached, strict=True)],
            "prefill_breakdown_ms": bd,
            "ratio_last_first": round(med[-1] / med[0], 3),
            # turn 1 prefills the system prompt and one user message; every later turn also the
            # assistant text (~2x the tokens): turn 2 is the baseline with the same prefill size
            "ratio_last_second": round(med[-1] / med[1], 3) if len(med) > 1 else None,
            "background_load": [r["background_load"] for r in rs],
        }
    out["first_tokens_match"] = runs["reuse_on"][0]["first_token"] == runs["reuse_off"][0]["first_token"]
    out["ttft_speedup_last_turn"] = round(out["reuse_off"]["ttft_ms"][-1] / out["reuse_on"]["ttft_ms"][-1], 2)
    out["goal"] = {"ratio_max": TTFT_RATIO_GOAL, "ratio_reuse_on": out["reuse_on"]["ratio_last_first"],
                   "met": out["reuse_on"]["ratio_last_first"] <= TTFT_RATIO_GOAL}
    return out


def decode_bench(model, tok, args) -> dict:
    out: dict = {}
    max_c = max(args.concurrency)
    prompts = decode_prompts(tok, max_c, args.prompt_tokens)
    run_batch(make_engine(model, max_batch=max_c), prompts[:1], min(4, args.new_tokens))  # warm-up
    for c in args.concurrency:
        reps = [clean(lambda c=c: run_batch(make_engine(model, max_batch=max(c, 16)), prompts[:c], args.new_tokens),
                      args, f"decode c={c}") for _ in range(args.decode_repeats)]
        reps.sort(key=lambda r: r["tokens_per_s"])
        best = reps[len(reps) // 2]  # the median run
        best["tokens_per_s_repeats"] = [r["tokens_per_s"] for r in reps]
        out[f"concurrency_{c}"] = best
        log(f"    decode c={c}: {best['tokens_per_s']:.1f} tok/s, step p50 {best['step_latency_ms']['p50']:.1f} ms")
    return out


def long_context_prompts(tok, n: int, context: int) -> list[list[int]]:
    """``n`` prompts of ``context`` tokens sharing all but the last 16 (prefix reuse shares the prefill)."""
    shared = decode_prompts(tok, 1, context - 16)[0]
    tails = decode_prompts(tok, n, 17)
    return [shared + t[1:] for t in tails]


def long_context_bench(model, tok, args, profile: bool) -> dict:
    out: dict = {"context_tokens": args.long_context, "new_tokens": args.long_new_tokens}
    for c in (1, max(args.concurrency)):
        prompts = long_context_prompts(tok, c, args.long_context)

        def run(c=c, prompts=prompts) -> dict:
            eng = make_engine(model, max_batch=c)
            if not profile:
                return run_batch(eng, prompts, args.long_new_tokens)
            with instrumented(eng, model) as timers:
                return run_batch(eng, prompts, args.long_new_tokens, timers)

        out[f"concurrency_{c}"] = r = clean(run, args, f"long context c={c}")
        log(f"    long context {args.long_context} c={c}: step p50 {r['step_latency_ms']['p50']:.1f} ms")
    return out


def profile_bench(model, tok, args) -> dict:
    """Decode runs with timers (slightly slower than the clean runs: hooks on every module) and
    torch.profiler windows over decode steps at the highest concurrency."""
    out: dict = {}
    max_c = max(args.concurrency)
    prompts = decode_prompts(tok, max_c, args.prompt_tokens)
    for c in sorted({1, max_c}):

        def run(c=c) -> dict:
            eng = make_engine(model, max_batch=max(c, 16))
            with instrumented(eng, model) as timers:
                return run_batch(eng, prompts[:c], args.new_tokens, timers)

        r = clean(run, args, f"profile c={c}")
        out[f"decode_concurrency_{c}"] = {"step_latency_ms": r["step_latency_ms"], **r["breakdown"],
                                          "background_load": r["background_load"]}
    out[f"torch_profiler_decode_concurrency_{max_c}"] = clean(
        lambda: profile_ops(make_engine(model, max_batch=max_c), prompts, 8), args, "torch profiler")
    if args.turns >= 2:
        prompts_c, _ = conversation_prompts(tok, args.turns, args.turn_tokens)
        out["torch_profiler_conversation_prefill_reuse_on"] = clean(
            lambda: run_conversation(model, prompts_c, True, args.reply_tokens, (2, args.turns))["ops"],
            args, "torch profiler conversation")
    if args.long_context:
        lp = long_context_prompts(tok, max_c, args.long_context)
        out[f"torch_profiler_long_context_concurrency_{max_c}"] = clean(
            lambda: profile_ops(make_engine(model, max_batch=max_c), lp, 4), args, "torch profiler long context")
    return out


# =================================================================================================
# driver
# =================================================================================================
def ensure_checkpoint(preset: str, checkpoints: Path | None, work: Path) -> Path:
    if checkpoints is not None and (checkpoints / preset / COMPONENT).is_dir():
        return checkpoints / preset / COMPONENT
    from export.tiny import write_tiny

    root = work / preset
    write_tiny(root, components=[COMPONENT], full_size=(preset == "100m"), progress=lambda m: log(f"  {m}"))
    return root / COMPONENT


def bench_preset(preset: str, ckpt: Path, args) -> dict:
    import torch

    from stepaudio.llm.config import PRESETS as CONFIG_PRESETS
    from stepaudio.llm.loader import load_step1
    from stepaudio.llm.text_tokenizer import TextTokenizer

    t = time.perf_counter()
    model = load_step1(ckpt, dtype=args.dtype)
    load_s = time.perf_counter() - t
    tok = TextTokenizer(ckpt)
    cfg = model.config
    dims = ("hidden_size", "intermediate_size", "num_attention_heads", "num_attention_groups", "num_hidden_layers")
    name = next((n for n, p in CONFIG_PRESETS.items() if all(getattr(p, d) == getattr(cfg, d) for d in dims)), None)
    n_params = sum(p.numel() for p in model.parameters())
    res: dict = {"model": {
        "config_preset": name, "parameters": n_params,
        "embed_and_lm_head_parameters": model.lm_head.weight.numel() + model.model.embed_tokens.weight.numel(),
        **{d: getattr(cfg, d) for d in dims}, "vocab_size": cfg.vocab_size,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "load_s": round(load_s, 2),
        "torch_threads": torch.get_num_threads(),
    }}
    log(f"  {preset}: {name}, {n_params / 1e6:.1f} M parameters, loaded in {load_s:.1f} s")
    log("  decode throughput ...")
    res["decode"] = decode_bench(model, tok, args)
    log("  conversation TTFT ...")
    res["conversation"] = conversation_bench(model, tok, args)
    if args.long_context:
        log("  long-context decode ...")
        res["decode_long_context"] = long_context_bench(model, tok, args, profile=not args.no_profile)
    if not args.no_profile:
        log("  profile ...")
        res["profile"] = profile_bench(model, tok, args)
    res["peak_rss_mb"] = peak_rss_mb()
    del model
    gc.collect()
    return res


def _loads(x) -> Iterator[dict]:
    """Every background_load record in a result tree."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "background_load":
                yield from (v if isinstance(v, list) else [v])
            else:
                yield from _loads(v)
    elif isinstance(x, list):
        for v in x:
            yield from _loads(v)


def load_summary(r: dict, max_share: float) -> dict:
    shares = [b["other_cpu_share"] for b in _loads(r)]
    return {"runs": len(shares), "max_other_cpu_share": max(shares, default=0.0),
            "disturbed_runs": sum(s > max_share for s in shares)}


def summarize(results: dict, args) -> dict:
    concurrency = args.concurrency
    out = {}
    for preset, r in results.items():
        conv = r["conversation"]
        out[preset] = {
            "tokens_per_s": {str(c): r["decode"][f"concurrency_{c}"]["tokens_per_s"] for c in concurrency},
            "decode_tokens_per_s": {str(c): r["decode"][f"concurrency_{c}"]["decode_tokens_per_s"]
                                    for c in concurrency},
            "step_latency_ms_p50": {str(c): r["decode"][f"concurrency_{c}"]["step_latency_ms"]["p50"]
                                    for c in concurrency},
            "prompt_tokens_first_last_turn": [conv["prompt_tokens"][0], conv["prompt_tokens"][-1]],
            "ttft_ms_reuse_on_first_last": [conv["reuse_on"]["ttft_ms"][0], conv["reuse_on"]["ttft_ms"][-1]],
            "ttft_ms_reuse_off_first_last": [conv["reuse_off"]["ttft_ms"][0], conv["reuse_off"]["ttft_ms"][-1]],
            "ttft_ratio_reuse_on": conv["reuse_on"]["ratio_last_first"],
            "ttft_ratio_reuse_off": conv["reuse_off"]["ratio_last_first"],
            "ttft_ratio_last_second_reuse_on": conv["reuse_on"]["ratio_last_second"],
            "ttft_goal_met": conv["goal"]["met"],
            "background_load": load_summary(r, args.max_other_share),
        }
    return out


def print_tables(results: dict, args) -> None:
    p = print
    for preset, r in results.items():
        m = r["model"]
        p(f"\n== {preset}: {m['config_preset']}, {m['parameters'] / 1e6:.1f} M params "
          f"({m['embed_and_lm_head_parameters'] / 1e6:.1f} M embed + lm_head), {m['dtype']}, "
          f"{m['torch_threads']} threads ==")
        p(f"decode ({args.prompt_tokens}-token prompts, {args.new_tokens} new tokens each, greedy, median of "
          f"{args.decode_repeats})")
        p(f"  {'conc':>4}  {'tok/s e2e':>10}  {'tok/s decode':>12}  {'step p50 ms':>11}  {'step p99 ms':>11}"
          f"  {'TTFT p50 ms':>11}")
        for c in args.concurrency:
            d = r["decode"][f"concurrency_{c}"]
            p(f"  {c:>4}  {d['tokens_per_s']:>10.1f}  {d['decode_tokens_per_s']:>12.1f}  "
              f"{d['step_latency_ms']['p50']:>11.2f}  {d['step_latency_ms']['p99']:>11.2f}  {d['ttft_ms']['p50']:>11.1f}")
        conv = r["conversation"]
        on, off = conv["reuse_on"], conv["reuse_off"]
        p(f"conversation TTFT (ms, median of {conv['repeats']}; prompt extends the previous one: "
          f"{conv['prompt_extends_previous']})")
        p(f"  {'turn':>4}  {'prompt':>6}  {'cached':>6}  {'prefilled':>9}  {'TTFT on':>8}  {'TTFT off':>8}  "
          f"{'off/on':>6}   on: lookup / forward / insert / other ms")
        for i, n in enumerate(conv["prompt_tokens"]):
            b = on["prefill_breakdown_ms"][i]
            p(f"  {i + 1:>4}  {n:>6}  {on['cached_prompt_tokens'][i]:>6}  {on['prefilled_tokens'][i]:>9}  "
              f"{on['ttft_ms'][i]:>8.1f}  {off['ttft_ms'][i]:>8.1f}  {off['ttft_ms'][i] / on['ttft_ms'][i]:>6.2f}"
              f"   {b['cache_lookup']:.1f} / {b['forward']:.1f} / {b['cache_insert']:.1f} / "
              f"{b['prefill_other'] + b['sampling'] + b['step_other']:.1f}")
        fwd = [k for k in on["prefill_breakdown_ms"][0] if k.startswith("fwd_")]
        for i in sorted({1, min(2, len(conv["prompt_tokens"])), len(conv["prompt_tokens"])}):
            b = on["prefill_breakdown_ms"][i - 1]
            p(f"  turn {i} forward (reuse on) {b['forward']:.1f} ms: "
              + ", ".join(f"{k[4:]} {b[k]:.1f}" for k in fwd))
        g = conv["goal"]
        p(f"  TTFT turn {len(conv['prompt_tokens'])} / turn 1: reuse on {on['ratio_last_first']:.2f} "
          f"(goal <= {g['ratio_max']}: {'met' if g['met'] else 'NOT met'}), reuse off {off['ratio_last_first']:.2f}")
        if on["ratio_last_second"] is not None:
            p(f"  TTFT turn {len(conv['prompt_tokens'])} / turn 2 (same number of prefilled tokens): "
              f"reuse on {on['ratio_last_second']:.2f}, reuse off {off['ratio_last_second']:.2f}")
        bl = load_summary(r, args.max_other_share)
        p(f"  other processes: at most {100 * bl['max_other_cpu_share']:.0f}% of the CPU during a run, "
          f"{bl['disturbed_runs']} of {bl['runs']} runs above {100 * args.max_other_share:.0f}%")
        lc = r.get("decode_long_context")
        if lc:
            for k, v in lc.items():
                if k.startswith("concurrency_"):
                    p(f"long context {lc['context_tokens']} tokens, {k.replace('_', ' ')}: step p50 "
                      f"{v['step_latency_ms']['p50']:.1f} ms, {v['decode_tokens_per_s']:.1f} tok/s decode")
        prof = r.get("profile")
        sections = []
        if prof:
            sections += [(k, v) for k, v in prof.items() if k.startswith("decode_concurrency_")]
        if lc and "breakdown" in lc.get(f"concurrency_{max(args.concurrency)}", {}):
            sections.append((f"long_context_{lc['context_tokens']}_concurrency_{max(args.concurrency)}",
                             lc[f"concurrency_{max(args.concurrency)}"]["breakdown"]))
        for k, v in sections:
            top = sorted(v["ms_per_step"].items(), key=lambda kv: -kv[1])
            p(f"profile {k} ({v['step_ms']:.1f} ms/step): "
              + ", ".join(f"{n} {ms:.1f} ({100 * v['share'][n]:.0f}%)" for n, ms in top if ms >= 0.05))
        def ops(v: dict) -> str:
            return ", ".join(f"{o['op'][6:]} {100 * o['share_of_aten']:.0f}%" for o in v["top_ops"][:8])

        for k, v in (prof or {}).items():
            if k.startswith("torch_profiler_decode") or k.startswith("torch_profiler_long"):
                p(f"{k} ({v['context_tokens']}-token context, {v['aten_self_cpu_ms_per_step']:.1f} ms aten/step): "
                  + ops(v))
            elif k.startswith("torch_profiler_conversation"):
                for turn, t in v.items():
                    if turn.startswith("turn_"):
                        p(f"{k} {turn} ({t['prompt_tokens']} tokens, {t['cached_prompt_tokens']} cached, "
                          f"{t['aten_self_cpu_ms_per_step']:.1f} ms aten): " + ops(t))


def plot(results: dict, args, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for preset, r in results.items():
        tps = [r["decode"][f"concurrency_{c}"]["tokens_per_s"] for c in args.concurrency]
        ax1.plot(args.concurrency, tps, "o-", label=f"{preset} ({r['model']['parameters'] / 1e6:.0f} M)")
        conv = r["conversation"]
        turns = range(1, len(conv["prompt_tokens"]) + 1)
        for mode, style in (("reuse_on", "o-"), ("reuse_off", "s--")):
            ax2.plot(turns, conv[mode]["ttft_ms"], style, label=f"{preset}, prefix reuse {mode[6:]}")
    ax1.set(xscale="log", xlabel="concurrent requests", ylabel="generated tokens/s (end to end)",
            title=f"decode throughput ({args.new_tokens} new tokens, {args.threads} threads)")
    ax1.set_xticks(args.concurrency, [str(c) for c in args.concurrency])
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.set(yscale="log", xlabel="turn", ylabel="TTFT (ms)", title="time to first token as the chat grows")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llm_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", type=csv_of(str), default=["tiny", "100m"], help="tiny,100m")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=NAME, help="result file name (without .json)")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="use DIR/<preset>/Step-Audio-Chat when present (else written to a temporary folder)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--concurrency", type=csv_of(int), default=[1, 4, 16])
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--turns", type=int, default=16)
    p.add_argument("--turn-tokens", type=int, default=40, help="text tokens of each user / assistant message")
    p.add_argument("--reply-tokens", type=int, default=2, help="tokens generated per turn")
    p.add_argument("--conversation-repeats", type=int, default=5)
    p.add_argument("--long-context", type=int, default=1024, help="context of the long-context decode (0: skip)")
    p.add_argument("--long-new-tokens", type=int, default=16)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--wait-quiet-s", type=float, default=30.0,
                   help="before each measured run, wait up to this long for other processes to go quiet (0: no wait)")
    p.add_argument("--max-other-share", type=float, default=0.1,
                   help="a run during which other processes used more of the CPU counts as disturbed")
    p.add_argument("--retries", type=int, default=2, help="repeats of a disturbed run (the cleanest is kept)")
    args = p.parse_args(argv)
    bad = [x for x in args.presets if x not in PRESETS]
    if bad:
        p.error(f"unknown preset(s) {bad}; known: {', '.join(PRESETS)}")
    if args.long_context and args.long_context < 2 * BLOCK_SIZE + 1:
        p.error(f"--long-context must be 0 or > {2 * BLOCK_SIZE}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        for preset in args.presets:
            log(f"{preset}: checkpoint ...")
            ckpt = ensure_checkpoint(preset, args.checkpoints, Path(tmp))
            results[preset] = bench_preset(preset, ckpt, args)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update({"block_size": BLOCK_SIZE, "prefix_cache_tokens": PREFIX_CACHE_TOKENS, "sampling": "greedy",
                   "stop_ids": [], "decode_prefix_reuse": True, "preset_map": PRESETS})
    doc_results = {
        "presets": results,
        "summary": summarize(results, args),
        "goal": {"ttft_ratio_max": TTFT_RATIO_GOAL,
                 "met": {k: v["conversation"]["goal"]["met"] for k, v in results.items()}},
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    png = None
    if not args.no_plot:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        png = plot(results, args, Path(args.out) / f"{args.name}.png")
    doc_results["plot"] = png.name if png else None
    path = write_result(args.name, config, doc_results, args.out, machine=machine_info())
    print_tables(results, args)
    print(f"\nwrote {path}" + (f" and {png}" if png else "") + f" in {doc_results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
