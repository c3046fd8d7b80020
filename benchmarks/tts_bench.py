"""Speech synthesis: the Triton ``tts`` pipeline on the tiny preset, and full-size flow + HiFT on CPU.

    python -m benchmarks.tts_bench [--parts triton,token2wav] [--variants stock,audio_only] [--concurrency 1,4]
                                   [--repeats 3] [--threads 2] [--speech-s 10] [--checkpoints DIR] [--out DIR]

Part ``triton``: a real tritonserver on the ``cpu`` preset with the tiny checkpoints (Step-Audio-Tokenizer,
Step-Audio-TTS-3B and speakers; the chat model is left out), driven with ``client.tts``
(``tts_inputs`` / ``stream_tts``): built-in speaker ``Tingting``, the texts of ``TEXTS`` (tags included;
the RAP one goes to the Music decoder), a fixed seed per request, ``--repeats`` passes over the texts at
each concurrency (concurrency N: N requests sent together, one gRPC client each). Per request:

* ``first_chunk_s``: request sent -> first non-empty audio chunk received;
* ``total_s`` and ``audio_s``; ``rtf`` = total_s / audio_s (lower is better, 1.0 = real time);
* ``stall_s``: how long a player that starts at the first chunk and plays the chunks back to back
  would wait for audio (0: streaming kept ahead of playback).

Two checkpoint variants, one server each:

* ``stock``: the tiny preset as written by ``export.tiny``. Its random TTS LM emits mostly text ids
  (only 5120 of the 74752 ids are audio ids, ~8% of its output) which the pipeline drops, so it must
  generate ~12x more tokens than a trained model for the same speech: first-chunk latency and RTF are
  dominated by that, not by the serving stack.
* ``audio_only``: the same checkpoints with the TTS LM's ``lm_head`` rows of every non-audio id set to
  zero, so with top-k 50 it emits only audio ids (and never ``<|EOT|>``), one speech token per LM token
  as a trained model does. It runs to ``max_new_tokens``.

``--url HOST:PORT`` benchmarks an already running server instead (variant ``served``).

Part ``token2wav``: flow + HiFT alone, CosyVoice-300M-25Hz with random weights and the official
dimensions (``benchmarks.cosyvoice_full``), on ``--threads`` torch threads, PyTorch vs ONNX Runtime (the
flow estimator and the HiFT decoder from ``export.onnx_tts.export_cosyvoice_onnx``, swapped in with
``stepaudio.tts.onnx_modules.use_onnx``; the rest stays PyTorch; ONNX Runtime gets the same thread
count). Workload: ``--speech-s`` of seeded speech tokens (41.67/s, each 120 ms group 2 vq02 + 3 vq06
ids) after a ``--prompt-s`` voice prompt (random tokens, mel and x-vector). Offline: ``Token2Wav.offline``
(flow and vocoder time split); streaming: a ``Token2Wav.session`` with the default chunk policy fed
``--push-tokens`` tokens at a time as fast as it takes them (compute only: first-chunk compute, per-chunk
flow / vocoder time, RTF), and the stream's deviation from offline synthesis.

The machine is shared: every measurement records the load (``os.getloadavg``) and the CPU share that
*other* processes took (machine busy time minus this process's and the server's; see
``benchmarks.common.BackgroundLoad``); a measurement above ``--max-other-share`` is repeated up to
``--retries`` times and the cleanest one kept. Writes ``<out>/tts_bench.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    cpu_busy_s,
    csv_of,
    git_info,
    machine_info,
    model_cpu_s,
    own_cpu_s,
    peak_rss_mb,
    percentiles,
    write_result,
)
from stepaudio.tts.chunking import TOKENS_PER_SECOND  # light: no torch

NAME = "tts_bench"
SAMPLE_RATE_HZ = 22050
SPEAKER = "Tingting"
TEXTS = (
    "(高兴1)你好，今天天气不错。",
    "请在明天上午十点之前把报告发给我，谢谢。",
    "(四川话)这个火锅巴适得很，我们下回还来吃。",
    "(RAP)我们一起去海边，听海浪唱歌，看海鸥飞过。",
)
AUDIO_ID_OFFSET, N_AUDIO_IDS = 65536, 5120
SERVED_COMPONENTS = ("Step-Audio-Tokenizer", "Step-Audio-TTS-3B", "speakers")
TTS_DIR = "Step-Audio-TTS-3B"
DEPLOYMENT_SECTIONS = ("tts", "tts_lm", "token2wav", "speaker_embedding")  # recorded when the config has them


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# =================================================================================================
# load on the machine: ours, the server's, everyone else's
# =================================================================================================
def group_cpu_s(pgid: int | None) -> float:
    """CPU seconds (user + system) of the live processes in process group ``pgid``, all models together."""
    return sum(model_cpu_s(pgid).values())


class Load:
    """Wall time, our CPU, the server group's CPU and the rest of the machine's during a measurement."""

    def __init__(self, pgid: int | None = None):
        self.pgid = pgid

    def __enter__(self) -> Load:
        self.loadavg_before = os.getloadavg()
        self._t, self._busy, self._own, self._srv = time.perf_counter(), cpu_busy_s(), own_cpu_s(), group_cpu_s(
            self.pgid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t
        self.own_s = own_cpu_s() - self._own
        self.server_s = group_cpu_s(self.pgid) - self._srv if self.pgid else 0.0
        self.other_s = max(0.0, cpu_busy_s() - self._busy - self.own_s - self.server_s)
        self.loadavg_after = os.getloadavg()

    def result(self) -> dict:
        cores = os.cpu_count() or 1
        return {
            "wall_s": round(self.wall_s, 3),
            "own_cpu_s": round(self.own_s, 3),
            **({"server_cpu_s": round(self.server_s, 3)} if self.pgid else {}),
            "other_cpu_s": round(self.other_s, 3),
            "other_cpu_share": round(self.other_s / (self.wall_s * cores), 3) if self.wall_s else 0.0,
            "loadavg_1m_before": round(self.loadavg_before[0], 2),
            "loadavg_1m_after": round(self.loadavg_after[0], 2),
        }


def wait_quiet(max_wait_s: float, threshold: float, pgid: int | None = None, window_s: float = 2.0) -> dict:
    """Wait up to ``max_wait_s`` until other processes use less than ``threshold`` of the CPU."""
    waited, share = 0.0, None
    while True:
        with Load(pgid) as ld:
            time.sleep(window_s)
        share = ld.result()["other_cpu_share"]
        if share < threshold or waited >= max_wait_s:
            break
        if waited == 0:
            log(f"    waiting for a quiet machine (others use {100 * share:.0f}% of the CPU) ...")
        waited += window_s
    return {"other_cpu_share_before": share, "waited_s": round(waited, 1), "loadavg_1m": round(os.getloadavg()[0], 2)}


def clean(fn, args, label: str, pgid: int | None = None) -> dict:
    """Run ``fn`` (after waiting for quiet); repeat while others took more than --max-other-share of the
    CPU (up to --retries times); keep the cleanest run, with ``load`` and the other attempts' loads."""
    runs = []
    for attempt in range(args.retries + 1):
        before = wait_quiet(args.wait_quiet_s, args.max_other_share, pgid) if args.wait_quiet_s > 0 else {}
        with Load(pgid) as ld:
            r = fn()
        load = {**ld.result(), **before, "attempt": attempt + 1}
        if "errors" in r:
            load["errors"] = r["errors"]
        runs.append((r, load))
        if load["other_cpu_share"] <= args.max_other_share:
            break
        log(f"    {label}: other processes used {100 * load['other_cpu_share']:.0f}% of the CPU"
            + (", again" if attempt < args.retries else ""))
    r, load = min(runs, key=lambda x: x[1]["other_cpu_share"])
    r["load"] = load
    if len(runs) > 1:
        r["load_of_attempts"] = [x[1] for x in runs]
    return r


# =================================================================================================
# part 1: the tts pipeline through tritonserver
# =================================================================================================
def playback_stall_s(chunks: list[tuple[float, int]]) -> float:
    """Seconds a player starting at the first chunk's arrival would wait for later chunks
    (``chunks``: (arrival s, samples) in order, non-empty)."""
    stall, end = 0.0, None
    for t, n in chunks:
        if end is None:
            end = t
        elif t > end:
            stall += t - end
            end = t
        end += n / SAMPLE_RATE_HZ
    return stall


def one_request(url: str, text: str, seed: int, max_new_tokens: int, barrier: threading.Barrier | None,
                timeout_s: float = 300.0) -> dict:
    import tritonclient.grpc as grpcclient

    from client.tts import stream_tts, tts_inputs

    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = tts_inputs(text, speaker=SPEAKER, seed=seed, max_new_tokens=max_new_tokens)
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        chunks, rates = [], set()
        for audio, rate, t_s in stream_tts(client, inputs, timeout_s=timeout_s):
            rates.add(rate)
            if audio.size:
                chunks.append((t_s, int(audio.size)))
        total = time.perf_counter() - t0
    finally:
        client.close()
    if rates - {SAMPLE_RATE_HZ}:
        raise RuntimeError(f"unexpected sample rate(s) {sorted(rates)}")
    samples = sum(n for _, n in chunks)
    audio_s = samples / SAMPLE_RATE_HZ
    return {
        "text": text, "seed": seed, "chunks": len(chunks),
        "first_chunk_s": round(chunks[0][0], 4) if chunks else None,
        "total_s": round(total, 4), "audio_s": round(audio_s, 4),
        "rtf": round(total / audio_s, 4) if audio_s else None,
        "stall_s": round(playback_stall_s(chunks), 4) if chunks else None,
        "chunk_arrival_s": [round(t, 4) for t, _ in chunks],
        "chunk_audio_s": [round(n / SAMPLE_RATE_HZ, 4) for _, n in chunks],
    }


def run_round(url: str, jobs: list[tuple[str, int]], max_new_tokens: int, timeout_s: float = 300.0) -> dict:
    """``jobs`` (text, seed) sent together; returns the per-request results (a failed request, e.g. no
    response within ``timeout_s``, as its error) and the round's wall time."""
    barrier = threading.Barrier(len(jobs)) if len(jobs) > 1 else None
    outs: list = [None] * len(jobs)

    def go(i: int) -> None:
        try:
            outs[i] = one_request(url, *jobs[i], max_new_tokens, barrier, timeout_s)
        except BaseException as exc:  # recorded below
            outs[i] = exc
            if barrier is not None:
                barrier.abort()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    reqs = [{"text": job[0], "seed": job[1], "error": f"{type(o).__name__}: {o}"[:500]}
            if isinstance(o, BaseException) else o for job, o in zip(jobs, outs, strict=True)]
    errors = sum("error" in r for r in reqs)
    if errors:
        log(f"    {errors} of {len(jobs)} requests failed: {next(r['error'] for r in reqs if 'error' in r)}")
    return {"requests": reqs, "wall_s": round(wall, 4), "errors": errors}


def summarize_requests(reqs: list[dict], rounds: list[dict]) -> dict:
    failed = [r for r in reqs if "error" in r]
    reqs = [r for r in reqs if "error" not in r]
    audio = sum(r["audio_s"] for r in reqs)
    with_audio = [r for r in reqs if r["audio_s"]]
    return {
        "requests": len(reqs) + len(failed),
        "failed_requests": len(failed),
        # rounds repeated because others loaded the machine: failures in the attempts that were not kept
        "failed_requests_in_repeated_attempts": sum(a.get("errors", 0) for x in rounds
                                                    for a in x.get("load_of_attempts", []) if a is not x["load"]),
        "requests_without_audio": len(reqs) - len(with_audio),
        "first_chunk_s": percentiles([r["first_chunk_s"] for r in with_audio], digits=4),
        "rtf": percentiles([r["rtf"] for r in with_audio], digits=4),
        "total_s": percentiles([r["total_s"] for r in reqs], digits=4),
        "audio_s": percentiles([r["audio_s"] for r in reqs], digits=4),
        "stall_s": percentiles([r["stall_s"] for r in with_audio], digits=4),
        "chunks_per_request": percentiles([r["chunks"] for r in reqs], digits=1),
        # the server's throughput: wall time of all rounds over all audio they produced
        "aggregate_rtf": round(sum(x["wall_s"] for x in rounds if not x["errors"]) / audio, 4) if audio else None,
        "max_other_cpu_share": max(x["load"]["other_cpu_share"] for x in rounds),
    }


def bench_server(url: str, pgid: int | None, args, max_new_tokens: int) -> dict:
    texts = args.texts
    # warm-up: both decoders (the RAP text uses the Music one), prompts prepared, LM and flow run once
    for i, text in enumerate(texts):
        one_request(url, text, 10_000 + i, min(max_new_tokens, 120), None)
    out: dict = {"max_new_tokens": max_new_tokens}
    for c in args.concurrency:
        jobs = [(texts[i % len(texts)], args.seed + i) for i in range(args.repeats * len(texts))]
        rounds = []
        for k in range(0, len(jobs), c):
            label = f"concurrency {c}, requests {k + 1}-{min(k + c, len(jobs))}"
            batch = jobs[k:k + c]
            rounds.append(clean(lambda batch=batch: run_round(url, batch, max_new_tokens, args.request_timeout_s),
                                args, label, pgid))
        reqs = [r for x in rounds for r in x["requests"]]
        s = summarize_requests(reqs, rounds)
        out[f"concurrency_{c}"] = {"summary": s, "rounds": rounds}
        log(f"    concurrency {c}: first chunk p50 {s['first_chunk_s'].get('p50')} s p90 "
            f"{s['first_chunk_s'].get('p90')} s; RTF p50 {s['rtf'].get('p50')} p90 {s['rtf'].get('p90')}; "
            f"aggregate RTF {s['aggregate_rtf']}; audio p50 {s['audio_s'].get('p50')} s; "
            f"others <= {100 * s['max_other_cpu_share']:.0f}% CPU")
    return out


def write_audio_only_tts(src: Path, dest: Path) -> dict:
    """``dest``: ``src`` (a Step-Audio-TTS-3B folder) with every lm_head row outside the audio ids zeroed;
    the other files are symlinks to ``src``'s."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    shards = sorted(src.glob("*.safetensors"))
    for entry in src.iterdir():
        if entry not in shards:
            (dest / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    zeroed = 0
    for shard in shards:
        tensors = load_file(str(shard))
        w = tensors.get("lm_head.weight")
        if w is not None:
            keep = torch.zeros(w.shape[0], dtype=torch.bool)
            keep[AUDIO_ID_OFFSET:AUDIO_ID_OFFSET + N_AUDIO_IDS] = True
            w = w.clone()
            w[~keep] = 0
            tensors["lm_head.weight"] = w
            zeroed = int((~keep).sum())
        save_file(tensors, str(dest / shard.name), metadata={"format": "pt"})
    if not zeroed:
        raise RuntimeError(f"{src}: no lm_head.weight found")
    return {"lm_head_rows_zeroed": zeroed, "audio_id_rows_kept": N_AUDIO_IDS}


def served_root(tiny_root: Path, work: Path, variant: str) -> tuple[Path, dict]:
    """A checkpoint folder holding what the tts pipeline needs (no chat model), as symlinks."""
    root = work / f"served-{variant}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    info: dict = {}
    for name in SERVED_COMPONENTS:
        if name == TTS_DIR and variant == "audio_only":
            info = write_audio_only_tts(tiny_root / name, root / name)
        else:
            (root / name).symlink_to((tiny_root / name).resolve(), target_is_directory=True)
    return root, info


def triton_part(args, tiny_root: Path | None, work: Path) -> dict:
    if args.url:
        log(f"triton: benchmarking the server at {args.url} ...")
        return {"served": {"url": args.url, "server_cpu_known": False,
                           **bench_server(args.url, None, args, args.max_new_tokens_audio_only)}}
    from export.deploy_config import load_config
    from export.render import build_repository
    from export.triton_launcher import TritonServer

    out = {}
    for variant in args.variants:
        log(f"triton, {variant} tiny checkpoints: rendering and starting the server ...")
        root, info = served_root(tiny_root, work, variant)
        cfg = load_config("cpu", root, args.set)
        repo = work / f"repo-{variant}" / "model_repository"
        report = build_repository(cfg, repo)
        t0 = time.perf_counter()
        server_log = work / f"tritonserver-{variant}.log"
        with TritonServer(repo, log_path=server_log).start(timeout_s=args.server_timeout_s) as server:
            start_s = time.perf_counter() - t0
            log(f"  server up in {start_s:.0f} s ({', '.join(report.models)})")
            max_new = args.max_new_tokens_stock if variant == "stock" else args.max_new_tokens_audio_only
            r = bench_server(server.grpc_url, server.pid, args, max_new)
        if any(v["summary"]["failed_requests"] or v["summary"]["failed_requests_in_repeated_attempts"]
               for k, v in r.items() if k.startswith("concurrency_")):
            lines = [x for x in server_log.read_text(errors="replace").splitlines()
                     if "in-flight non-inference requests" not in x]  # the shutdown countdown
            r["server_log_tail"] = lines[-80:]
        out[variant] = {
            "models": report.models, "server_start_s": round(start_s, 1), "server_cpu_known": True,
            "deployment": {"preset": "cpu", "overrides": list(args.set),
                           **{s: dict(vars(getattr(cfg, s))) for s in DEPLOYMENT_SECTIONS if hasattr(cfg, s)}},
            **({"checkpoint_change": info} if info else {}), **r,
        }
    return out


# =================================================================================================
# part 2: flow + HiFT alone, PyTorch vs ONNX Runtime
# =================================================================================================
def speech_tokens(n: int, seed: int) -> np.ndarray:
    """``n`` flow ids shaped like Step-Audio's: per 5-token group 2 vq02 ids (0..1023) then 3 vq06 ids
    (1024..5119)."""
    rng = np.random.default_rng(seed)
    pos = np.arange(n) % 5
    return np.where(pos < 2, rng.integers(0, 1024, n), rng.integers(1024, 5120, n)).astype(np.int64)


def t2w_workload(flow, speech_s: float, prompt_s: float, seed: int):
    from stepaudio.tts.token2wav import PromptVoice

    n_tokens, n_prompt = round(speech_s * TOKENS_PER_SECOND), round(prompt_s * TOKENS_PER_SECOND)
    rng = np.random.default_rng(seed + 1)
    voice = PromptVoice.of(speech_tokens(n_prompt, seed + 2),
                           (rng.standard_normal((flow.mel_frames(n_prompt), flow.output_size)) - 5.0).astype(np.float32),
                           rng.standard_normal(192).astype(np.float32))
    return speech_tokens(n_tokens, seed), voice


def _snr_db(ref: np.ndarray, x: np.ndarray) -> float | str:
    err = float(((ref - x) ** 2).sum())
    return "inf" if err == 0 else round(10 * math.log10(float((ref**2).sum()) / err), 2)


def offline_once(t2w, tokens, voice, seed: int) -> dict:
    """``Token2Wav.offline`` with its flow time measured separately (the vocoder is the rest)."""
    flow_s = []
    inner = t2w.flow_mel

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            flow_s.append(time.perf_counter() - t)

    t2w.flow_mel = timed
    try:
        c, t = time.process_time(), time.perf_counter()
        wav = t2w.offline(tokens, voice, seed=seed)
        total, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        del t2w.flow_mel
    audio_s = wav.size / SAMPLE_RATE_HZ
    return {"audio_s": round(audio_s, 3), "compute_s": round(total, 3), "flow_s": round(flow_s[0], 3),
            "vocoder_s": round(total - flow_s[0], 3), "rtf": round(total / audio_s, 4),
            "flow_rtf": round(flow_s[0] / audio_s, 4), "vocoder_rtf": round((total - flow_s[0]) / audio_s, 4),
            "cpu_rtf": round(cpu / audio_s, 4), "_wav": wav}


def stream_once(t2w, tokens, voice, seed: int, push: int) -> dict:
    s = t2w.session(voice, seed=seed)
    chunks, first, total = [], None, 0.0
    c = time.process_time()
    for i in range(0, tokens.size, push):
        t = time.perf_counter()
        got = s.push(tokens[i:i + push])
        dt = time.perf_counter() - t
        total += dt
        if got and first is None:
            first = {"tokens": min(i + push, int(tokens.size)), "compute_s": dt}
        chunks += got
    t = time.perf_counter()
    chunks += s.finish()
    total += time.perf_counter() - t
    cpu = time.process_time() - c
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    audio_s = wav.size / SAMPLE_RATE_HZ
    return {
        "audio_s": round(audio_s, 3), "chunks": len(s.stats),
        "chunk_tokens": [st.tokens for st in s.stats],
        "chunk_flow_s": [round(st.flow_s, 3) for st in s.stats],
        "chunk_vocoder_s": [round(st.vocoder_s, 3) for st in s.stats],
        "first_chunk_tokens": first["tokens"] if first else int(tokens.size),
        "first_chunk_speech_s": round((first["tokens"] if first else tokens.size) / TOKENS_PER_SECOND, 3),
        "first_chunk_compute_s": round(first["compute_s"], 3) if first else None,
        "compute_s": round(total, 3), "rtf": round(total / audio_s, 4),
        "flow_s": round(sum(st.flow_s for st in s.stats), 3),
        "vocoder_s": round(sum(st.vocoder_s for st in s.stats), 3),
        "cpu_rtf": round(cpu / audio_s, 4), "_wav": wav,
    }


def ensure_decoder(args, work: Path, tiny_root: Path | None) -> tuple[Path, str]:
    """The CosyVoice-300M-25Hz folder to time and a description of it."""
    if args.t2w_size == "tiny":
        return tiny_root / TTS_DIR / "CosyVoice-300M-25Hz", "tiny preset (export.tiny)"
    from benchmarks.cosyvoice_full import DECODER_DIR, write_full_size_cosyvoice

    base = args.checkpoints / "full" if args.checkpoints else work / "full"
    dest = base / DECODER_DIR
    if not (dest / "cosyvoice.yaml").is_file():
        log(f"token2wav: writing full-size random weights to {dest} (~500 MB) ...")
        t = time.perf_counter()
        write_full_size_cosyvoice(dest, seed=args.seed)
        log(f"  written in {time.perf_counter() - t:.0f} s")
    return dest, "official CosyVoice-300M dimensions, random weights (benchmarks.cosyvoice_full)"


def token2wav_part(args, work: Path, tiny_root: Path | None) -> dict:
    import torch

    from export.onnx_tts import export_cosyvoice_onnx
    from stepaudio.tts.flow import load_flow
    from stepaudio.tts.hift import load_hift
    from stepaudio.tts.onnx_modules import use_onnx
    from stepaudio.tts.token2wav import Token2Wav

    decoder, what = ensure_decoder(args, work, tiny_root)
    onnx_dir = work / "onnx"
    log("token2wav: exporting the flow estimator and HiFT decoder to ONNX ...")
    t = time.perf_counter()
    files = export_cosyvoice_onnx(decoder, onnx_dir)
    export_s = time.perf_counter() - t
    res: dict = {
        "decoder": what,
        "onnx_export_s": round(export_s, 1),
        "onnx_files_mb": {k: round(Path(v).stat().st_size / 2**20, 1) for k, v in files.items()},
    }
    saved_threads = torch.get_num_threads()
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            by_backend: dict = {}
            ref_wav = None
            for backend in ("pytorch", "onnxruntime"):
                log(f"token2wav, {backend}, {threads} thread(s): loading ...")
                flow, hift = load_flow(decoder), load_hift(decoder, fold_weight_norm=True)
                if "parameters" not in res:
                    res["parameters"] = {"flow": sum(p.numel() for p in flow.parameters()),
                                         "hift_weight_norm_folded": sum(p.numel() for p in hift.parameters())}
                if backend == "onnxruntime":
                    use_onnx(flow, hift, onnx_dir, threads=threads)
                t2w = Token2Wav(flow, hift)
                tokens, voice = t2w_workload(flow, args.speech_s, args.prompt_s, args.seed)
                res.setdefault("workload", {
                    "speech_tokens": int(tokens.size), "speech_s": round(tokens.size / TOKENS_PER_SECOND, 3),
                    "prompt_tokens": int(voice.prompt_token.numel()), "prompt_mel_frames": int(voice.prompt_feat.shape[0]),
                    "flow_steps": t2w.n_timesteps, "push_tokens": args.push_tokens, "seed": args.seed,
                })
                # warm-up: a short offline synthesis and a short stream
                t2w.offline(tokens[:30], voice, seed=args.seed)
                stream_once(t2w, tokens[:30], voice, args.seed, args.push_tokens)
                log("  offline ...")
                off = clean(lambda t2w=t2w, tokens=tokens, voice=voice: offline_once(t2w, tokens, voice, args.seed),
                            args, f"{backend} offline")
                log(f"    offline RTF {off['rtf']} (flow {off['flow_rtf']}, vocoder {off['vocoder_rtf']})")
                log("  streaming ...")
                st = clean(lambda t2w=t2w, tokens=tokens, voice=voice:
                           stream_once(t2w, tokens, voice, args.seed, args.push_tokens), args, f"{backend} streaming")
                log(f"    streaming RTF {st['rtf']}, first chunk {st['first_chunk_compute_s']} s of compute "
                    f"after {st['first_chunk_tokens']} tokens")
                wav_off, wav_st = off.pop("_wav"), st.pop("_wav")
                st["vs_offline"] = {"same_length": bool(wav_st.size == wav_off.size)}
                if wav_st.size == wav_off.size:
                    st["vs_offline"].update(max_abs_dev=round(float(np.abs(wav_st - wav_off).max()), 5),
                                            snr_db=_snr_db(wav_off, wav_st))
                entry = {"offline": off, "streaming": st}
                if ref_wav is None:
                    ref_wav = wav_off
                elif ref_wav.size == wav_off.size:
                    entry["offline_vs_pytorch"] = {"max_abs_diff": round(float(np.abs(ref_wav - wav_off).max()), 6),
                                                   "snr_db": _snr_db(ref_wav, wav_off)}
                by_backend[backend] = entry
                del t2w, flow, hift
            res[f"threads_{threads}"] = by_backend
    finally:
        torch.set_num_threads(saved_threads)
    return res


# =================================================================================================
# driver
# =================================================================================================
def ensure_tiny(args, work: Path) -> Path:
    """A tiny checkpoint root (all components): ``--checkpoints DIR/tiny`` when present, else written."""
    if args.checkpoints is not None and all((args.checkpoints / "tiny" / c).is_dir() for c in SERVED_COMPONENTS):
        return args.checkpoints / "tiny"
    from export.tiny import write_tiny

    root = (args.checkpoints or work) / "tiny"
    log(f"writing tiny checkpoints to {root} ...")
    write_tiny(root, components=list(SERVED_COMPONENTS), seed=0, progress=lambda m: log(f"  {m}"))
    return root


def summary(results: dict) -> dict:
    out: dict = {}
    for variant, r in (results.get("triton") or {}).items():
        for k, v in r.items():
            if k.startswith("concurrency_"):
                s = v["summary"]
                out[f"triton/{variant}/{k}"] = {
                    "first_chunk_s_p50": s["first_chunk_s"].get("p50"), "first_chunk_s_p90": s["first_chunk_s"].get("p90"),
                    "rtf_p50": s["rtf"].get("p50"), "rtf_p90": s["rtf"].get("p90"), "aggregate_rtf": s["aggregate_rtf"],
                    "audio_s_p50": s["audio_s"].get("p50"), "stall_s_p90": s["stall_s"].get("p90"),
                    "max_other_cpu_share": s["max_other_cpu_share"],
                }
    t2w = results.get("token2wav") or {}
    for k, v in t2w.items():
        if k.startswith("threads_"):
            for backend, e in v.items():
                out[f"token2wav/{k}/{backend}"] = {
                    "offline_rtf": e["offline"]["rtf"], "offline_flow_rtf": e["offline"]["flow_rtf"],
                    "offline_vocoder_rtf": e["offline"]["vocoder_rtf"], "streaming_rtf": e["streaming"]["rtf"],
                    "streaming_first_chunk_compute_s": e["streaming"]["first_chunk_compute_s"],
                    "other_cpu_share": max(e["offline"]["load"]["other_cpu_share"],
                                           e["streaming"]["load"]["other_cpu_share"]),
                }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tts_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", type=csv_of(str), default=["triton", "token2wav"], help="triton,token2wav")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=NAME, help="result file name (without .json)")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="keep/reuse checkpoints in DIR/tiny (all tiny components) and DIR/full/CosyVoice-300M-25Hz")
    p.add_argument("--seed", type=int, default=1, help="first request seed; token2wav workload and noise seed")
    # triton
    p.add_argument("--variants", type=csv_of(str), default=["stock", "audio_only"], help="stock,audio_only")
    p.add_argument("--url", default=None, help="benchmark this running server (HOST:GRPC_PORT) instead")
    p.add_argument("--concurrency", type=csv_of(int), default=[1, 4])
    p.add_argument("--repeats", type=int, default=3, help="passes over the texts at each concurrency")
    p.add_argument("--texts", type=lambda s: [t for t in s.split("|") if t], default=list(TEXTS),
                   help="texts separated by |")
    p.add_argument("--max-new-tokens-stock", type=int, default=1000,
                   help="LM tokens per request, stock variant (~8%% of them are speech tokens)")
    p.add_argument("--max-new-tokens-audio-only", type=int, default=250,
                   help="LM tokens per request, audio_only variant and --url (250 = 6 s of speech)")
    p.add_argument("--set", action="append", default=[], help="deployment override section.field=value")
    p.add_argument("--server-timeout-s", type=float, default=600)
    p.add_argument("--request-timeout-s", type=float, default=300,
                   help="a request with no response for this long counts as failed")
    # token2wav
    p.add_argument("--t2w-size", choices=("full", "tiny"), default="full")
    p.add_argument("--threads", type=csv_of(int), default=[2], help="torch and ONNX Runtime threads, e.g. 1,2")
    p.add_argument("--speech-s", type=float, default=10.0, help="speech tokens to synthesise (seconds)")
    p.add_argument("--prompt-s", type=float, default=3.0, help="voice prompt length (seconds)")
    p.add_argument("--push-tokens", type=int, default=5, help="tokens per push into the stream")
    # load
    p.add_argument("--wait-quiet-s", type=float, default=60.0,
                   help="before each measurement, wait up to this long for other processes to go quiet (0: no wait)")
    p.add_argument("--max-other-share", type=float, default=0.1,
                   help="a measurement during which other processes used more of the CPU counts as disturbed")
    p.add_argument("--retries", type=int, default=1, help="repeats of a disturbed measurement (the cleanest is kept)")
    args = p.parse_args(argv)
    bad = [x for x in args.parts if x not in ("triton", "token2wav")] + [
        x for x in args.variants if x not in ("stock", "audio_only")]
    if bad:
        p.error(f"unknown part(s) / variant(s) {bad}")
    if args.repeats < 1 or not args.texts or not args.concurrency or min(args.concurrency) < 1:
        p.error("need --repeats >= 1, at least one text and concurrency >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    results: dict = {"triton": None, "token2wav": None}
    git_at_start = git_info()  # the code the servers and models were loaded from (HEAD may move during a long run)
    machine = machine_info(include_torch=False)
    machine["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="tts-bench-"))
    try:
        need_tiny = ("triton" in args.parts and not args.url) or ("token2wav" in args.parts and args.t2w_size == "tiny")
        tiny_root = ensure_tiny(args, work) if need_tiny else None
        if "triton" in args.parts:
            results["triton"] = triton_part(args, tiny_root, work)
        if "token2wav" in args.parts:
            results["token2wav"] = token2wav_part(args, work, tiny_root)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    import torch

    machine.update(machine_info(probe_speed=False))  # torch / onnxruntime versions; torch_threads = this process's default
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["summary"] = summary(results)
    results["peak_rss_mb"] = peak_rss_mb()
    results["bench_wall_s"] = round(time.perf_counter() - t_start, 1)
    results["git_at_start"] = git_at_start
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(speaker=SPEAKER, sample_rate_hz=SAMPLE_RATE_HZ, torch_threads_default=torch.get_num_threads())
    path = write_result(args.name, config, results, args.out, machine=machine)
    for k, v in results["summary"].items():
        print(f"{k:45s} " + ", ".join(f"{a}={b}" for a, b in v.items()))
    log(f"wrote {path} in {results['bench_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
