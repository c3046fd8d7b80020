"""Streaming pipeline vs a sequential (upstream-style) pipeline through Triton: time to first audio and total
time after the user stops speaking.

    python -m benchmarks.pipeline_bench [--variants audio_only] [--repeats 3] [--triton HOST:PORT] ...

Both pipelines answer the same spoken turns (espeak-ng utterances, 16 kHz) with the same models, seeds and
limits, alternating run by run in one process against one tritonserver (``cpu`` preset, tiny checkpoints;
``benchmarks.stack``):

* sequential, as the reference app does it: after the user stops, tokenize the whole utterance
  (``audio_tokenizer``, offline), generate the whole reply (``chat_llm``, all chunks collected), then
  synthesise the whole reply (``tts`` with ``stream=false``: one chunk at the end). First audio = total.
* streaming, as the controller does it: while the user speaks the audio goes to ``audio_tokenizer_stream``
  in 100 ms chunks (not timed: it overlaps the speech); at the end of speech the stream is flushed,
  ``chat_llm`` streams, the text is cut into clauses by ``controller.clauses.ClauseSegmenter`` (the
  controller's policy) and each clause goes to ``tts`` (streaming) as soon as it is complete, one clause
  after the other in a second thread while the chat goes on.

The clock starts at the end of speech (sequential: the offline tokenize request is sent; streaming: the
flush is sent). Same reply: the offline request uses the stream's segment length and normalisation
(``segment_ms``, ``normalization`` inputs), so both prompts hold the same audio tokens, and both chats
run with the same seed and ``max_new_tokens``; the JSON records that tokens and reply texts are equal.
Same amount of speech: a random-weight model has no idea how long its text takes to say, so each TTS
request gets ``--speech-tokens-per-chat-token`` x (chat tokens of its text) as ``max_new_tokens``
(default 10: 0.24 s per chat token, one Chinese character at ~4 per second). With the ``audio_only``
variant (default) the TTS LM emits only speech tokens and never stops early, so both pipelines speak the
same number of speech tokens. With ``stock`` the TTS LM mostly emits text ids that are dropped (see
``benchmarks.stack``); ``--variants stock,audio_only`` measures both, one server each.

Writes ``<out>/pipeline_bench.json`` and ``<out>/pipeline_bench.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, csv_of, machine_info, percentiles, write_result

NAME = "pipeline_bench"
RATE_HZ = 16000
CHUNK_MS = 100
SPEAKER = "Tingting"
GOAL_RATIO = 5.0
UTTERANCES = (
    "What is the weather like today in London?",
    "Can you recommend a good book for a long train journey?",
    "Please tell me a short joke about cats.",
)
SYSTEM_PROMPT = "适配用户的语言，用简短口语化的文字回答"  # the controller's default instructions


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def messages(audio_tokens) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": {"type": "audio", "tokens": [65536 + int(t) for t in audio_tokens]}}]


def _chat_inputs(args, audio_tokens):
    from client.chat import build_inputs

    return build_inputs(messages=messages(audio_tokens), max_new_tokens=args.max_new_tokens, seed=args.seed,
                        temperature=args.temperature)


def _tts_inputs(args, text: str, n_chat_tokens: int, stream: bool, seed: int):
    from client.tts import tts_inputs

    return tts_inputs(text, speaker=SPEAKER, stream=stream, seed=seed,
                      max_new_tokens=max(1, round(args.speech_tokens_per_chat_token * n_chat_tokens)))


# -- the two pipelines -------------------------------------------------------------------------------
def sequential(client, audio: np.ndarray, args) -> dict:
    from client.chat import stream_generate
    from client.tokenize import tokenize
    from client.tts import stream_tts

    t0 = time.perf_counter()
    tok = tokenize(client, audio, RATE_HZ, segment_ms=args.segment_ms, normalization=args.normalization)
    t_tok = time.perf_counter()
    text, n_tokens, t_first_token = "", 0, None
    for ch in stream_generate(client, "chat_llm", _chat_inputs(args, tok.audio_tokens)):
        if t_first_token is None and ch.token_ids:
            t_first_token = time.perf_counter()
        text += ch.text
        n_tokens = ch.completion_tokens or n_tokens
    t_chat = time.perf_counter()
    samples, rate = 0, None
    for a, r, _t in stream_tts(client, _tts_inputs(args, text, n_tokens, False, args.seed), timeout_s=600):
        samples, rate = samples + a.size, r
    t_end = time.perf_counter()
    return {"audio_tokens": [int(x) for x in tok.audio_tokens], "text": text, "chat_tokens": n_tokens,
            "tts_requests": 1, "speech_tokens": max(1, round(args.speech_tokens_per_chat_token * n_tokens)),
            "audio_s": round(samples / rate, 4) if rate else 0.0,
            "first_audio_s": round(t_end - t0, 4), "total_s": round(t_end - t0, 4),
            "stages_s": {"tokenize": round(t_tok - t0, 4), "chat_first_token": round(t_first_token - t0, 4),
                         "chat_done": round(t_chat - t0, 4), "tts_done": round(t_end - t0, 4)}}


def streaming(client, tts_client, audio: np.ndarray, args) -> dict:
    from client.chat import stream_generate
    from client.tokenize import TokenizerStream
    from client.tts import stream_tts
    from controller.clauses import ClauseSegmenter

    step = RATE_HZ * CHUNK_MS // 1000
    stream = TokenizerStream(client, RATE_HZ)
    tokens: list[int] = []
    for i in range(0, len(audio), step):  # while the user speaks: not timed
        tokens += stream.send(audio[i:i + step]).audio_tokens.tolist()
    clauses: queue.Queue = queue.Queue()
    tts_log: dict = {"first_audio": None, "samples": 0, "rate": None, "clauses": [], "error": None}

    def speak() -> None:  # one clause after the other, as soon as each is complete
        try:
            k = 0
            while (item := clauses.get()) is not None:
                text, n_tok, t_ready = item
                t_sent = time.perf_counter()
                first = None
                for a, rate, _t in stream_tts(tts_client, _tts_inputs(args, text, n_tok, True, args.seed + k),
                                              timeout_s=600):
                    if a.size and first is None:
                        first = time.perf_counter()
                        if tts_log["first_audio"] is None:
                            tts_log["first_audio"] = first
                    tts_log["samples"] += a.size
                    tts_log["rate"] = rate
                tts_log["clauses"].append({"chars": len(text), "chat_tokens": n_tok, "ready": t_ready, "sent": t_sent,
                                           "first_audio": first, "done": time.perf_counter()})
                k += 1
        except Exception as exc:  # reported in the result
            tts_log["error"] = repr(exc)
            while clauses.get() is not None:
                pass

    speaker = threading.Thread(target=speak, name="tts-clauses")
    speaker.start()
    t0 = time.perf_counter()
    try:
        tokens += stream.finish().audio_tokens.tolist()
        t_flush = time.perf_counter()
        seg = ClauseSegmenter()
        text, n_tokens, t_first_token = "", 0, None
        ends: list[tuple[int, int]] = []  # (chars so far, chat tokens so far) after every chunk
        cut_chars, cut_tokens = 0, 0

        def tokens_upto(chars: int) -> int:
            return next((n for c, n in ends if c >= chars), n_tokens)

        def emit(clause: str) -> None:
            nonlocal cut_chars, cut_tokens
            cut_chars += len(clause)
            upto = tokens_upto(cut_chars)
            clauses.put((clause, max(1, upto - cut_tokens), time.perf_counter()))
            cut_tokens = upto

        for ch in stream_generate(client, "chat_llm", _chat_inputs(args, tokens)):
            if t_first_token is None and ch.token_ids:
                t_first_token = time.perf_counter()
            text += ch.text
            n_tokens += len(ch.token_ids)
            ends.append((len(text), n_tokens))
            for clause in seg.feed(ch.text):
                emit(clause)
        rest = seg.finish()
        for clause in rest:
            emit(clause)
        t_chat = time.perf_counter()
    finally:
        clauses.put(None)
        speaker.join()
    t_end = time.perf_counter()
    if tts_log["error"]:
        raise RuntimeError(f"streaming tts failed: {tts_log['error']}")
    cl = tts_log["clauses"]

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 4)

    return {"audio_tokens": tokens, "text": text, "chat_tokens": n_tokens, "tts_requests": len(cl),
            "speech_tokens": sum(max(1, round(args.speech_tokens_per_chat_token * c["chat_tokens"])) for c in cl),
            "audio_s": round(tts_log["samples"] / tts_log["rate"], 4) if tts_log["rate"] else 0.0,
            "first_audio_s": rel(tts_log["first_audio"]), "total_s": round(t_end - t0, 4),
            "stages_s": {"flush": rel(t_flush), "chat_first_token": rel(t_first_token),
                         "first_clause_ready": rel(cl[0]["ready"]) if cl else None,
                         "first_audio": rel(tts_log["first_audio"]), "chat_done": rel(t_chat),
                         "tts_done": rel(t_end)},
            "clauses": [{"chars": c["chars"], "chat_tokens": c["chat_tokens"], "ready_s": rel(c["ready"]),
                         "sent_s": rel(c["sent"]), "first_audio_s": rel(c["first_audio"]), "done_s": rel(c["done"])}
                        for c in cl]}


# -- one variant -------------------------------------------------------------------------------------
def bench_variant(url: str, pgid: int | None, utterances: list[np.ndarray], args) -> dict:
    import tritonclient.grpc as grpcclient

    from benchmarks.tts_bench import Load

    client, tts_client = grpcclient.InferenceServerClient(url), grpcclient.InferenceServerClient(url)
    try:
        log("  warm-up (both pipelines once) ...")
        sequential(client, utterances[0], args)
        streaming(client, tts_client, utterances[0], args)
        runs: dict[str, list[dict]] = {"sequential": [], "streaming": []}
        for r in range(args.repeats):
            for u, audio in enumerate(utterances):
                order = ("sequential", "streaming") if (r + u) % 2 == 0 else ("streaming", "sequential")
                for mode in order:
                    with Load(pgid) as ld:
                        out = sequential(client, audio, args) if mode == "sequential" else \
                            streaming(client, tts_client, audio, args)
                    out.update(utterance=u, repeat=r, load=ld.result())
                    runs[mode].append(out)
                s, t = runs["sequential"][-1], runs["streaming"][-1]
                if len(runs["sequential"]) == len(runs["streaming"]):
                    log(f"    utterance {u} repeat {r}: first audio sequential {s['first_audio_s']:.3f} s, "
                        f"streaming {t['first_audio_s']:.3f} s; total {s['total_s']:.3f} / {t['total_s']:.3f} s; "
                        f"loadavg {os.getloadavg()[0]:.1f}")
    finally:
        client.close()
        tts_client.close()
    return summarize(runs)


def _median_ms(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]  # a run whose TTS said nothing has no first audio
    return round(1000 * statistics.median(xs), 1) if xs else None


def summarize(runs: dict[str, list[dict]]) -> dict:
    seq, st = runs["sequential"], runs["streaming"]
    pairs = list(zip(seq, st, strict=True))
    same = {
        "audio_tokens_equal": all(a["audio_tokens"] == b["audio_tokens"] for a, b in pairs),
        "reply_text_equal": all(a["text"] == b["text"] for a, b in pairs),
        "chat_tokens_equal": all(a["chat_tokens"] == b["chat_tokens"] for a, b in pairs),
        "speech_tokens": [[a["speech_tokens"], b["speech_tokens"]] for a, b in pairs],
    }
    out: dict = {"same_reply": same}
    for mode, rs in runs.items():
        out[mode] = {
            "runs_without_audio": sum(r["first_audio_s"] is None for r in rs),
            "first_audio_ms": percentiles([r["first_audio_s"] for r in rs if r["first_audio_s"] is not None], 1000, 1),
            "total_ms": percentiles([r["total_s"] for r in rs], 1000, 1),
            "audio_s": percentiles([r["audio_s"] for r in rs], 1, 3),
            "tts_requests": percentiles([r["tts_requests"] for r in rs], 1, 1),
            "stages_ms_median": {k: _median_ms([r["stages_s"][k] for r in rs]) for k in rs[0]["stages_s"]},
            "runs": [{k: v for k, v in r.items() if k != "audio_tokens"} for r in rs],
        }
    s_fa, t_fa = out["sequential"]["first_audio_ms"], out["streaming"]["first_audio_ms"]
    s_tot, t_tot = out["sequential"]["total_ms"], out["streaming"]["total_ms"]
    paired = [a["first_audio_s"] / b["first_audio_s"] for a, b in pairs if a["first_audio_s"] and b["first_audio_s"]]
    ratio = s_fa["p50"] / t_fa["p50"] if s_fa.get("p50") and t_fa.get("p50") else None
    out["first_audio_ratio"] = {
        "p50_over_p50": round(ratio, 2) if ratio else None,
        "mean_over_mean": round(s_fa["mean"] / t_fa["mean"], 2) if ratio else None,
        "paired_runs": percentiles(paired, 1, 2),
        "goal": GOAL_RATIO, "met": bool(ratio and ratio >= GOAL_RATIO),
    }
    out["total_ratio"] = {"p50_over_p50": round(s_tot["p50"] / t_tot["p50"], 2)}
    loads = [r["load"] for rs in runs.values() for r in rs]
    out["load"] = {"max_other_cpu_share": max(x["other_cpu_share"] for x in loads),
                   "loadavg_1m": percentiles([x["loadavg_1m_before"] for x in loads], 1, 2)}
    return out


# -- plot ---------------------------------------------------------------------------------------------
def plot(results: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot")
        return None
    variants = [v for v in results["variants"]]
    fig, axes = plt.subplots(1, 1 + len(variants), figsize=(5 + 6 * len(variants), 4.5), squeeze=False)
    ax = axes[0][0]
    x = np.arange(len(variants))
    for k, (mode, color) in enumerate((("sequential", "tab:red"), ("streaming", "tab:green"))):
        for j, (metric, hatch) in enumerate((("first_audio_ms", None), ("total_ms", "//"))):
            vals = [results["variants"][v][mode][metric]["p50"] / 1000 for v in variants]
            lo = [results["variants"][v][mode][metric]["p50"] / 1000 - min(r[metric[:-3] + "_s"] or math.inf for r in
                  results["variants"][v][mode]["runs"]) for v in variants]
            hi = [results["variants"][v][mode][metric]["max"] / 1000 - results["variants"][v][mode][metric]["p50"]
                  / 1000 for v in variants]
            lo, hi = [max(0.0, e) for e in lo], [max(0.0, e) for e in hi]  # p50 is rounded to 0.1 ms
            ax.bar(x + (2 * k + j - 1.5) * 0.2, vals, 0.2, yerr=[lo, hi], color=color, hatch=hatch, alpha=0.85,
                   label=f"{mode}, {'first audio' if j == 0 else 'total'}", capsize=3)
    for i, v in enumerate(variants):
        ratio = results["variants"][v]["first_audio_ratio"]["p50_over_p50"]
        ax.annotate(f"first audio {ratio:.1f}x sooner" if ratio else "no audio", (i, 0), xytext=(0, -28), textcoords="offset points",
                    ha="center", fontsize=9)
    ax.set_xticks(x, [f"tiny, {v}" for v in variants])
    ax.set(ylabel="seconds after the end of speech (median, min-max)",
           title="streaming vs sequential pipeline")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    for i, v in enumerate(variants):
        ax = axes[0][i + 1]
        r = results["variants"][v]
        for row, mode in enumerate(("sequential", "streaming")):
            runs = r[mode]["runs"]
            med = sorted(runs, key=lambda q: q["total_s"])[len(runs) // 2]
            st = med["stages_s"]
            if mode == "sequential":
                segs = [("tokenize", 0, st["tokenize"], "tab:blue"),
                        ("chat", st["tokenize"], st["chat_done"], "tab:orange"),
                        ("tts (one chunk)", st["chat_done"], st["tts_done"], "tab:purple")]
            else:
                segs = [("flush", 0, st["flush"], "tab:blue"),
                        ("chat", st["flush"], st["chat_done"], "tab:orange")]
                for c in med["clauses"]:
                    segs.append(("tts clause", c["sent_s"], c["done_s"], "tab:purple"))
            for label, a, b, color in segs:
                ax.barh(row + (0.2 if label.startswith("tts") else -0.2), b - a, left=a, height=0.35, color=color,
                        edgecolor="white", label=label)
            fa = med["first_audio_s"]
            if fa is None:
                continue
            ax.plot([fa, fa], [row - 0.45, row + 0.45], "k-", lw=2)
            ax.annotate(f"first audio {fa:.2f} s", (fa, row + 0.45), fontsize=8, ha="left")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=True))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="lower right")
        ax.set_yticks([0, 1], ["sequential", "streaming"])
        ax.set(xlabel="seconds after the end of speech", title=f"median run, tiny {v}")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main ---------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", type=csv_of(str), default=["audio_only"], help="stock,audio_only (one server each)")
    p.add_argument("--repeats", type=int, default=3, help="passes over the utterances")
    p.add_argument("--utterances", type=int, default=len(UTTERANCES))
    p.add_argument("--max-new-tokens", type=int, default=32, help="chat tokens per reply")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speech-tokens-per-chat-token", type=float, default=10.0)
    p.add_argument("--segment-ms", type=int, default=2400, help="the stream's vq06 segment (deployment default)")
    p.add_argument("--normalization", default="running", help="the stream's normalisation (deployment default)")
    p.add_argument("--triton", default=None, help="use this running server (HOST:GRPC_PORT; one variant, unknown)")
    p.add_argument("--server-pgid", type=int, default=None, help="its process group (server CPU; optional)")
    p.add_argument("--served-variant", default="served", help="the name of --triton's variant in the results")
    p.add_argument("--checkpoints", default=None, help="tiny checkpoints folder (written when missing)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=NAME)
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.realtime_caller import utterance
    from benchmarks.stack import VARIANTS, BenchStack

    args = parse_args(argv)
    t_start = time.perf_counter()
    texts = list(UTTERANCES[: args.utterances])
    utterances, sources = [], set()
    for i, t in enumerate(texts):
        audio, src = utterance(t, i, RATE_HZ)
        utterances.append(audio)
        sources.add(src)
    results: dict = {"variants": {}, "loadavg_start": os.getloadavg()}
    variants = [args.served_variant] if args.triton else args.variants
    for v in variants:
        log(f"{v}: starting the stack ..." if not args.triton else f"using the server at {args.triton}")
        with BenchStack(v if v in VARIANTS else "audio_only", args.checkpoints, triton_url=args.triton) as stack:
            pgid = stack.triton.pid if stack.triton else args.server_pgid
            r = bench_variant(stack.grpc_url, pgid, utterances, args)
            r["stack"] = stack.info
        results["variants"][v] = r
        fa = r["first_audio_ratio"]
        log(f"  {v}: first audio p50 sequential {r['sequential']['first_audio_ms']['p50']:.0f} ms, streaming "
            f"{r['streaming']['first_audio_ms']['p50']:.0f} ms -> {fa['p50_over_p50']}x (goal {GOAL_RATIO}x: "
            f"{'met' if fa['met'] else 'NOT met'}); same reply text: {r['same_reply']['reply_text_equal']}")
    results["loadavg_end"] = os.getloadavg()
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    png = None
    if not args.no_plot:
        args.out.mkdir(parents=True, exist_ok=True)
        png = plot(results, args.out / f"{args.name}.png")
    results["plot"] = png.name if png else None
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(utterance_texts=texts, utterance_s=[round(len(a) / RATE_HZ, 3) for a in utterances],
                  audio_source=sorted(sources), chunk_ms=CHUNK_MS, speaker=SPEAKER, system_prompt=SYSTEM_PROMPT,
                  clause_policy="controller.clauses.ClausePolicy() defaults")
    path = write_result(args.name, config, results, args.out, machine=machine_info(include_torch=False))
    print(f"{'':22}{'first audio p50':>16}{'total p50':>11}   (ms after the end of speech)")
    for v, r in results["variants"].items():
        for mode in ("sequential", "streaming"):
            print(f"{v + ' ' + mode:<22}{r[mode]['first_audio_ms'].get('p50', math.nan):>16.0f}"
                  f"{r[mode]['total_ms']['p50']:>11.0f}")
        print(f"{v}: first audio {r['first_audio_ratio']['p50_over_p50']}x sooner streaming (goal {GOAL_RATIO}x); "
              f"same tokens {r['same_reply']['audio_tokens_equal']}, same text {r['same_reply']['reply_text_equal']}")
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
