"""``python -m controller serve --triton HOST:PORT --port 8765``: the real-time voice server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from controller.clauses import ClausePolicy
from controller.config import ControllerConfig


def _config(args: argparse.Namespace) -> ControllerConfig:
    keys = [*args.api_key, *(k for k in os.environ.get("CONTROLLER_API_KEYS", "").split(",") if k.strip())]
    return ControllerConfig(
        triton_url=args.triton, host=args.host, port=args.port, api_keys=tuple(k.strip() for k in keys),
        max_sessions=args.max_sessions, max_frame_bytes=args.max_frame_bytes,
        max_session_audio_s=args.max_session_audio_s, require_session_update=args.require_session_update,
        ws_compress=args.ws_compress, vad_model=args.vad_model, vad_batch_ms=args.vad_batch_ms,
        pause_ms=args.pause_ms, speculation=not args.no_speculation,
        speculate_tts=not args.no_speculate_tts, max_reply_tokens=args.max_reply_tokens,
        tts_max_new_tokens=args.tts_max_new_tokens or None, max_context_tokens=args.max_context_tokens,
        temperature=args.temperature, seed=args.seed, response_timeout_s=args.response_timeout_s,
        clause_policy=ClausePolicy(later_first_chunk_tokens=args.tts_later_first_chunk_tokens or None,
                                   later_min_ahead_s=args.tts_later_min_ahead_s,
                                   tts_ahead=args.tts_ahead),
        **({"default_instructions": args.instructions} if args.instructions is not None else {}),
    )


async def _serve(cfg: ControllerConfig, triton_wait_s: float, drain_s: float = 0.0) -> int:
    from controller.serve import start

    running = await start(cfg, triton_wait_s=triton_wait_s)
    print(f"[controller] ws://{cfg.host}:{running.port}/v1/realtime  (Triton {cfg.triton_url}; "
          f"/healthz, /metrics)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop(drain_s)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m controller")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the OpenAI Realtime protocol on top of Triton")
    p.add_argument("--triton", default=os.environ.get("TRITON_GRPC_URL", "127.0.0.1:8001"), help="Triton gRPC HOST:PORT")
    p.add_argument("--host", default=os.environ.get("CONTROLLER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("CONTROLLER_PORT", 8765)))
    p.add_argument("--api-key", action="append", default=[], help="accepted Bearer key (repeatable; also "
                   "$CONTROLLER_API_KEYS, comma-separated); none: localhost only")
    d = ControllerConfig()
    p.add_argument("--max-sessions", type=int, default=d.max_sessions)
    p.add_argument("--max-frame-bytes", type=int, default=d.max_frame_bytes)
    p.add_argument("--max-session-audio-s", type=float, default=d.max_session_audio_s)
    p.add_argument("--require-session-update", action="store_true", help="reject audio before session.update")
    p.add_argument("--ws-compress", action="store_true", help="offer permessage-deflate (less bandwidth, more CPU)")
    p.add_argument("--vad-model", default=None, help="silero_vad.onnx (default: $SILERO_VAD_ONNX or the venv's copy)")
    p.add_argument("--vad-batch-ms", type=int, default=d.vad_batch_ms,
                   help="classify the sessions' VAD windows arriving within this long together (0: each at once)")
    p.add_argument("--pause-ms", type=int, default=d.pause_ms, help="silence that starts a speculative reply")
    p.add_argument("--no-speculation", action="store_true")
    p.add_argument("--no-speculate-tts", action="store_true", help="speculate the chat reply only, not its first TTS")
    p.add_argument("--max-reply-tokens", type=int, default=d.max_reply_tokens)
    p.add_argument("--tts-max-new-tokens", type=int, default=d.tts_max_new_tokens, help="per clause; 0: model default")
    p.add_argument("--tts-later-first-chunk-tokens", type=int, default=d.clause_policy.later_first_chunk_tokens,
                   help="speech tokens before the first audio of a reply's later clauses, when enough audio is "
                        "queued (fewer token2wav runs); 0: the model's first chunk")
    p.add_argument("--tts-later-min-ahead-s", type=float, default=d.clause_policy.later_min_ahead_s,
                   help="reply audio that must be queued for a later clause to use that larger first chunk")
    p.add_argument("--tts-ahead", action="store_true",
                   help="start a clause's TTS at the previous clause's first audio (default: after its last)")
    p.add_argument("--max-context-tokens", type=int, default=d.max_context_tokens)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--instructions", default=None, help="default system prompt of new sessions")
    p.add_argument("--response-timeout-s", type=float, default=d.response_timeout_s,
                   help="a Triton stream silent this long fails its reply")
    p.add_argument("--triton-wait-s", type=float, default=120.0, help="how long to wait for Triton to answer")
    p.add_argument("--drain-s", type=float, default=0.0,
                   help="on SIGTERM/SIGINT, refuse new sessions and give the open ones this long to end (0: close "
                        "them at once)")
    p.add_argument("--log-level", default=os.environ.get("CONTROLLER_LOG_LEVEL", "INFO"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = _config(args)
    try:
        cfg.check()
        if args.drain_s < 0:
            raise ValueError(f"--drain-s must be >= 0, got {args.drain_s}")
        return asyncio.run(_serve(cfg, args.triton_wait_s, args.drain_s))
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
