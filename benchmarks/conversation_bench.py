"""Spoken conversations through the controller: voice-to-voice latency with speculation on and off.

    python -m benchmarks.conversation_bench [--callers 4] [--turns 3] [--triton HOST:PORT]
                                            [--checkpoints DIR] [--out benchmarks/results] ...

N simulated callers talk to the controller at the same time through the unmodified OpenAI SDK, each
streaming its microphone at real-time pace (100 ms of PCM16 24 kHz every 100 ms, silence included,
as a phone line does). Each turn is an espeak-ng sentence, every other one with a short pause in the
middle (a break the VAD sees as UserPaused but not as the end of the turn), then silence until the
reply has finished (and a little more). Two controllers (``python -m controller serve`` processes)
serve the same Triton: one with speculative replies, one without; after one unmeasured warm-up caller
on each, the same workload runs against each, in alternating rounds.

Per turn, on the caller's side: voice-to-voice latency = from sending the chunk that holds the end of
the user's speech to receiving the first ``response.output_audio.delta`` of the reply. It includes the
end-of-turn silence the VAD must wait for (``silence_duration_ms``), reported too. From the
controllers' /metrics: speculation started/committed/discarded (commit rate = committed / started),
the controller's own time per turn (decoding, VAD, encoding, sending: time not spent waiting on
Triton), and per-stage latencies.

Without ``--triton``, a tritonserver with the tiny random-weight models is started (CPU), so the
replies are gibberish and their TTS audio short; the latencies are those of this machine's CPU.
One JSON: ``<out>/conversation_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    SENTENCES,
    BackgroundLoad,
    espeak_available,
    machine_info,
    percentiles,
    write_result,
)

NAME = "conversation_bench"
RATE_HZ = 24000
CHUNK_MS = 100
LOUD = 0.01  # |sample| above this counts as speech when locating the end of an utterance


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- workload ----------------------------------------------------------------------------------------
def espeak(text: str, pause_ms: int = 0) -> np.ndarray:
    """``text`` spoken by espeak-ng at 24 kHz; "|" becomes a pause of ``pause_ms``."""
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="conv-bench-") as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        if pause_ms:
            ssml = "<speak>" + text.replace("|", f'<break time="{pause_ms}ms"/>') + "</speak>"
            subprocess.run(["espeak-ng", "-m", "-w", str(raw), ssml], check=True, capture_output=True)
        else:
            subprocess.run(["espeak-ng", "-w", str(raw), text.replace("|", "")], check=True, capture_output=True)
        subprocess.run(["sox", "-D", str(raw), "-r", str(RATE_HZ), "-b", "16", str(out)], check=True,
                       capture_output=True)
        audio, sr = sf.read(str(out), dtype="float32")
    assert sr == RATE_HZ
    return audio


def workload(turns: int, pause_ms: int, max_words: int) -> list[tuple[np.ndarray, str]]:
    """The turns every caller speaks: sentences, every other one with a pause after its first words."""
    out = []
    for i in range(turns):
        words = SENTENCES[i % len(SENTENCES)].split()[:max_words]
        if i % 2:
            text, kind = " ".join(words[:4]) + " | " + " ".join(words[4:]), "paused"
        else:
            text, kind = " ".join(words), "plain"
        out.append((espeak(text, pause_ms if i % 2 else 0), kind))
    return out


# -- one caller --------------------------------------------------------------------------------------
async def caller(port: int, index: int, turns: list[tuple[np.ndarray, str]], end_silence_ms: int,
                 reply_timeout_s: float) -> list[dict]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="sk-bench", websocket_base_url=f"ws://127.0.0.1:{port}/v1")
    step = RATE_HZ * CHUNK_MS // 1000
    records: list[dict] = []
    async with client.realtime.connect(model="step-audio") as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": end_silence_ms}}}})
        state = {"first_audio": None, "done": asyncio.Event(), "status": None, "response_id": None}

        async def receive():
            async for ev in conn:
                if ev.type == "response.created":
                    state["response_id"] = ev.response.id
                elif ev.type == "response.output_audio.delta" and state["first_audio"] is None:
                    state["first_audio"] = time.perf_counter()
                elif ev.type == "response.done":
                    state["status"] = ev.response.status
                    state["done"].set()

        receiver = asyncio.create_task(receive())
        t_next = time.perf_counter()

        async def send(chunk: np.ndarray) -> float:
            """Sends one chunk at its real-time slot; returns when it left."""
            nonlocal t_next
            await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
            t = time.perf_counter()
            pcm = (np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes()
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm).decode())
            t_next += len(chunk) / RATE_HZ
            return t

        try:
            await send(np.zeros(step * (2 + index % 5), np.float32))  # callers start out of step
            for n, (audio, kind) in enumerate(turns):
                state.update(first_audio=None, status=None, response_id=None)
                state["done"].clear()
                last_loud = int(np.flatnonzero(np.abs(audio) > LOUD)[-1])
                t_speech_end = None
                for i in range(0, len(audio), step):
                    t = await send(audio[i:i + step])
                    if t_speech_end is None and i + step > last_loud:
                        t_speech_end = t
                deadline = time.perf_counter() + reply_timeout_s
                while not state["done"].is_set() and time.perf_counter() < deadline:
                    await send(np.zeros(step, np.float32))  # the line stays open: silence
                for _ in range(5):
                    await send(np.zeros(step, np.float32))
                v2v = None if state["first_audio"] is None else state["first_audio"] - t_speech_end
                records.append({"caller": index, "turn": n, "kind": kind, "status": state["status"],
                                "voice_to_voice_s": v2v})
        finally:
            receiver.cancel()
    return records


def scrape(port: int) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def controller_summary(scrapes: list[tuple[str, str]]) -> dict:
    """What changed in one controller's metrics during its phases ((before, after) /metrics pairs)."""
    def d(name: str, labels: str = "") -> float:
        return sum(metric(after, name, labels) - metric(before, name, labels) for before, after in scrapes)

    out: dict = {"turns": int(d("controller_turns_total"))}
    spec = {k: int(d("controller_speculation_total", f'{{outcome="{k}"}}')) for k in ("started", "committed", "discarded")}
    out["speculation"] = {**spec, "commit_rate": round(spec["committed"] / spec["started"], 3) if spec["started"] else None}
    n = d("controller_turn_overhead_seconds_count")
    out["controller_overhead_per_turn_ms"] = {
        "mean": round(1000 * d("controller_turn_overhead_seconds_sum") / n, 3) if n else None, "count": int(n)}
    stages = {}
    for stage in ("tokenizer_flush", "llm_first_text", "tts_first_audio", "voice_to_voice", "asr"):
        c = d("controller_stage_latency_seconds_count", f'{{stage="{stage}"}}')
        if c:
            stages[stage] = {"mean_ms": round(1000 * d("controller_stage_latency_seconds_sum", f'{{stage="{stage}"}}') / c, 1),
                             "count": int(c)}
    out["server_stage_latency"] = stages
    return out


# -- main --------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.conversation_bench")
    p.add_argument("--callers", type=int, default=4)
    p.add_argument("--turns", type=int, default=3, help="turns per caller per round")
    p.add_argument("--rounds", type=int, default=1, help="speculation on/off rounds, alternating")
    p.add_argument("--warmup-turns", type=int, default=2, help="unmeasured turns of one caller per controller first")
    p.add_argument("--max-words", type=int, default=40, help="cut the sentences to this many words")
    p.add_argument("--pause-ms", type=int, default=350, help="the mid-sentence pause of every other turn")
    p.add_argument("--silence-duration-ms", type=int, default=700, help="end-of-turn silence (server_vad)")
    p.add_argument("--controller-pause-ms", type=int, default=200, help="silence that starts a speculation")
    p.add_argument("--max-reply-tokens", type=int, default=12)
    p.add_argument("--tts-max-new-tokens", type=int, default=40)
    p.add_argument("--reply-timeout-s", type=float, default=60.0)
    p.add_argument("--triton", default=None, help="Triton gRPC HOST:PORT (default: start a tiny CPU server)")
    p.add_argument("--checkpoints", default=None, help="checkpoints for the started server (default: tiny, generated)")
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--name", default=NAME)
    return p.parse_args(argv)


def start_tiny_triton(stack: ExitStack, checkpoints: str | None):
    from export.deploy_config import load_config
    from export.render import build_repository
    from export.triton_launcher import TritonServer

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conv-bench-")))
    ckpt = Path(checkpoints) if checkpoints else tmp / "ckpt"
    if not checkpoints:
        from export.tiny import write_tiny

        log("writing tiny checkpoints ...")
        write_tiny(ckpt, progress=lambda _m: None)
    build_repository(load_config("cpu", ckpt), tmp / "repo")
    log("starting tritonserver ...")
    return stack.enter_context(TritonServer(tmp / "repo").start(timeout_s=600))


async def run_phase(port: int, args, turns) -> list[dict]:
    per_caller = await asyncio.gather(*(caller(port, i, turns, args.silence_duration_ms, args.reply_timeout_s)
                                        for i in range(args.callers)))
    return [r for rs in per_caller for r in rs]


def summarize(records: list[dict], silence_ms: int) -> dict:
    v2v = [r["voice_to_voice_s"] for r in records if r["voice_to_voice_s"] is not None]
    by_kind = {k: percentiles([r["voice_to_voice_s"] for r in records if r["kind"] == k and r["voice_to_voice_s"]
                               is not None], scale=1000, digits=1) for k in ("plain", "paused")}
    return {"voice_to_voice_ms": percentiles(v2v, scale=1000, digits=1),
            "voice_to_voice_minus_end_silence_ms": percentiles([x - silence_ms / 1000 for x in v2v], scale=1000, digits=1),
            "voice_to_voice_ms_by_turn_kind": by_kind,
            "turns": len(records), "turns_without_audio": sum(r["voice_to_voice_s"] is None for r in records),
            "statuses": {s: sum(r["status"] == s for r in records) for s in {r["status"] for r in records}}}


class ControllerProcess:
    """``python -m controller serve`` in its own process, so that its CPU time is its own."""

    def __init__(self, triton: str, speculation: bool, args):
        from export.triton_launcher import pick_free_port

        self.port = pick_free_port()
        cmd = [sys.executable, "-m", "controller", "serve", "--triton", triton, "--port", str(self.port),
               "--pause-ms", str(args.controller_pause_ms), "--max-reply-tokens", str(args.max_reply_tokens),
               "--tts-max-new-tokens", str(args.tts_max_new_tokens), "--seed", "0",
               "--max-sessions", str(max(64, args.callers)), "--log-level", "WARNING"]
        if not speculation:
            cmd.append("--no-speculation")
        self.proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent)

    def __enter__(self) -> ControllerProcess:
        deadline = time.monotonic() + 120
        while True:
            try:
                scrape(self.port)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the controller did not start") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cpu_s(self) -> float:
        """User + system CPU seconds the controller process has used."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not espeak_available():
        log("espeak-ng and sox are needed for the spoken workload")
        return 2

    t_start = time.perf_counter()
    turns = workload(args.turns, args.pause_ms, args.max_words)
    with ExitStack() as stack:
        triton = args.triton or start_tiny_triton(stack, args.checkpoints).grpc_url
        controllers = {mode: stack.enter_context(ControllerProcess(triton, mode == "on", args)) for mode in ("on", "off")}
        for mode in ("on", "off"):  # first requests warm the models up (torch, ONNX Runtime): not measured
            if args.warmup_turns:
                log(f"warm-up: speculation {mode}, 1 caller x {args.warmup_turns} turns ...")
                asyncio.run(caller(controllers[mode].port, 0, turns[:args.warmup_turns], args.silence_duration_ms,
                                   args.reply_timeout_s))
        phases: dict[str, list] = {"on": [], "off": []}
        servers: dict[str, list] = {"on": [], "off": []}
        loads: dict[str, list] = {"on": [], "off": []}
        cpu_s: dict[str, float] = {"on": 0.0, "off": 0.0}
        for rnd in range(args.rounds):
            for mode in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
                log(f"round {rnd + 1}: speculation {mode}, {args.callers} callers x {args.turns} turns ...")
                before, cpu0 = scrape(controllers[mode].port), controllers[mode].cpu_s()
                with BackgroundLoad() as bg:
                    records = asyncio.run(run_phase(controllers[mode].port, args, turns))
                cpu_s[mode] += controllers[mode].cpu_s() - cpu0
                phases[mode] += records
                servers[mode].append((before, scrape(controllers[mode].port)))
                loads[mode].append(bg.result())

    results: dict = {}
    for mode in ("on", "off"):
        s = summarize(phases[mode], args.silence_duration_ms)
        ctl = controller_summary(servers[mode])
        ctl["controller_cpu_per_turn_ms"] = round(1000 * cpu_s[mode] / ctl["turns"], 1) if ctl["turns"] else None
        results[f"speculation_{mode}"] = {**s, "controller": ctl, "background_load": loads[mode],
                                          "records": phases[mode]}
    on, off = results["speculation_on"]["voice_to_voice_ms"], results["speculation_off"]["voice_to_voice_ms"]
    results["side_by_side_ms"] = {q: {"on": on.get(q), "off": off.get(q),
                                      "on_over_off": round(on[q] / off[q], 3) if on.get(q) and off.get(q) else None}
                                  for q in ("p50", "p90", "p99")}
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    config = {**vars(args), "triton": args.triton or "tiny CPU tritonserver started by the benchmark",
              "chunk_ms": CHUNK_MS, "rate_hz": RATE_HZ,
              "utterance_s": [round(len(a) / RATE_HZ, 2) for a, _ in turns]}
    path = write_result(args.name, config, results, args.out, machine=machine_info(include_torch=False))
    print(f"{'':22}{'p50':>9}{'p90':>9}{'p99':>9}   (voice-to-voice ms, end-of-turn silence {args.silence_duration_ms} ms)")
    for mode in ("on", "off"):
        v = results[f"speculation_{mode}"]["voice_to_voice_ms"]
        print(f"speculation {mode:<10}" + "".join(f"{v.get(q, float('nan')):>9.0f}" for q in ("p50", "p90", "p99")))
    spec = results["speculation_on"]["controller"]
    print(f"speculation (on): {spec['speculation']}")
    for mode in ("on", "off"):
        c = results[f"speculation_{mode}"]["controller"]
        print(f"controller per turn (speculation {mode}): {c['controller_cpu_per_turn_ms']} ms CPU of its process, "
              f"{c['controller_overhead_per_turn_ms']['mean']} ms of event-loop time on the turn's events")
    print(f"wrote {path} in {results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
