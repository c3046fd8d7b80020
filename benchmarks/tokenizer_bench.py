"""Streaming audio tokenization on CPU: real-time factor, per-chunk latency, where the time goes.

    python -m benchmarks.tokenizer_bench [--sizes tiny,full] [--seconds 20] [--chunk-ms 100]
                                         [--threads 1,2] [--out benchmarks/results] [--no-triton]

For each checkpoint size (``tiny``: the seeded tiny preset; ``full``: random weights with the official
dimensions, a 50 x 512 Paraformer encoder and a 6 x 1280 speech tokenizer, ~1.4 GB written to a
temporary directory) and each torch thread count, a fresh worker process:

* warms up (a short stream and an offline call, so first-touch page faults are not measured),
* streams the workload through ``AudioTokenizer.session(16000)`` (default 2400 ms segments, running
  normalisation) in ``--chunk-ms`` pieces: per-chunk ``feed()`` latency, ``flush()`` latency, RTF,
* tokenizes it offline with ``tokenize()`` (30 s segments, utterance normalisation): RTF,
* records peak RSS and the time spent in each stage (fbank, Paraformer encoder, k-means; Whisper
  log-mel, speech-tokenizer ONNX; the rest is session bookkeeping).

Then, for the tiny preset, a real tritonserver (cpu preset, default streaming config): per-chunk
round-trip latency through ``client.tokenize.TokenizerStream`` and RTF with 1 and 4 concurrent streams.

RTF = processing time / audio duration (lower is better; 1.0 = exactly real time).
One JSON: ``<out>/tokenizer_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    ROOT,
    SAMPLE_RATE_HZ,
    BackgroundLoad,
    audio_digest,
    csv_of,
    machine_info,
    parallel_speedup,
    peak_rss_mb,
    percentiles,
    speech_workload,
    wait_for_quiet,
    write_result,
)

NAME = "tokenizer_bench"
RTF_GOAL = 0.2
TOKENIZER_DIR = "Step-Audio-Tokenizer"
STAGES = ("vq02_fbank", "vq02_encoder", "vq02_kmeans", "vq06_logmel", "vq06_onnx")


# =================================================================================================
# worker: one checkpoint size, one thread count, in its own process
# =================================================================================================
class StageTimer:
    """Wraps the tokenizer's stage functions to accumulate their wall time and call counts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.missing: list[str] = []

    def wrap(self, owner: object, attr: str, stage: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            self.missing.append(f"{stage} ({type(owner).__name__}.{attr})")
            return

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0
                self.calls[stage] += 1

        setattr(owner, attr, timed)

    def snapshot(self) -> tuple[dict[str, float], dict[str, int]]:
        return dict(self.seconds), dict(self.calls)

    def since(self, snap: tuple[dict[str, float], dict[str, int]]) -> tuple[dict[str, float], dict[str, int]]:
        s0, c0 = snap
        return (
            {k: self.seconds.get(k, 0.0) - s0.get(k, 0.0) for k in STAGES},
            {k: self.calls.get(k, 0) - c0.get(k, 0) for k in STAGES},
        )


def instrument(tok) -> StageTimer:
    import funasr.utils.load_utils as funasr_load_utils

    import stepaudio.tokenizer.semantic as semantic_mod

    timer = StageTimer()
    timer.wrap(funasr_load_utils, "extract_fbank", "vq02_fbank")  # imported at call time by encode_stride
    timer.wrap(tok.linguistic.model, "encode_chunk", "vq02_encoder")
    timer.wrap(tok.linguistic, "quantize", "vq02_kmeans")
    timer.wrap(semantic_mod, "log_mel_spectrogram", "vq06_logmel")
    timer.wrap(getattr(tok.semantic, "session", None), "run", "vq06_onnx")
    return timer


def breakdown(seconds: dict[str, float], calls: dict[str, int], total_s: float, audio_s: float) -> dict:
    out = {}
    for k in STAGES:
        out[k] = {
            "seconds": round(seconds.get(k, 0.0), 4),
            "calls": calls.get(k, 0),
            "share": round(seconds.get(k, 0.0) / total_s, 4) if total_s else None,
            "rtf": round(seconds.get(k, 0.0) / audio_s, 4),
        }
    rest = total_s - sum(seconds.get(k, 0.0) for k in STAGES)
    out["session_other"] = {"seconds": round(rest, 4), "share": round(rest / total_s, 4) if total_s else None,
                            "rtf": round(rest / audio_s, 4)}
    return out


def encoder_batch_probe(model, batches=(1, 4, 16), frames: int = 9, reps: int = 3) -> dict:
    """Time every Linear of the encoder once on (B*frames) rows: the matmul cost of one stride for B
    streams at once. A stride sees a 9-frame window (4 new + 5 overlap); at B=1 the cost is reading
    the weights, so batching streams into one encoder call divides it between them."""
    import torch

    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    out = {}
    with torch.inference_mode():
        for b in batches:
            xs = {m.in_features: torch.randn(b * frames, m.in_features) for m in linears}
            times = []
            for _ in range(reps + 1):
                t = time.perf_counter()
                for m in linears:
                    m(xs[m.in_features])
                times.append(time.perf_counter() - t)
            ms = 1000 * float(np.median(times[1:]))
            out[f"batch_{b}"] = {"ms": round(ms, 2), "ms_per_stream": round(ms / b, 2)}
    return out


def run_worker(spec: dict) -> dict:
    import torch

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    from stepaudio.tokenizer.tokenizer import AudioTokenizer

    audio = np.load(spec["audio_npy"]).astype(np.float32)
    audio_s = len(audio) / SAMPLE_RATE_HZ
    chunk = SAMPLE_RATE_HZ * int(spec["chunk_ms"]) // 1000

    t0 = time.perf_counter()
    tok = AudioTokenizer(spec["checkpoint"], onnx_threads=int(spec["onnx_threads"]))
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_mb()
    timer = instrument(tok)
    encoder_bytes = sum(p.numel() * p.element_size() for p in tok.linguistic.model.encoder.parameters())

    # Warm-up: one vq06 segment and a few strides, streamed and offline.
    warm = audio[: int(spec["warmup_s"] * SAMPLE_RATE_HZ)]
    s = tok.session(SAMPLE_RATE_HZ)
    for i in range(0, len(warm), chunk):
        s.feed(warm[i : i + chunk])
    s.flush()
    tok.tokenize(warm, SAMPLE_RATE_HZ)

    # Streaming.
    bg = BackgroundLoad().start()
    snap = timer.snapshot()
    s = tok.session(SAMPLE_RATE_HZ)
    lat, kinds, n_tokens = [], [], 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(audio), chunk):
        before = timer.snapshot()
        t = time.perf_counter()
        out = s.feed(audio[i : i + chunk])
        lat.append(time.perf_counter() - t)
        _, calls = timer.since(before)
        kinds.append("vq06_segment" if calls["vq06_onnx"] else "vq02_stride" if calls["vq02_encoder"] else "buffer_only")
        n_tokens += len(out)
    t = time.perf_counter()
    n_tokens += len(s.flush())
    flush_s = time.perf_counter() - t
    stream_wall, stream_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stream_total = sum(lat) + flush_s
    st_sec, st_calls = timer.since(snap)
    by_kind = {k: percentiles([x for x, kk in zip(lat, kinds, strict=True) if kk == k], 1000) for k in sorted(set(kinds))}

    # Offline, reference-equivalent call.
    snap = timer.snapshot()
    t, c = time.perf_counter(), time.process_time()
    res = tok.tokenize(audio, SAMPLE_RATE_HZ)
    offline_s, offline_cpu = time.perf_counter() - t, time.process_time() - c
    off_sec, off_calls = timer.since(snap)
    bg.stop()

    enc_s, enc_calls = st_sec["vq02_encoder"], st_calls["vq02_encoder"]
    return {
        "torch_threads": torch.get_num_threads(),
        "onnx_threads": int(spec["onnx_threads"]),
        "load_s": round(load_s, 2),
        "audio_s": round(audio_s, 3),
        "streaming": {
            "segment_ms": s.segment_samples * 1000 // SAMPLE_RATE_HZ,
            "normalization": s.normalization,
            "chunks": len(lat),
            "rtf": round(stream_total / audio_s, 4),
            "wall_s": round(stream_wall, 3),
            "compute_s": round(stream_total, 3),
            # CPU time of this process (all its threads) over the audio: less sensitive to other load.
            "cpu_rtf": round(stream_cpu / audio_s, 4),
            "chunk_latency_ms": percentiles(lat, 1000),
            "chunk_latency_ms_by_kind": by_kind,
            "flush_latency_ms": round(flush_s * 1000, 3),
            "tokens": n_tokens,
            "tokens_per_audio_s": round(n_tokens / audio_s, 2),
            "tokens_per_compute_s": round(n_tokens / stream_total, 2),
            "stages": breakdown(st_sec, st_calls, stream_total, audio_s),
        },
        "offline": {
            "segment_ms": 30000,
            "normalization": "utterance",
            "rtf": round(offline_s / audio_s, 4),
            "compute_s": round(offline_s, 3),
            "cpu_rtf": round(offline_cpu / audio_s, 4),
            "tokens": len(res.audio_n),
            "tokens_per_compute_s": round(len(res.audio_n) / offline_s, 2),
            "stages": breakdown(off_sec, off_calls, offline_s, audio_s),
        },
        "encoder": {
            "weight_mb": round(encoder_bytes / 2**20, 1),
            "ms_per_stride": round(1000 * enc_s / enc_calls, 2) if enc_calls else None,
            # Each stride reads every encoder weight once (4 new frames): the weight traffic it implies.
            "weight_read_gb_per_s": round(encoder_bytes * enc_calls / enc_s / 1e9, 2) if enc_s else None,
            "linear_layers_by_batch": encoder_batch_probe(tok.linguistic.model),
        },
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_load_mb": rss_after_load,
        # CPU other processes used during the streaming + offline measurement (0: a clean run).
        "background_load": bg.result(),
        "instrumentation_missing": timer.missing,
        "machine": machine_info(),
    }


# =================================================================================================
# Triton: the tiny preset through a real server
# =================================================================================================
def _stream_once(url: str, audio: np.ndarray, chunk: int, barrier: threading.Barrier | None = None) -> dict:
    import tritonclient.grpc as grpcclient

    from client.tokenize import TokenizerStream

    client = grpcclient.InferenceServerClient(url)
    try:
        stream = TokenizerStream(client, SAMPLE_RATE_HZ)
        if barrier is not None:
            barrier.wait()
        lat, n = [], 0
        t0 = time.perf_counter()
        for i in range(0, len(audio), chunk):
            reply = stream.send(audio[i : i + chunk])
            lat.append(reply.latency_s)
            n += len(reply.audio_tokens)
        fin = stream.finish()
        wall = time.perf_counter() - t0
        return {"lat": lat, "finish": fin.latency_s, "wall": wall, "tokens": n + len(fin.audio_tokens)}
    finally:
        client.close()


def triton_bench(checkpoints: Path, audio: np.ndarray, chunk_ms: int, streams: list[int], work: Path) -> dict:
    from export.deploy_config import load_config
    from export.render import build_repository
    from export.triton_launcher import TritonServer

    cfg = load_config("cpu", checkpoints)
    repo = work / "model_repository"
    build_repository(cfg, repo)
    chunk = SAMPLE_RATE_HZ * chunk_ms // 1000
    audio_s = len(audio) / SAMPLE_RATE_HZ
    t0 = time.perf_counter()
    with TritonServer(repo).start(timeout_s=300) as server:
        start_s = time.perf_counter() - t0
        _stream_once(server.grpc_url, audio[: 3 * SAMPLE_RATE_HZ], chunk)  # warm-up
        runs = {}
        for n in streams:
            barrier = threading.Barrier(n)
            outs: list[dict | BaseException] = [None] * n  # type: ignore[list-item]

            def go(i: int, barrier: threading.Barrier = barrier, outs: list = outs) -> None:
                try:
                    outs[i] = _stream_once(server.grpc_url, audio, chunk, barrier)
                except BaseException as exc:  # reported below
                    outs[i] = exc
                    barrier.abort()

            threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
            t1 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t1
            errors = [o for o in outs if isinstance(o, BaseException)]
            if errors:
                raise RuntimeError(f"{n} concurrent streams: {errors[0]!r}") from errors[0]
            lat = [x for o in outs for x in o["lat"]]
            runs[f"streams_{n}"] = {
                "streams": n,
                "chunk_round_trip_ms": percentiles(lat, 1000),
                "finish_round_trip_ms": percentiles([o["finish"] for o in outs], 1000),
                # Each stream's own wall time over its audio; and the server's throughput over all audio.
                "rtf_per_stream": percentiles([o["wall"] / audio_s for o in outs], 1, 4),
                "rtf_aggregate": round(wall / (n * audio_s), 4),
                "wall_s": round(wall, 3),
                "tokens_per_stream": [o["tokens"] for o in outs],
            }
    return {
        "preset": "cpu",
        "stream_config": {
            "segment_ms": cfg.audio_tokenizer_stream.segment_ms,
            "normalization": cfg.audio_tokenizer_stream.normalization,
            "instances": cfg.audio_tokenizer_stream.instances,
            "torch_threads": cfg.audio_tokenizer_stream.torch_threads,
            "onnx_threads": cfg.audio_tokenizer_stream.onnx_threads,
            "max_batch_size": cfg.audio_tokenizer_stream.max_batch_size,
        },
        "server_start_s": round(start_s, 1),
        "audio_s_per_stream": round(audio_s, 3),
        **runs,
    }


# =================================================================================================
# orchestration
# =================================================================================================
def ensure_checkpoints(root: Path, size: str, log) -> Path:
    """``root/<size>/Step-Audio-Tokenizer``, written when absent."""
    target = root / size / TOKENIZER_DIR
    if not target.is_dir():
        from export.tiny import write_tiny

        t0 = time.perf_counter()
        write_tiny(root / size, components=[TOKENIZER_DIR], full_size=(size == "full"),
                   progress=lambda m: log(f"  {m}"))
        log(f"  {size} checkpoints written in {time.perf_counter() - t0:.0f} s")
    return target


def spawn_worker(spec: dict, timeout_s: float) -> dict:
    out = Path(spec["result_json"])
    cmd = [sys.executable, "-m", "benchmarks.tokenizer_bench", "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"worker {spec['size']}/{spec['threads']} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tokenizer_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=csv_of(str), default=["tiny", "full"], help="tiny,full")
    p.add_argument("--seconds", type=float, default=20.0, help="workload length (s)")
    p.add_argument("--chunk-ms", type=int, default=100, help="streaming chunk (ms)")
    p.add_argument("--threads", type=csv_of(int), default=[1, 2], help="torch thread counts, e.g. 1,2")
    p.add_argument("--onnx-threads", type=int, default=1, help="onnxruntime intra-op threads (deploy default 1)")
    p.add_argument("--warmup-s", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0, help="first espeak sentence / synthetic seed")
    p.add_argument("--no-espeak", action="store_true", help="use the seeded synthetic signal")
    p.add_argument("--no-triton", action="store_true", help="skip the tritonserver measurements")
    p.add_argument("--triton-streams", type=csv_of(int), default=[1, 4])
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="keep/reuse checkpoints in DIR/<size>/Step-Audio-Tokenizer (default: a temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=NAME, help="result file name (without .json)")
    p.add_argument("--worker-timeout-s", type=float, default=900)
    p.add_argument("--wait-quiet-s", type=float, default=0.0,
                   help="before each measurement, wait up to this long for other processes to go quiet")
    p.add_argument("--max-other-share", type=float, default=0.1,
                   help="a run during which other processes used more of the CPU than this is repeated")
    p.add_argument("--retries", type=int, default=0, help="repeats of a disturbed run (the cleanest is kept)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        result = run_worker(spec)
        Path(spec["result_json"]).write_text(json.dumps(result))
        return 0
    bad = [s for s in args.sizes if s not in ("tiny", "full")]
    if bad:
        raise SystemExit(f"unknown size(s) {bad}: tiny | full")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tokenizer-bench-"))
    ckpt_root = args.checkpoints or work / "checkpoints"
    try:
        audio, source = speech_workload(args.seconds, args.seed, use_espeak=not args.no_espeak)
        np.save(work / "audio.npy", audio)
        log(f"workload: {len(audio) / SAMPLE_RATE_HZ:.2f} s of {source}")
        in_process: dict[str, dict] = {}
        for size in args.sizes:
            ckpt = ensure_checkpoints(ckpt_root, size, log)
            in_process[size] = {}
            for threads in args.threads:
                log(f"{size}, torch threads {threads}: streaming + offline ...")
                spec = {
                    "size": size, "checkpoint": str(ckpt), "threads": threads, "onnx_threads": args.onnx_threads,
                    "audio_npy": str(work / "audio.npy"), "chunk_ms": args.chunk_ms, "warmup_s": args.warmup_s,
                    "result_json": str(work / f"worker-{size}-{threads}.json"),
                }
                attempts = []
                for _ in range(1 + args.retries):  # a run that other processes disturbed is repeated
                    quiet = wait_for_quiet(args.wait_quiet_s, log=log)
                    r = spawn_worker(spec, args.worker_timeout_s)
                    r["before"] = quiet
                    attempts.append(r)
                    share = r["background_load"]["other_cpu_share"]
                    if share <= args.max_other_share:
                        break
                    log(f"  other processes used {100 * share:.0f}% of the CPU during the run "
                        f"(streaming RTF {r['streaming']['rtf']:.3f})")
                r = min(attempts, key=lambda a: a["background_load"]["other_cpu_share"])
                r["attempts"] = [{"streaming_rtf": a["streaming"]["rtf"], "offline_rtf": a["offline"]["rtf"],
                                  "other_cpu_share": a["background_load"]["other_cpu_share"]} for a in attempts]
                in_process[size][f"threads_{threads}"] = r
                st = r["streaming"]
                log(f"  streaming RTF {st['rtf']:.3f}, chunk p50 {st['chunk_latency_ms']['p50']:.1f} ms "
                    f"p99 {st['chunk_latency_ms']['p99']:.1f} ms, flush {st['flush_latency_ms']:.0f} ms; "
                    f"offline RTF {r['offline']['rtf']:.3f}; peak RSS {r['peak_rss_mb']:.0f} MB")
            if size == "full" and args.checkpoints is None:
                shutil.rmtree(ckpt_root / size, ignore_errors=True)  # 1.4 GB: not kept unless asked

        triton = None
        if not args.no_triton and "tiny" in args.sizes:
            log("tiny through tritonserver ...")
            quiet = wait_for_quiet(args.wait_quiet_s, log=log)
            with BackgroundLoad() as bg:  # the server is another process: its CPU counts as "other" here
                t = triton_bench(ensure_checkpoints(ckpt_root, "tiny", log).parent, audio, args.chunk_ms,
                                 args.triton_streams, work)
            t["before"] = quiet
            t["machine_cpu_during_run"] = bg.result()
            triton = {"tiny": t}
            for k, v in triton["tiny"].items():
                if k.startswith("streams_"):
                    log(f"  {k}: chunk round trip p50 {v['chunk_round_trip_ms']['p50']:.1f} ms "
                        f"p99 {v['chunk_round_trip_ms']['p99']:.1f} ms, RTF per stream "
                        f"{v['rtf_per_stream']['max']:.3f} (max), aggregate {v['rtf_aggregate']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for size, by_threads in in_process.items():
        for key, r in by_threads.items():
            summary[f"{size}/{key}"] = {
                "streaming_rtf": r["streaming"]["rtf"],
                "streaming_cpu_rtf": r["streaming"]["cpu_rtf"],
                "offline_rtf": r["offline"]["rtf"],
                "chunk_p50_ms": r["streaming"]["chunk_latency_ms"]["p50"],
                "chunk_p99_ms": r["streaming"]["chunk_latency_ms"]["p99"],
                "chunk_max_ms": r["streaming"]["chunk_latency_ms"]["max"],
                "flush_ms": r["streaming"]["flush_latency_ms"],
                "peak_rss_mb": r["peak_rss_mb"],
                "other_cpu_share": r["background_load"]["other_cpu_share"],
            }
    full = in_process.get("full", {})
    best_full = min((r["streaming"]["rtf"] for r in full.values()), default=None)
    where = None
    if full:  # the full-size stage shares of the fastest thread count: where the time goes
        key, r = min(full.items(), key=lambda kv: kv[1]["streaming"]["rtf"])
        where = {"config": f"full/{key}", "streaming_rtf": r["streaming"]["rtf"],
                 "share": {k: v["share"] for k, v in r["streaming"]["stages"].items()},
                 "encoder_ms_per_240ms_stride": r["encoder"]["ms_per_stride"],
                 "encoder_weight_mb_read_per_stride": r["encoder"]["weight_mb"],
                 "vq06_onnx_rtf": r["streaming"]["stages"]["vq06_onnx"]["rtf"]}
    results = {
        "workload": {"source": source, "audio_s": round(len(audio) / SAMPLE_RATE_HZ, 3), "chunk_ms": args.chunk_ms,
                     "audio_sha256_16": audio_digest(audio)},
        "goal": {"streaming_rtf_full_size": RTF_GOAL, "best_full_size_streaming_rtf": best_full,
                 "met": None if best_full is None else best_full <= RTF_GOAL, "where_the_time_goes": where},
        # How much a second core really adds here (two busy processes vs one): read the threads_2 runs with it.
        "machine_parallel_speedup": parallel_speedup(),
        "summary": summary,
        "in_process": in_process,
        "triton": triton,
        "bench_wall_s": round(time.perf_counter() - t_start, 1),
    }
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"}
    path = write_result(args.name, config, results, args.out)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
