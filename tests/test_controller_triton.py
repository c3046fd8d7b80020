"""The controller against a real tritonserver (tiny models), driven by the unmodified OpenAI SDK.

Speech comes from espeak-ng. The audio is sent faster than real time (the controller's clock is the
audio itself); where a test needs the controller to have reacted to a pause before the user goes on,
it waits for that on the server side (its /metrics), as a slower speaker would give it time to.
Every server event is validated strictly against the SDK's own event models.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from client.chat import build_inputs, stream_generate
from controller.config import ControllerConfig
from controller.serve import ControllerThread
from tests.conftest import espeak_wav

# The tiny TTS LM is random: about 7% of its tokens are audio ids, so a clause with 30 tokens has no audio
# one time in nine; with 120 the chance is below 1e-3 per clause, so a reply practically always has audio.
TTS_TOKENS = 120

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RATE_HZ = 24000
CHUNK_MS = 100
SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
TURN = {"type": "server_vad", "silence_duration_ms": 800, "prefix_padding_ms": 300}


@pytest.fixture(scope="module")
def controller(tiny_server):
    cfg = ControllerConfig(triton_url=tiny_server.grpc_url, port=0, max_reply_tokens=8, tts_max_new_tokens=TTS_TOKENS,
                           seed=0, pause_ms=200, max_frame_bytes=1 << 20, require_session_update=True)
    with ControllerThread(cfg) as c:
        c.triton = tiny_server
        yield c


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    d = tmp_path_factory.mktemp("utterances")

    def say(name: str, text: str, pause_ms: int = 0) -> np.ndarray:
        audio, sr = sf.read(str(espeak_wav(text, d / f"{name}.wav", RATE_HZ, pause_ms)), dtype="float32")
        assert sr == RATE_HZ
        return audio

    return {
        "weather": say("weather", "What is the weather like today in London?"),
        "joke": say("joke", "Please tell me a short joke about cats."),
        "paused": say("paused", "I would like to order | a large pizza with cheese.", pause_ms=450),
        "numbers": [say(f"n{i}", f"Number {w}, and then some more words.") for i, w in
                    enumerate(("one", "two", "three", "four", "five", "six", "seven", "eight"))],
    }


def pcm_b64(x: np.ndarray) -> str:
    return base64.b64encode((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE_HZ * ms // 1000, np.float32)


def metric(c: ControllerThread, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{c.port}/metrics", timeout=10).read().decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def triton_metric(c: ControllerThread, name: str) -> float:
    text = urllib.request.urlopen(f"http://{c.triton.metrics_url}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def wait_until(pred, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Caller:
    """One SDK connection and every event it received (validated)."""

    def __init__(self, conn):
        self.conn = conn
        self.events: list = []

    async def setup(self, **session) -> None:
        await self.conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": TURN}},
                                                **session})
        await self.until("session.updated")

    async def say(self, audio: np.ndarray, upto_s: float | None = None) -> None:
        step = RATE_HZ * CHUNK_MS // 1000
        end = len(audio) if upto_s is None else int(upto_s * RATE_HZ)
        for i in range(0, end, step):
            await self.conn.input_audio_buffer.append(audio=pcm_b64(audio[i:min(i + step, end)]))

    async def until(self, type_: str, count: int = 1, timeout_s: float = 60.0):
        async def read():
            while len(self.of(type_)) < count:
                data = await self.conn.recv_bytes()
                SERVER_EVENT.validate_json(data)  # strictly: every required field, the right types
                self.events.append(self.conn.parse_event(data))
        await asyncio.wait_for(read(), timeout_s)
        return self.of(type_)[count - 1]

    def of(self, type_: str) -> list:
        return [e for e in self.events if e.type == type_]

    def audio(self, response_id: str) -> np.ndarray:
        data = b"".join(base64.b64decode(e.delta) for e in self.of("response.output_audio.delta")
                        if e.response_id == response_id)
        return np.frombuffer(data, "<i2")


def sdk(c: ControllerThread) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="sk-local", websocket_base_url=f"ws://127.0.0.1:{c.port}/v1")


def run(coro, timeout_s: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def chat_slot_is_free(c: ControllerThread) -> bool:
    """chat_llm runs one request at a time in this server: a short one finishes promptly only if nothing
    else (a request we failed to cancel) holds the slot."""
    client = grpcclient.InferenceServerClient(c.triton.grpc_url)
    try:
        t0 = time.perf_counter()
        list(stream_generate(client, "chat_llm", build_inputs(prompt_ids=[1, 4, 385], max_new_tokens=2), timeout_s=30))
        return time.perf_counter() - t0 < 5
    finally:
        client.close()


def asr_deployed(c: ControllerThread) -> bool:
    return c.server.backend.has_asr


def test_two_turn_spoken_conversation(controller, utterances):
    async def go():
        async with sdk(controller).realtime.connect(model="step-audio") as conn:
            caller = Caller(conn)
            await caller.until("session.created")
            await caller.setup(instructions="You are a helpful assistant.")
            for n, name in enumerate(("weather", "joke"), start=1):
                await caller.say(np.concatenate([silence(300), utterances[name], silence(1200)]))
                await caller.until("response.done", n)
            if asr_deployed(controller):
                await caller.until("conversation.item.input_audio_transcription.completed", 2)
            return caller

    caller = run(go())
    users = [e.item for e in caller.of("conversation.item.done") if e.item.role == "user"]
    assert len(users) == 2 and len(caller.of("input_audio_buffer.speech_started")) == 2
    for e in caller.of("input_audio_buffer.speech_stopped"):
        assert e.audio_end_ms > 0
    for done in caller.of("response.done"):
        r = done.response
        assert r.status in ("completed", "incomplete") and r.usage.output_tokens > 0
        pcm = caller.audio(r.id)
        assert len(pcm) > 0 and np.abs(pcm).max() > 0
        transcript = "".join(e.delta for e in caller.of("response.output_audio_transcript.delta") if e.response_id == r.id)
        assert transcript and r.output[0].content[0].transcript == transcript
    if asr_deployed(controller):
        got = {e.item_id for e in caller.of("conversation.item.input_audio_transcription.completed")}
        assert got == {u.id for u in users}


def test_short_pause_discards_the_speculation_long_pause_commits_it(controller, utterances):
    audio = np.concatenate([silence(300), utterances["paused"], silence(1500)])
    # where the espeak break is: the longest quiet stretch between the first and the last sound
    loud = np.convolve(np.abs(audio) > 0.01, np.ones(240), "same") > 0
    change = np.flatnonzero(np.diff(loud.astype(np.int8)))  # indices before each change
    runs = [(a + 1, b + 1) for a, b in itertools.pairwise(change) if not loud[a + 1]]
    pause_start, pause_end = max(runs, key=lambda r: r[1] - r[0])
    speech_end = int(np.flatnonzero(loud)[-1])
    assert 300 < (pause_end - pause_start) * 1000 / RATE_HZ < 800  # shorter than the 800 ms end of turn

    async def go():
        started0, discarded0 = metric(controller, "controller_speculation_total", '{outcome="started"}'), \
            metric(controller, "controller_speculation_total", '{outcome="discarded"}')
        committed0 = metric(controller, "controller_speculation_total", '{outcome="committed"}')
        async with sdk(controller).realtime.connect(model="step-audio") as conn:
            caller = Caller(conn)
            await caller.setup()
            await caller.say(audio, upto_s=(pause_end - 0.05 * RATE_HZ) / RATE_HZ)
            await wait_until(lambda: metric(controller, "controller_speculation_total", '{outcome="started"}')
                             > started0, what="a speculation to start in the pause")
            await caller.say(audio[pause_end - int(0.05 * RATE_HZ):speech_end + int(0.4 * RATE_HZ)])
            await wait_until(lambda: metric(controller, "controller_speculation_total", '{outcome="started"}')
                             > started0 + 1, what="a second speculation after the last word")
            await caller.say(audio[speech_end + int(0.4 * RATE_HZ):])
            await caller.until("response.done")
        counts = {k: metric(controller, "controller_speculation_total", f'{{outcome="{k}"}}')
                  for k in ("started", "discarded", "committed")}
        return caller, counts["started"] - started0, counts["discarded"] - discarded0, counts["committed"] - committed0

    caller, started, discarded, committed = run(go())
    assert len(caller.of("input_audio_buffer.speech_started")) == 1
    assert len(caller.of("input_audio_buffer.committed")) == 1
    assert len([e for e in caller.of("conversation.item.added") if e.item.role == "user"]) == 1
    assert started == 2 and discarded == 1 and committed == 1
    assert caller.of("response.done")[0].response.status in ("completed", "incomplete")


def test_barge_in_cancels_the_reply_and_truncate_cuts_it(controller, utterances):
    async def go():
        async with sdk(controller).realtime.connect(model="step-audio") as conn:
            caller = Caller(conn)
            await caller.setup()
            await caller.say(np.concatenate([utterances["weather"], silence(1000)]))
            created = await caller.until("response.created")
            await caller.say(np.concatenate([utterances["joke"][: RATE_HZ], silence(1000)]))  # talk over the reply
            first = await caller.until("response.done")
            item_id = first.response.output[0].id
            await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=0)
            truncated = await caller.until("conversation.item.truncated")
            await conn.conversation.item.retrieve(item_id=item_id)
            retrieved = await caller.until("conversation.item.retrieved")
            await caller.until("response.done", 2)
            return caller, created, first, truncated, retrieved

    caller, created, first, truncated, retrieved = run(go())
    assert first.response.id == created.response.id
    assert first.response.status == "cancelled"
    assert first.response.status_details.reason == "turn_detected"
    assert len(caller.of("input_audio_buffer.speech_started")) == 2
    assert truncated.audio_end_ms == 0 and retrieved.item.content[0].transcript == ""
    assert caller.of("response.done")[1].response.status in ("completed", "incomplete")
    assert chat_slot_is_free(controller)


def test_eight_concurrent_sessions_stay_isolated(controller, utterances):
    async def one(i: int):
        async with sdk(controller).realtime.connect(model="step-audio") as conn:
            caller = Caller(conn)
            await caller.setup(instructions=f"You are assistant number {i}.")
            await caller.say(np.concatenate([silence(200 + 50 * i), utterances["numbers"][i], silence(1200)]))
            await caller.until("response.done", timeout_s=150)
            return caller

    async def go():
        return await asyncio.gather(*(one(i) for i in range(8)))

    callers = run(go(), timeout_s=200)
    item_ids = []
    for i, caller in enumerate(callers):
        users = [e.item.id for e in caller.of("conversation.item.added") if e.item.role == "user"]
        assert len(users) == 1 and caller.of("input_audio_buffer.committed")[0].item_id == users[0]
        resp = caller.of("response.done")[0].response
        assert resp.status in ("completed", "incomplete") and len(caller.audio(resp.id)) > 0
        # every event this caller saw belongs to its own items and response
        own = {users[0], resp.output[0].id}
        assert all(getattr(e, "item_id", None) in (None, *own) for e in caller.events)
        assert all(getattr(e, "response_id", None) in (None, resp.id) for e in caller.events)
        expected_start = 200 + 50 * i
        assert abs(caller.of("input_audio_buffer.speech_started")[0].audio_start_ms - max(0, expected_start - 300)) <= 200
        item_ids += users
    assert len(set(item_ids)) == 8


def test_disconnect_mid_reply_leaves_nothing_running(controller, utterances):
    async def go():
        async with sdk(controller).realtime.connect(model="step-audio") as conn:
            caller = Caller(conn)
            await caller.setup()
            await caller.say(np.concatenate([utterances["joke"], silence(1000)]))
            await caller.until("response.created")
            await caller.say(utterances["weather"][: RATE_HZ // 2])  # and a tokenizer stream is open
            assert controller.server.sessions
        # the client is gone: the server must have let go of everything
        await wait_until(lambda: not controller.server.sessions, what="the session to be removed")
        await wait_until(lambda: controller.server.backend.open_streams() == 0, what="Triton streams to close")
        await wait_until(lambda: triton_metric(controller, "audio_tokenizer_open_streams") == 0,
                         what="the tokenizer's open streams to reach 0")

    run(go())
    assert metric(controller, "controller_sessions_active") == 0
    assert metric(controller, "controller_triton_streams_open") == 0
    assert chat_slot_is_free(controller)


def test_bad_input_over_the_wire_gets_errors_and_the_session_goes_on(controller, utterances):
    async def go():
        async with sdk(controller).realtime.connect(model="step-audio") as conn:
            caller = Caller(conn)
            await caller.until("session.created")
            await conn.input_audio_buffer.append(audio=pcm_b64(silence(100)))  # before session.update
            await caller.until("error", 1)
            ws = conn._connection  # raw frames the SDK would never send
            await ws.send("{not json")
            await ws.send('{"type": "input_audio_buffer.append", "audio": "' + "A" * (1 << 20) + '"}')
            await conn.send({"type": "no.such.event"})
            await caller.setup()
            await conn.send({"type": "session.update", "session": {"type": "realtime", "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 16000}}}}})
            await conn.input_audio_buffer.append(audio="not base64!")
            await conn.input_audio_buffer.append(audio=base64.b64encode(b"\x01\x02\x03").decode())
            await conn.conversation.item.truncate(item_id="item_missing", content_index=0, audio_end_ms=5)
            await caller.until("error", 8)
            await caller.say(np.concatenate([utterances["weather"], silence(1000)]))
            await caller.until("response.done")
            return caller

    caller = run(go())
    codes = [e.error.code for e in caller.of("error")]
    assert codes == ["session_not_configured", "invalid_json", "frame_too_large", "unknown_event_type",
                     "unsupported_audio_format", "invalid_base64", "invalid_audio", "item_not_found"]
    assert caller.of("response.done")[0].response.status in ("completed", "incomplete")
