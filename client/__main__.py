"""Command-line client: ``python -m client tokenize --url HOST:GRPC_PORT WAV``."""

from __future__ import annotations

import argparse
import sys

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.audio_io import read_wav
from client.tokenize import chunks, tokenize, tokenize_streaming


def _tokenize(args: argparse.Namespace) -> int:
    audio, sr = read_wav(args.wav)
    client = grpcclient.InferenceServerClient(args.url)
    try:
        if args.stream:
            pieces = list(chunks(audio, max(1, sr * args.chunk_ms // 1000)))
            replies, last = tokenize_streaming(client, pieces, sr)
            text = "".join(r.token_string for r in [*replies, last])
            lat = [r.latency_s * 1000 for r in replies]
            if args.verbose and lat:
                print(f"# {len(pieces)} chunks of {args.chunk_ms} ms; per-chunk latency ms: "
                      f"median {sorted(lat)[len(lat) // 2]:.1f}, max {max(lat):.1f}", file=sys.stderr)
        else:
            reply = tokenize(client, audio, sr, segment_ms=args.segment_ms)
            text = reply.token_string
            if args.verbose:
                print(f"# {len(audio) / sr:.2f} s audio, {len(reply.audio_tokens)} tokens, "
                      f"{reply.latency_s * 1000:.1f} ms", file=sys.stderr)
    except InferenceServerException as exc:
        print(f"error: {exc.message()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(text)
    return 0


def _chat(args: argparse.Namespace) -> int:
    from client.chat import build_inputs, stream_generate

    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.text}]
    client = grpcclient.InferenceServerClient(args.url)
    last = None
    try:
        inputs = build_inputs(messages=messages, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, seed=args.seed)
        for chunk in stream_generate(client, args.model, inputs):
            if last is None and args.verbose:
                print(f"# first token after {chunk.t_s * 1000:.0f} ms", file=sys.stderr)
            print(chunk.text, end="", flush=True)
            last = chunk
    except InferenceServerException as exc:
        print(f"error: {exc.message()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print()
    if args.verbose and last is not None:
        rate = last.completion_tokens / last.t_s if last.t_s else 0.0
        print(f"# {last.finish_reason}: {last.prompt_tokens} prompt tokens ({last.cached_prompt_tokens} cached), "
              f"{last.completion_tokens} new in {last.t_s:.2f} s ({rate:.1f} tokens/s)", file=sys.stderr)
    return 0


def _tts(args: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from client.tts import stream_tts, tts_inputs

    clone_audio = clone_sr = None
    if args.clone:
        clone_audio, clone_sr = read_wav(args.clone)
    client = grpcclient.InferenceServerClient(args.url)
    parts, sr = [], 22050
    try:
        inputs = tts_inputs(args.text, speaker=args.speaker, clone_audio=clone_audio, clone_sample_rate_hz=clone_sr,
                            clone_text=args.clone_text, seed=args.seed, max_new_tokens=args.max_new_tokens)
        for audio, chunk_sr, t_s in stream_tts(client, inputs):
            sr = chunk_sr
            if not parts:
                print(f"# first chunk after {t_s * 1000:.0f} ms", file=sys.stderr)
            parts.append(audio)
    except InferenceServerException as exc:
        print(f"error: {exc.message()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    wav = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    sf.write(args.out, wav, sr)
    print(f"# wrote {args.out}: {len(wav) / sr:.2f} s in {len(parts)} chunks", file=sys.stderr)
    return 0


def _asr(args: argparse.Namespace) -> int:
    from client.asr import transcribe

    audio, sr = read_wav(args.wav)
    client = grpcclient.InferenceServerClient(args.url)
    try:
        text = transcribe(client, audio, sr)
    except InferenceServerException as exc:
        print(f"error: {exc.message()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client")
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("tokenize", help="print the <audio_N> token string of a WAV file")
    tok.add_argument("wav")
    tok.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC HOST:PORT")
    tok.add_argument("--stream", action="store_true", help="use the streaming model, chunk by chunk")
    tok.add_argument("--chunk-ms", type=int, default=100)
    tok.add_argument("--segment-ms", type=int, default=None, help="vq06 segment (offline); default 30 s")
    tok.add_argument("-v", "--verbose", action="store_true")
    chat = sub.add_parser("chat", help="stream a chat_llm reply to the terminal")
    chat.add_argument("text")
    chat.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC HOST:PORT")
    chat.add_argument("--model", default="chat_llm")
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=None)
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("-v", "--verbose", action="store_true")
    from client.talk import add_arguments as talk_arguments

    talk = sub.add_parser("talk", help="one spoken turn through the controller (OpenAI Realtime), or --mic")
    talk_arguments(talk)
    tts = sub.add_parser("tts", help="stream speech from the tts model into a WAV file")
    tts.add_argument("text")
    tts.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC HOST:PORT")
    tts.add_argument("--out", default="out.wav")
    tts.add_argument("--speaker", default=None, help="built-in speaker id (default: the server's)")
    tts.add_argument("--clone", default=None, help="prompt WAV of the voice to clone")
    tts.add_argument("--clone-text", default=None, help="exact transcript of the prompt WAV")
    tts.add_argument("--seed", type=int, default=None)
    tts.add_argument("--max-new-tokens", type=int, default=None)
    asr = sub.add_parser("asr", help="print the transcript of a WAV file (the asr model)")
    asr.add_argument("wav")
    asr.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC HOST:PORT")
    args = parser.parse_args(argv)
    if args.command == "talk":
        from client.talk import run

        return run(args)
    return {"tokenize": _tokenize, "chat": _chat, "tts": _tts, "asr": _asr}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
