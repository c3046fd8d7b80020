"""The scripted spoken conversation of ``make demo``, through the unmodified ``openai`` SDK.

Turn 1 has a pause in the middle of the sentence (shorter than the end-of-turn silence): the controller
starts a speculative reply there and discards it when the speech goes on; the silence after the sentence
starts another, which the end of the turn commits. Turn 2 asks a question and, once the reply's audio
flows, the caller speaks over it: a barge-in. The caller then truncates the interrupted assistant item
to what it heard, as a real client does, and the barge-in utterance gets its own reply.

The timeline merges the wire events with the controller's speculation counters (its ``/metrics``,
polled), which the wire never shows: speculation stays off the wire by design.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.audio_io import read_wav
from client.realtime import RATE_HZ, Conversation, Received, describe, to_24k

SAMPLES = Path(__file__).resolve().parent / "samples"
END_OF_TURN_SILENCE_MS = 800  # the session's server_vad silence_duration_ms
TRAILING_SILENCE_MS = 1200  # what the caller "says" after a sentence: enough to end the turn
STATE_OF = {  # wire event -> the turn state it shows (UserPaused is only seen through the counters)
    "input_audio_buffer.speech_started": "UserSpeaking",
    "input_audio_buffer.speech_stopped": "Silence (end of turn)",
    "response.created": "BotReplying",
    "response.done": "Silence",
}


@dataclass
class TurnStats:
    name: str
    speech_end_s: float  # wall time the last piece of speech was sent
    response_id: str = ""
    first_audio_s: float | None = None
    done_s: float | None = None
    status: str = ""
    audio_s: float = 0.0
    transcript: str = ""


@dataclass
class DemoResult:
    turns: list[TurnStats] = field(default_factory=list)
    speculation: dict[str, float] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)
    replies: list[np.ndarray] = field(default_factory=list)  # 24 kHz audio of each turn's reply


def load_sample(name: str) -> np.ndarray:
    audio, sr = read_wav(SAMPLES / f"{name}.wav")
    return to_24k(audio, sr)


def speculation_counters(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^controller_speculation_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}


class Timeline:
    def __init__(self, conv: Conversation, metrics_url: str, print_line):
        self.conv, self.metrics_url, self.print_line = conv, metrics_url, print_line
        self.lines: list[str] = []
        self.state = "Silence"
        self.counters = speculation_counters(metrics_url)

    def line(self, t_s: float, text: str) -> None:
        s = f"{t_s:7.2f} s  {text}"
        self.lines.append(s)
        self.print_line(s)

    def on_event(self, r: Received) -> None:
        if r.type == "response.output_audio.delta" and not any(
                e.type == "response.output_audio.delta" and e.event.response_id == r.event.response_id
                for e in self.conv.events[:-1]):
            self.line(r.t_s, "first audio delta of the reply")
        text = describe(r)
        if text and r.type not in ("rate_limits.updated",):
            self.line(r.t_s, text)
        state = STATE_OF.get(r.type)
        if state and state != self.state:
            self.state = state
            self.line(r.t_s, f"  [state] {state}")

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            try:
                now = await asyncio.to_thread(speculation_counters, self.metrics_url)
            except OSError:
                continue
            for outcome in ("started", "discarded", "committed"):
                if now.get(outcome, 0) > self.counters.get(outcome, 0):
                    what = {"started": "UserPaused: speculative reply started",
                            "discarded": "speech resumed: speculation discarded (nothing was on the wire)",
                            "committed": "end of turn: speculation committed (its output streams at once)"}
                    self.line(self.conv.now(), f"  [controller] {what[outcome]}")
            self.counters = now


async def _speak_turn(conv: Conversation, name: str, audio: np.ndarray) -> TurnStats:
    end = await conv.say(audio)
    return TurnStats(name, end)


async def _finish_turn(conv: Conversation, turn: TurnStats, since: int, timeout_s: float) -> TurnStats:
    created = await conv.until("response.created", since=since, timeout_s=timeout_s)
    turn.response_id = created.event.response.id
    done = await _done_of(conv, turn.response_id, timeout_s)
    turn.done_s, turn.status = done.t_s, done.event.response.status
    first = next((e for e in conv.of("response.output_audio.delta") if e.event.response_id == turn.response_id), None)
    turn.first_audio_s = first.t_s if first else None
    turn.audio_s = len(conv.reply_audio(turn.response_id)) / RATE_HZ
    turn.transcript = conv.transcript(turn.response_id)
    return turn


async def _done_of(conv: Conversation, response_id: str, timeout_s: float) -> Received:
    async def wait() -> Received:
        while True:
            for e in conv.of("response.done"):
                if e.event.response.id == response_id:
                    return e
            await conv.until("response.done", count=len(conv.of("response.done")) + 1, timeout_s=timeout_s)

    return await asyncio.wait_for(wait(), timeout_s)


def run(realtime_url: str, metrics_url: str, out_dir: Path, print_line=print, **kw) -> DemoResult:
    """The conversation; each reply's audio is written to ``out_dir/reply_<turn>.wav``."""
    import soundfile as sf

    result = asyncio.run(run_conversation(realtime_url, metrics_url, print_line, **kw))
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, audio in enumerate(result.replies, 1):
        if audio.size:
            sf.write(str(out_dir / f"reply_{i}.wav"), audio, RATE_HZ)
    return result


async def run_conversation(realtime_url: str, metrics_url: str, print_line=print, api_key: str = "demo",
                           timeout_s: float = 180.0) -> DemoResult:
    from openai import AsyncOpenAI

    from client.realtime import base_url

    client = AsyncOpenAI(api_key=api_key, websocket_base_url=base_url(realtime_url))
    result = DemoResult()
    async with client.realtime.connect(model="step-audio") as conn:
        conv = Conversation(conn)
        timeline = Timeline(conv, metrics_url, print_line)
        conv.on_event = timeline.on_event
        poller = asyncio.create_task(timeline.poll())
        try:
            await conv.update_session(instructions="You are a friendly voice assistant. Answer briefly.",
                                      audio={"input": {"turn_detection": {
                                          "type": "server_vad", "silence_duration_ms": END_OF_TURN_SILENCE_MS,
                                          "prefix_padding_ms": 300, "interrupt_response": True}}})
            timeline.line(conv.now(), "turn 1: speaking (with a 0.7 s pause mid-sentence), at real-time pace")
            since = len(conv.events)
            turn = await _speak_turn(conv, "order (with a pause)", load_sample("demo_order"))
            await conv.silence(TRAILING_SILENCE_MS)
            result.turns.append(await _finish_turn(conv, turn, since, timeout_s))

            timeline.line(conv.now(), "turn 2: a question; the caller will talk over the reply")
            since = len(conv.events)
            turn = await _speak_turn(conv, "weather (interrupted)", load_sample("demo_weather"))
            n_done = len(conv.of("response.done"))
            # Silence until the reply's audio starts (or the reply ends), then speak over it.
            await conv.silence(10_000, stop=lambda: bool(conv.of("response.output_audio.delta", since))
                               or len(conv.of("response.done")) > n_done)
            heard_s = 0.3  # the caller barges in after hearing about this much
            await asyncio.sleep(heard_s)
            timeline.line(conv.now(), "barge-in: the caller speaks over the reply")
            barge = await _speak_turn(conv, "barge-in", load_sample("demo_bargein"))
            result.turns.append(await _finish_turn(conv, turn, since, timeout_s))
            interrupted = result.turns[-1]
            if interrupted.status == "cancelled":
                item = next(e.event.item.id for e in conv.of("response.output_item.added")
                            if e.event.response_id == interrupted.response_id)
                played_ms = int(min(heard_s + 0.1, interrupted.audio_s) * 1000)
                await conn.conversation.item.truncate(item_id=item, content_index=0, audio_end_ms=played_ms)
                await conv.until("conversation.item.truncated")
            since_barge = len(conv.events)
            await conv.silence(TRAILING_SILENCE_MS)
            result.turns.append(await _finish_turn(conv, barge, since_barge - 1, timeout_s))
            await asyncio.sleep(0.3)  # the last ASR transcript, if still on its way
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            await conv.close()
        result.replies = [conv.reply_audio(t.response_id) for t in result.turns]
        result.timeline = timeline.lines
        result.speculation = await asyncio.to_thread(speculation_counters, metrics_url)
    return result


def latency_table(result: DemoResult) -> str:
    rows = ["| turn | reply status | voice-to-voice (end of speech -> first audio) | reply done after | reply audio |",
            "|---|---|---|---|---|"]
    for t in result.turns:
        v2v = f"{t.first_audio_s - t.speech_end_s:.2f} s" if t.first_audio_s is not None else "no audio"
        done = f"{t.done_s - t.speech_end_s:.2f} s" if t.done_s is not None else "-"
        rows.append(f"| {t.name} | {t.status} | {v2v} | {done} | {t.audio_s:.2f} s |")
    return "\n".join(rows)
