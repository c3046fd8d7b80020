"""``python -m client talk``: one spoken turn (or a live microphone) against the controller, printing the
events with their times and the voice-to-voice latency, saving the reply audio."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import numpy as np

from client.realtime import RATE_HZ, Conversation, base_url, describe, to_24k

END_SILENCE_MS = 1500  # sent after the speech so server VAD ends the turn (its default needs 500 ms)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("wav", nargs="?", help="speech to send (any rate; resampled to 24 kHz); omit with --mic")
    p.add_argument("--url", default=os.environ.get("REALTIME_URL", "ws://127.0.0.1:8765/v1/realtime"))
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "local"))
    p.add_argument("--out", default=None, help="write the reply audio here (24 kHz WAV)")
    p.add_argument("--realtime", action="store_true", help="send at real-time pace (default: as fast as possible)")
    p.add_argument("--instructions", default=None, help="the session's system prompt")
    p.add_argument("--mic", action="store_true", help="talk live from the default microphone (needs sounddevice)")
    p.add_argument("--timeout-s", type=float, default=120.0)


async def _talk(args: argparse.Namespace) -> int:
    from openai import AsyncOpenAI

    from client.audio_io import read_wav

    client = AsyncOpenAI(api_key=args.api_key, websocket_base_url=base_url(args.url))
    async with client.realtime.connect(model="step-audio") as conn:
        def show(r):
            if line := describe(r):
                print(f"{r.t_s:8.3f} s  {line}", file=sys.stderr, flush=True)

        conv = Conversation(conn, on_event=show)
        session = {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}}
        if args.instructions:
            session["instructions"] = args.instructions
        await conv.update_session(**session)
        if args.mic:
            return await _mic(conv)
        audio, sr = read_wav(args.wav)
        speech_end = await conv.say(to_24k(audio, sr), realtime=args.realtime)
        print(f"{speech_end:8.3f} s  (end of the file's speech sent)", file=sys.stderr, flush=True)
        await conv.silence(END_SILENCE_MS, realtime=args.realtime)
        done = await _last_response(conv, args.timeout_s)
        if done is None:
            print("# no response: the server's VAD heard no end of turn", file=sys.stderr)
            return 1
        rid = done.event.response.id
        first = next((e for e in conv.of("response.output_audio.delta") if e.event.response_id == rid), None)
        reply = conv.reply_audio(rid)
        if first is not None:
            print(f"# voice-to-voice {first.t_s - speech_end:.3f} s (end of speech sent -> first audio delta; "
                  f"includes the {END_SILENCE_MS if not args.realtime else 'end-of-turn'} ms silence rule)",
                  file=sys.stderr)
        print(f"# reply: {len(reply) / RATE_HZ:.2f} s of audio, transcript {conv.transcript(rid)!r}", file=sys.stderr)
        if args.out:
            import soundfile as sf

            sf.write(args.out, reply, RATE_HZ)
            print(f"# wrote {args.out}", file=sys.stderr)
        await conv.close()
        return 0 if done.event.response.status == "completed" else 1


async def _last_response(conv: Conversation, timeout_s: float):
    """The response.done of the last response the server created (earlier ones may have been interrupted)."""
    await asyncio.sleep(0.3)  # let the end-of-turn events of the silence arrive
    created = conv.of("response.created")
    if not created:
        return None
    rid = created[-1].event.response.id

    async def wait():
        while not any(e.event.response.id == rid for e in conv.of("response.done")):
            await conv.until("response.done", count=len(conv.of("response.done")) + 1, timeout_s=timeout_s)
        return next(e for e in conv.of("response.done") if e.event.response.id == rid)

    return await asyncio.wait_for(wait(), timeout_s)


async def _mic(conv: Conversation) -> int:
    try:
        import sounddevice as sd
    except ImportError:
        print("error: --mic needs the optional sounddevice package (pip install sounddevice)", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[np.ndarray] = asyncio.Queue()
    with sd.InputStream(samplerate=RATE_HZ, channels=1, dtype="float32", blocksize=RATE_HZ // 25,
                        callback=lambda data, *_: loop.call_soon_threadsafe(q.put_nowait, data[:, 0].copy())):
        print("# listening; Ctrl-C ends (replies are printed, not played)", file=sys.stderr)
        while True:
            await conv.say(await q.get(), realtime=False)


def run(args: argparse.Namespace) -> int:
    if not args.mic and not args.wav:
        print("error: give a WAV file or --mic", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_talk(args))
    except KeyboardInterrupt:
        return 130
