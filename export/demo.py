"""``make demo`` for now: a real tritonserver tokenizes a bundled speech sample, offline and streaming."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from client.audio_io import read_wav
from client.tokenize import TokenizerStream, chunks, tokenize

SAMPLE_WAV = Path(__file__).resolve().parent.parent / "client" / "samples" / "hello_24k.wav"
STREAM_CHUNK_MS = 100


def _port(env: str) -> int:
    return int(os.environ.get(env, 0))  # 0: a free port, so the demo never clashes with `make serve`


def run_demo(checkpoints: Path, out: Path, preset: str, overrides: list[str]) -> int:
    import tritonclient.grpc as grpcclient

    from export.__main__ import build
    from export.triton_launcher import TritonServer

    build(checkpoints, out, preset, overrides)
    audio, sr = read_wav(SAMPLE_WAV)
    log_path = Path(tempfile.mkdtemp(prefix="stepaudio-demo-")) / "tritonserver.log"
    print(f"[demo] starting tritonserver (log: {log_path})", flush=True)
    t0 = time.perf_counter()
    with TritonServer(out, http_port=_port("TRITON_HTTP_PORT"), grpc_port=_port("TRITON_GRPC_PORT"),
                      metrics_port=_port("TRITON_METRICS_PORT"), log_path=log_path) as server:
        server.start()
        print(f"[demo] ready in {time.perf_counter() - t0:.1f} s: gRPC {server.grpc_url}, HTTP {server.http_url}",
              flush=True)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            duration_s = len(audio) / sr
            print(f"[demo] sample: {SAMPLE_WAV.name}, {duration_s:.2f} s at {sr} Hz", flush=True)
            tokenize(client, audio[: sr // 2], sr)  # warm-up
            reply = tokenize(client, audio, sr)
            print(f"\n[demo] offline audio_tokenizer: {len(reply.audio_tokens)} tokens "
                  f"({len(reply.audio_tokens) / duration_s:.1f} tokens/s) in {reply.latency_s * 1000:.0f} ms "
                  f"(RTF {reply.latency_s / duration_s:.3f})")
            print(reply.token_string[:400] + (" ..." if len(reply.token_string) > 400 else ""))

            stream = TokenizerStream(client, sr)
            lat_ms, got = [], []
            t_stream = time.perf_counter()
            for piece in chunks(audio, sr * STREAM_CHUNK_MS // 1000):
                r = stream.send(piece)
                lat_ms.append(r.latency_s * 1000)
                got.append(r.audio_tokens)
            last = stream.finish()
            got.append(last.audio_tokens)
            total_s = time.perf_counter() - t_stream
            tokens = np.concatenate(got)
            print(f"\n[demo] streaming audio_tokenizer_stream: {len(lat_ms)} chunks of {STREAM_CHUNK_MS} ms, "
                  f"{len(tokens)} tokens; per-chunk latency p50 {np.percentile(lat_ms, 50):.1f} ms, "
                  f"p95 {np.percentile(lat_ms, 95):.1f} ms; flush {last.latency_s * 1000:.1f} ms; "
                  f"RTF {total_s / duration_s:.3f}")
            first = next((i for i, g in enumerate(got) if len(g)), None)
            if first is not None:
                print(f"[demo] first streamed tokens after chunk {first + 1} "
                      f"({(first + 1) * STREAM_CHUNK_MS} ms of audio)")
            same = np.array_equal(tokens, reply.audio_tokens)
            print(f"[demo] streaming (running peak, short segments) vs offline (reference settings): "
                  f"{'identical' if same else f'{int((tokens[:len(reply.audio_tokens)] != reply.audio_tokens[:len(tokens)]).sum())} of {len(tokens)} tokens differ'}")
        finally:
            client.close()
        print("\n[demo] stopping tritonserver", flush=True)
    print("[demo] done", flush=True)
    return 0
