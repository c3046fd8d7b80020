"""Streaming token2wav against offline synthesis on the golden tiny weights.

    python -m benchmarks.token2wav_stream [--repeat 3] [--threads 1] [--out benchmarks/results]

Tokens: the golden case1 flow tokens repeated ``--repeat`` times (forward, reversed, forward, ...), pushed
5 at a time as if they came out of the LM instantly, so the timings are compute only. For each chunk
policy it reports:

* ``first_chunk_tokens`` / ``first_chunk_speech_s``: tokens (and their speech time at 41.67 tokens/s)
  that had to exist before the first audio chunk left; ``first_chunk_compute_ms``: compute of that push;
* per-chunk compute (flow and vocoder, ms), the streaming real-time factor (compute / audio) and the
  CPU seconds per audio second (``cpu_per_audio_s``, process time: the same as compute on one thread);
* ``max_abs_dev`` and ``snr_db`` of the concatenated stream against ``Token2Wav.offline`` of the same
  tokens with the same seed (offline is the reference).

Tiny random weights: the deviation figures describe the method on these models, not the official ones.
Writes ``<out>/token2wav_stream.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, write_result
from stepaudio.tts.chunking import TOKENS_PER_SECOND

GOLDEN_T2W = Path(__file__).resolve().parent.parent.parent / "shared" / "golden" / "token2wav"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--golden", type=Path, default=GOLDEN_T2W)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)

    import torch

    from stepaudio.tts.chunking import ChunkPolicy
    from stepaudio.tts.flow import load_flow
    from stepaudio.tts.hift import load_hift
    from stepaudio.tts.token2wav import SAMPLE_RATE, PromptVoice, Token2Wav

    torch.set_num_threads(args.threads)
    model_dir = args.golden / "CosyVoice-300M-25Hz"
    case = np.load(args.golden / "case1.npz")
    t2w = Token2Wav(load_flow(model_dir), load_hift(model_dir))
    voice = PromptVoice.of(case["prompt_token"], case["prompt_feat"], case["embedding"])
    base = case["token"]
    tokens = np.concatenate([base if i % 2 == 0 else base[::-1] for i in range(args.repeat)])

    t2w.offline(tokens[:20], voice, seed=args.seed)  # warm-up
    t0 = time.perf_counter()
    ref = t2w.offline(tokens, voice, seed=args.seed)
    offline_s = time.perf_counter() - t0
    audio_s = ref.size / SAMPLE_RATE

    policies = {
        "default": ChunkPolicy(),
        "first25": ChunkPolicy(first=25),
        "constant20": ChunkPolicy(growth=1.0, cap=20),
        "lookahead0": ChunkPolicy(lookahead=0),
        "lookahead10": ChunkPolicy(lookahead=10),
        "one_chunk": ChunkPolicy(first=100000, cap=100000),
        "default_all_context": ChunkPolicy(),  # the flow re-reads every released token (flow_context None)
    }
    flow_context = t2w.flow_context
    results: dict = {
        "tokens": int(tokens.size), "audio_s": round(audio_s, 3),
        "offline": {"compute_s": round(offline_s, 4), "rtf": round(offline_s / audio_s, 4)},
        "policies": {},
    }
    for name, policy in policies.items():
        t2w.flow_context = None if name == "default_all_context" else flow_context
        s = t2w.session(voice, seed=args.seed, policy=policy)
        chunks, first = [], None
        total, cpu0 = 0.0, time.process_time()
        for i in range(0, tokens.size, 5):
            t = time.perf_counter()
            got = s.push(tokens[i:i + 5])
            dt = time.perf_counter() - t
            total += dt
            if got and first is None:
                first = {"tokens": i + 5, "compute_ms": dt * 1e3}
            chunks += got
        t = time.perf_counter()
        chunks += s.finish()
        total += time.perf_counter() - t
        cpu = time.process_time() - cpu0
        x = np.concatenate(chunks)
        assert x.size == ref.size, (name, x.size, ref.size)
        err = float(((ref - x) ** 2).sum())
        snr = float("inf") if err == 0 else 10 * np.log10(float((ref ** 2).sum()) / err)
        results["policies"][name] = {
            "policy": asdict(policy),
            "chunks": len(chunks),
            "chunk_tokens": [st.tokens for st in s.stats],
            "first_chunk_tokens": first["tokens"] if first else int(tokens.size),
            "first_chunk_speech_s": round((first["tokens"] if first else tokens.size) / TOKENS_PER_SECOND, 3),
            "first_chunk_compute_ms": round(first["compute_ms"], 2) if first else None,
            "chunk_flow_ms": [round(st.flow_s * 1e3, 2) for st in s.stats],
            "chunk_vocoder_ms": [round(st.vocoder_s * 1e3, 2) for st in s.stats],
            "compute_s": round(total, 4),
            "rtf": round(total / audio_s, 4),
            "cpu_per_audio_s": round(cpu / audio_s, 4),
            "max_abs_dev": float(np.abs(ref - x).max()),
            "snr_db": round(snr, 2) if np.isfinite(snr) else "inf",
        }
        r = results["policies"][name]
        print(f"{name:12s} chunks={r['chunks']:3d} first={r['first_chunk_tokens']} tok "
              f"({r['first_chunk_compute_ms']} ms) rtf={r['rtf']:.3f} dev={r['max_abs_dev']:.4f} snr={r['snr_db']} dB")
    config = {"golden": str(args.golden), "repeat": args.repeat, "threads": args.threads, "seed": args.seed,
              "push_tokens": 5, "left_context_frames": 12, "overlap_frames": 3, "flow_context_tokens": flow_context}
    path = write_result("token2wav_stream", config, results, args.out)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
