"""Session logic on scripted timelines: the fake VAD hears the audio, the fake backend answers at once,
and the session's audio clock is the only clock (no sleeping, no wall time in any assertion)."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from controller import g711
from controller.backend import ChatParams, TtsChunk, TtsParams
from controller.reply import AudioOut, ClauseEnd, Reply, ReplyEnd, ReplyRequest, TextOut
from controller.turns import TurnState
from tests.controller_fakes import Call, FakeBackend, Harness, pcm16_b64, silence, speech


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def decoded_audio(h: Harness, fmt: str = "audio/pcm") -> np.ndarray:
    data = b"".join(base64.b64decode(e["delta"]) for e in h.of("response.output_audio.delta"))
    if fmt == "audio/pcm":
        return np.frombuffer(data, "<i2")
    return (g711.ulaw_decode if fmt == "audio/pcmu" else g711.alaw_decode)(np.frombuffer(data, np.uint8))


def test_one_turn_follows_the_protocol_sequence():
    async def go():
        async with Harness() as h:
            await h.audio(silence(500) + 0)
            await h.audio(speech(1000))
            await h.audio(silence(800))
            done = await h.wait_for("response.done")
            return h, done

    h, done = run(go())
    t = h.types()
    expected = ["session.created", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
                "response.created", "rate_limits.updated", "response.output_item.added", "conversation.item.added",
                "response.content_part.added"]
    assert [x for x in t if x in set(expected)][: len(expected)] == expected
    tail = [x for x in t if not x.endswith(".delta") and x != "conversation.item.input_audio_transcription.completed"]
    assert tail[-6:] == ["response.output_audio.done", "response.output_audio_transcript.done",
                         "response.content_part.done", "response.output_item.done", "conversation.item.done",
                         "response.done"]
    started, stopped = h.of("input_audio_buffer.speech_started")[0], h.of("input_audio_buffer.speech_stopped")[0]
    # speech from 500 ms: onset on the 32 ms grid, minus the 300 ms prefix padding
    assert 180 <= started["audio_start_ms"] <= 220
    # speech ends at 1500 ms; the turn ends 500 ms of silence later
    assert 1980 <= stopped["audio_end_ms"] <= 2060
    assert started["item_id"] == stopped["item_id"] == h.of("input_audio_buffer.committed")[0]["item_id"]
    assert all("event_id" in e for e in h.events)
    assert done["response"]["status"] == "completed"
    assert done["response"]["usage"]["output_tokens"] == 4
    transcript = "".join(e["delta"] for e in h.of("response.output_audio_transcript.delta"))
    assert transcript == "Hello there. How are you today?"
    assert h.of("response.output_audio_transcript.done")[0]["transcript"] == transcript
    # 2 clauses x 2 chunks x 0.1 s at 22.05 kHz -> 0.4 s at 24 kHz of PCM16 at 0.1 * 32767
    pcm = decoded_audio(h)
    assert abs(len(pcm) - 9600) <= 4 and np.median(pcm) == pytest.approx(3277, abs=2)
    # the user's turn reached the chat model as audio tokens; the ASR transcript arrived too
    chat = h.backend.chats()[0].payload["messages"]
    assert chat[0]["role"] == "system" and chat[-1]["content"]["type"] == "audio"
    assert h.of("conversation.item.input_audio_transcription.completed")[0]["transcript"].startswith("transcript of")


def test_short_pause_discards_the_speculation_and_keeps_one_user_item():
    async def go():
        async with Harness(FakeBackend(chat_gate=asyncio.Event())) as h:
            await h.audio(speech(800))
            await h.audio(silence(300))  # longer than pause_ms (200), shorter than the 500 ms end of turn
            assert h.spec("started") == 1 and not h.of("input_audio_buffer.speech_stopped")  # nothing on the wire
            await h.audio(speech(800))  # the speculative chat is still generating when the user resumes
            h.backend.chat_gate.set()
            await h.audio(silence(800))
            await h.wait_for("response.done")
            return h

    h = run(go())
    assert len(h.of("input_audio_buffer.speech_started")) == 1
    assert len(h.of("input_audio_buffer.committed")) == 1
    assert h.spec("started") == 2 and h.spec("discarded") == 1 and h.spec("committed") == 1
    first, second = h.backend.chats()
    assert first.cancelled and not first.finished  # the discarded one was stopped in the server
    assert second.finished
    # the committed reply heard both runs: 1.9 s of audio (with the paddings) -> more tokens
    assert len(second.payload["messages"][-1]["content"]["tokens"]) > len(first.payload["messages"][-1]["content"]["tokens"])


def test_long_pause_commits_the_speculation():
    async def go():
        async with Harness() as h:
            await h.audio(speech(800))
            await h.audio(silence(300))
            assert h.spec("started") == 1
            await h.audio(silence(500))
            await h.wait_for("response.done")
            return h

    h = run(go())
    assert (h.spec("started"), h.spec("committed"), h.spec("discarded")) == (1, 1, 0)
    assert len(h.backend.chats()) == 1  # the speculative request became the reply
    assert h.of("response.done")[0]["response"]["status"] == "completed"


def test_speculation_is_restarted_when_the_request_changed():
    async def go():
        async with Harness() as h:
            await h.audio(speech(800))
            await h.audio(silence(300))
            await h.send({"type": "conversation.item.create",
                          "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
            await h.audio(silence(500))
            await h.wait_for("response.done")
            return h

    h = run(go())
    assert (h.spec("started"), h.spec("committed"), h.spec("discarded")) == (1, 0, 1)
    spec_call, real_call = h.backend.chats()
    assert "hi" not in [m["content"] for m in spec_call.payload["messages"]]
    assert "hi" in [m["content"] for m in real_call.payload["messages"]] and real_call.finished


def test_speculation_off_makes_one_request_at_the_end():
    async def go():
        async with Harness(speculation=False) as h:
            await h.audio(speech(800))
            await h.audio(silence(800))
            await h.wait_for("response.done")
            return h

    h = run(go())
    assert h.spec("started") == 0 and len(h.backend.chats()) == 1


def test_barge_in_cancels_the_reply_and_truncate_cuts_its_text():
    async def go():
        backend = FakeBackend(tts_gate=asyncio.Event(), tts_free_calls=1)  # the second clause's TTS hangs
        async with Harness(backend) as h:
            await h.audio(speech(800))
            await h.audio(silence(600))
            await h.wait_for("response.output_audio_transcript.delta", 2)
            assert h.session.machine.state is TurnState.BOT_REPLYING
            await h.audio(speech(300))  # the user talks over the reply
            done = await h.wait_for("response.done")
            item_id = done["response"]["output"][0]["id"]
            audio_ms = sum(len(base64.b64decode(e["delta"])) for e in h.of("response.output_audio.delta")) // 48
            await h.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                          "audio_end_ms": audio_ms // 2})
            await h.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                          "audio_end_ms": audio_ms + 500})
            return h, done, item_id, audio_ms

    h, done, item_id, audio_ms = run(go())
    resp = done["response"]
    assert resp["status"] == "cancelled"
    assert resp["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert resp["output"][0]["status"] == "incomplete"
    assert [c for c in h.backend.calls if c.kind == "tts" and c.cancelled]  # stopped in the server
    assert len(h.of("input_audio_buffer.speech_started")) == 2
    assert h.of("conversation.item.truncated")[0]["audio_end_ms"] == audio_ms // 2
    # the first clause ("Hello there.") played halfway: about half of it is kept
    assert h.session.conv.get(item_id).text == "Hello "[:len("Hello ")]
    err = h.of("error")[0]["error"]
    assert err["code"] == "invalid_audio_end_ms" and err["param"] == "audio_end_ms"


def test_manual_mode_commit_and_response_create():
    async def go():
        async with Harness() as h:
            await h.send({"type": "session.update", "session": {"type": "realtime",
                                                                "audio": {"input": {"turn_detection": None}}}})
            await h.audio(speech(50))
            await h.send({"type": "input_audio_buffer.commit"})
            assert h.of("error")[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
            await h.audio(speech(500))
            await h.send({"type": "input_audio_buffer.commit"})
            assert h.of("input_audio_buffer.committed") and not h.of("response.created")
            await h.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
            await h.wait_for("response.done")
            return h

    h = run(go())
    assert h.of("session.updated")[0]["session"]["audio"]["input"]["turn_detection"] is None
    assert not h.of("input_audio_buffer.speech_started")
    assert "".join(e["delta"] for e in h.of("response.output_text.delta")) == "Hello there. How are you today?"
    assert not [c for c in h.backend.calls if c.kind == "tts"]
    # the committed buffer held the first 50 ms too: 550 ms -> 5 tokens
    assert len(h.backend.chats()[0].payload["messages"][-1]["content"]["tokens"]) == 5


def test_bad_input_gets_error_events_and_the_session_goes_on():
    async def go():
        async with Harness(require_session_update=True, max_frame_bytes=4096) as h:
            await h.send({"type": "input_audio_buffer.append", "audio": pcm16_b64(speech(10))})
            await h.send("{not json")
            await h.send({"type": "no.such.event", "event_id": "evt_1"})
            await h.send({"type": "session.update", "session": {"type": "realtime",
                                                                "audio": {"input": {"format": {"type": "audio/flac"}}}}})
            await h.send({"type": "session.update", "session": {"type": "realtime"}})
            await h.send({"type": "input_audio_buffer.append", "audio": "***not base64***"})
            await h.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00\x01\x02").decode()})
            await h.send({"type": "conversation.item.truncate", "item_id": "item_nope", "audio_end_ms": 10})
            from controller.session import OversizedFrame
            h.session.queue.put_nowait(OversizedFrame(10_000))
            await h.settle()
            await h.send({"type": "response.cancel"})
            codes = [e["error"]["code"] for e in h.of("error")]
            await h.audio(speech(800))
            await h.audio(silence(800))
            await h.wait_for("response.done")
            return h, codes

    h, codes = run(go())
    assert codes == ["session_not_configured", "invalid_json", "unknown_event_type", "unsupported_audio_format",
                     "invalid_base64", "invalid_audio", "item_not_found", "frame_too_large",
                     "response_cancel_not_active"]
    assert h.of("error")[2]["error"]["event_id"] == "evt_1"
    assert h.of("response.done")[0]["response"]["status"] == "completed"


def test_g711_in_and_out():
    async def go():
        async with Harness() as h:
            await h.send({"type": "session.update", "session": {"type": "realtime", "audio": {
                "input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcma"}}}}})
            x = np.concatenate([speech(800, 8000), silence(800, 8000)])
            codes = g711.ulaw_encode((x * 32767).astype(np.int16))
            for i in range(0, len(codes), 800):
                await h.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(codes[i:i + 800].tobytes()).decode()})
            await h.wait_for("response.done")
            return h

    h = run(go())
    pcm = decoded_audio(h, "audio/pcma")
    assert abs(len(pcm) - 3200) <= 4  # 0.4 s at 8 kHz
    assert np.median(pcm) == pytest.approx(3277, rel=0.05)


def test_second_turn_history_uses_the_transcript_and_instructions():
    async def go():
        async with Harness() as h:
            await h.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}})
            for _ in range(2):
                await h.audio(speech(800))
                await h.audio(silence(800))
            await h.wait_for("response.done", 2)
            return h

    h = run(go())
    msgs = h.backend.chats()[-1].payload["messages"]
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[1]["role"] == "user" and msgs[1]["content"].startswith("transcript of")
    assert msgs[2] == {"role": "assistant", "content": "Hello there. How are you today?"}
    assert msgs[3]["content"]["type"] == "audio"


def test_context_budget_drops_the_oldest_turns():
    async def go():
        async with Harness(max_context_tokens=300, max_reply_tokens=100) as h:
            for i in range(6):
                await h.send({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"{i} " + "x" * 150}]}})
            await h.send({"type": "response.create"})
            await h.wait_for("response.done")
            return h

    h = run(go())
    msgs = h.backend.chats()[0].payload["messages"]
    # 200 tokens of budget: the system prompt and the newest three 54-token messages
    assert msgs[0]["role"] == "system"
    assert [m["content"][0] for m in msgs[1:]] == ["3", "4", "5"]


def test_close_mid_reply_cancels_everything():
    async def go():
        backend = FakeBackend(tts_gate=asyncio.Event())
        h = Harness(backend)
        await h.__aenter__()
        await h.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "interrupt_response": False}}}}})
        await h.audio(speech(800))
        await h.audio(silence(300))  # a speculation runs
        await h.audio(silence(300))  # committed; its TTS waits at the gate
        await h.audio(speech(200))  # the user talks on (no barge-in): a tokenizer run is open
        assert h.session.response is not None and h.session.turn is not None
        assert backend.open >= 2
        await h.close()
        return h

    h = run(go())
    assert h.backend.open == 0
    assert all(c.finished or c.cancelled for c in h.backend.calls)
    assert [c for c in h.backend.calls if c.kind == "tts" and c.cancelled]
    assert h.session.response is None and h.session.spec is None and not h.session.tasks


def test_beta_event_names():
    async def go():
        async with Harness(beta=True) as h:
            await h.audio(speech(800))
            await h.audio(silence(800))
            await h.wait_for("response.done")
            return h

    h = run(go())
    t = set(h.types())
    assert {"response.audio.delta", "response.audio_transcript.delta", "conversation.item.created"} <= t
    assert not t & {"response.output_audio.delta", "conversation.item.added", "conversation.item.done"}
    assert h.of("session.created")[0]["session"]["input_audio_format"] == "pcm16"


def test_backend_failure_fails_the_response_only():
    async def go():
        async with Harness(FakeBackend(chat_error="chat_llm: prompt too long")) as h:
            await h.audio(speech(800))
            await h.audio(silence(800))
            done = await h.wait_for("response.done")
            h.backend.chat_error = None
            await h.audio(speech(800))
            await h.audio(silence(800))
            again = await h.wait_for("response.done", 2)
            return done, again

    done, again = run(go())
    assert done["response"]["status"] == "failed"
    assert "prompt too long" in done["response"]["status_details"]["error"]["message"]
    assert again["response"]["status"] == "completed"


def test_idle_timeout_prompts_a_response_after_the_reply_played():
    async def go():
        async with Harness() as h:
            await h.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
                "turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}}}})
            await h.audio(speech(800))
            await h.audio(silence(800))
            await h.wait_for("response.done")
            await h.audio(silence(4000))
            assert not h.of("input_audio_buffer.timeout_triggered")
            await h.audio(silence(2000))  # 5 s after the reply's 0.4 s of audio finished playing
            await h.wait_for("response.done", 2)
            return h

    h = run(go())
    (idle,) = h.of("input_audio_buffer.timeout_triggered")
    assert idle["audio_end_ms"] - idle["audio_start_ms"] >= 5000
    assert len(h.of("input_audio_buffer.committed")) == 1  # no new user item


@pytest.mark.parametrize("eagerness,silence_ms,responds", [("high", 500, True), ("low", 800, False)])
def test_semantic_vad_eagerness_sets_the_end_of_turn_silence(eagerness, silence_ms, responds):
    async def go():
        async with Harness() as h:
            await h.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
                "turn_detection": {"type": "semantic_vad", "eagerness": eagerness}}}}})
            await h.audio(speech(800))
            await h.audio(silence(silence_ms))
            return h

    h = run(go())
    assert bool(h.of("input_audio_buffer.committed")) is responds


class _CancelDroppingBackend(FakeBackend):
    """Its TTS stream drops the first cancellation, as Python 3.11's asyncio.wait_for does when the awaited
    response arrives together with it (client.aio waits for each response that way)."""

    def __init__(self) -> None:
        super().__init__()
        self.tts_started = asyncio.Event()

    def tts(self, text, params, request_id):
        async def stream():
            self.tts_started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass
            yield TtsChunk(np.zeros(100, np.float32), 22050, "")
            await asyncio.sleep(30)

        self.calls.append(Call("tts", {"text": text}, request_id))
        return stream()


def test_a_dropped_cancellation_does_not_leave_a_speculation_waiting_forever():
    async def go():
        backend = _CancelDroppingBackend()
        request = ReplyRequest(messages=[{"role": "user", "content": "hi"}], chat=ChatParams(), tts=TtsParams(),
                               audio=True)
        reply = Reply(backend, request, speculative=True).start()  # never committed
        await backend.tts_started.wait()
        canceller = asyncio.create_task(reply.cancel())
        done, _ = await asyncio.wait([canceller], timeout=3)  # (not wait_for: cancelling it would end the reply)
        assert canceller in done and reply.finished

    run(go())


def test_a_silent_reply_says_why_in_the_log(caplog):
    """A reply with no audio completes, and the log says why: the clause's TTS gave no samples (the random tiny
    TTS LM can), or the chat text had nothing to speak (whitespace only: no TTS ran)."""
    async def one_turn(backend):
        async with Harness(backend) as h:
            await h.audio(speech(1000))
            await h.audio(silence(800))
            done = await h.wait_for("response.done")
            return h, done

    with caplog.at_level("WARNING", logger="controller"):
        h, done = run(one_turn(FakeBackend(reply_text=("Hello", " there."), tts_chunks=0)))
    assert done["response"]["status"] == "completed" and not h.of("response.output_audio.delta")
    assert h.of("response.output_audio_transcript.done")[0]["transcript"] == "Hello there."  # text, no audio
    assert "the TTS of clause 0 ('Hello there.') returned no audio (finish_reason 'stop')" in caplog.text
    assert "completed without audio: 1 clause(s) spoken, 1 of them silent" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="controller"):
        h, done = run(one_turn(FakeBackend(reply_text=(" ", "\n"))))
    assert done["response"]["status"] == "completed" and not h.of("response.output_audio.delta")
    assert not [c for c in h.backend.calls if c.kind == "tts"]
    assert "no speakable text (chat text ' \\n')" in caplog.text
    assert "completed without audio: 0 clause(s) spoken" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="controller"):
        _h, done = run(one_turn(FakeBackend()))
    assert done["response"]["status"] == "completed" and "without audio" not in caplog.text


@pytest.mark.parametrize("min_ahead_s,expect_later", [(0.5, 50), (60.0, None)])
def test_later_clauses_ask_for_a_larger_first_chunk_when_audio_is_queued(min_ahead_s, expect_later):
    """The first clause always streams with the model's first chunk; a later one asks for the policy's larger
    first chunk (fewer token2wav runs) only while enough of the reply's audio is still queued ahead."""
    from controller.clauses import ClausePolicy

    async def go():
        backend = FakeBackend(reply_text=("Hello there.", " How are you today?", " Fine, thanks."),
                              tts_chunks=2, tts_chunk_s=0.5)  # 1 s of audio per clause, delivered at once
        request = ReplyRequest(messages=[{"role": "user", "content": "hi"}], chat=ChatParams(), tts=TtsParams(),
                               audio=True)
        policy = ClausePolicy(min_chars=4, later_min_ahead_s=min_ahead_s, tts_ahead=False)
        reply = Reply(backend, request, clause_policy=policy).start()
        while not isinstance(await asyncio.wait_for(reply.outputs.get(), 10), ReplyEnd):
            pass
        return [c.payload["params"].first_chunk_tokens for c in backend.calls if c.kind == "tts"]

    firsts = run(go())
    assert len(firsts) >= 3 and firsts == [None] + [expect_later] * (len(firsts) - 1)


def test_clause_policy_first_chunk_rule():
    from controller.clauses import ClausePolicy

    p = ClausePolicy(later_first_chunk_tokens=60, later_min_ahead_s=0.5)
    assert p.tts_first_chunk(0, 5.0) is None  # the first clause: the first audio waits for it
    assert p.tts_first_chunk(1, 0.6) == 60 and p.tts_first_chunk(3, 0.49) is None
    assert ClausePolicy(later_first_chunk_tokens=None).tts_first_chunk(2, 5.0) is None
    # the previous clause took 0.5 s per second of audio: 50 tokens (1.2 s of audio) need ~0.6 s, plus 0.5 s
    p = ClausePolicy(later_first_chunk_tokens=50, later_min_ahead_s=0.5)
    assert p.tts_first_chunk(1, 1.2, pace_s_per_audio_s=0.5) == 50
    assert p.tts_first_chunk(1, 1.0, pace_s_per_audio_s=0.5) is None
    assert p.tts_first_chunk(1, 1.0, pace_s_per_audio_s=None) == 50  # pace unknown: the queued audio alone
    assert p.tts_first_chunk(1, 0.0, pace_s_per_audio_s=1.3) == 50  # slower than real time: fewer flow runs
    assert p.tts_first_chunk(1, 0.0, pace_s_per_audio_s=0.9) is None


def test_a_slow_server_keeps_the_small_first_chunk_for_later_clauses():
    """Clauses arriving at ~0.75 s per second of audio: waiting for 50 tokens would empty the queue. Slower
    than real time (~1.35 s per second), gaps come either way: the larger chunk saves a flow run."""
    from controller.clauses import ClausePolicy

    class SlowTts(FakeBackend):
        delay_s = 0.25  # per chunk, the final (empty) one included: 3 per clause of 1 s of audio

        def tts(self, text, params, request_id):
            inner = super().tts(text, params, request_id)

            async def paced():
                async for chunk in inner:
                    await asyncio.sleep(self.delay_s)
                    yield chunk
            return paced()

    async def go(backend):
        request = ReplyRequest(messages=[{"role": "user", "content": "hi"}], chat=ChatParams(), tts=TtsParams(),
                               audio=True)
        reply = Reply(backend, request, clause_policy=ClausePolicy(min_chars=4, tts_ahead=False)).start()
        while not isinstance(await asyncio.wait_for(reply.outputs.get(), 10), ReplyEnd):
            pass
        return [c.payload["params"].first_chunk_tokens for c in backend.calls if c.kind == "tts"]

    text = ("Hello there.", " How are you today?")
    assert run(go(SlowTts(reply_text=text, tts_chunks=2, tts_chunk_s=0.5))) == [None, None]
    slower = SlowTts(reply_text=text, tts_chunks=2, tts_chunk_s=0.5)
    slower.delay_s = 0.45
    assert run(go(slower)) == [None, 50]
    assert run(go(FakeBackend(reply_text=text, tts_chunks=2, tts_chunk_s=0.5))) == [None, 50]


class _PacedTts(FakeBackend):
    """Each TTS chunk (the final empty one included) comes ``delay_s`` after the previous; records when
    each clause's stream started and ended, and can fail the stream of one clause after its first chunk."""

    def __init__(self, delay_s=0.05, fail_clause=None, **kw):
        super().__init__(**kw)
        self.delay_s, self.fail_clause = delay_s, fail_clause
        self.spans = []  # [text, t_start, t_end]
        self.second_started: asyncio.Event | None = None  # set when the second clause's TTS starts

    def tts(self, text, params, request_id):
        from controller.backend import BackendError

        inner = super().tts(text, params, request_id)
        clause = len(self.spans)
        span = [text, asyncio.get_running_loop().time(), None]
        self.spans.append(span)
        if len(self.spans) == 2 and self.second_started is not None:
            self.second_started.set()

        async def paced():
            try:
                async for i, chunk in _aenumerate(inner):
                    await asyncio.sleep(self.delay_s)
                    if clause == self.fail_clause and i == 1:
                        raise BackendError("tts broke")
                    yield chunk
            finally:
                span[2] = asyncio.get_running_loop().time()
        return paced()


async def _aenumerate(it):
    i = 0
    async for x in it:
        yield i, x
        i += 1


def _reply_outputs(backend, **policy):
    from controller.clauses import ClausePolicy

    async def go():
        request = ReplyRequest(messages=[{"role": "user", "content": "hi"}], chat=ChatParams(), tts=TtsParams(),
                               audio=True)
        reply = Reply(backend, request, clause_policy=ClausePolicy(min_chars=4, **policy)).start()
        out = []
        while not isinstance(o := await asyncio.wait_for(reply.outputs.get(), 10), ReplyEnd):
            out.append(o)
        return out, o
    return run(go())


def _kinds(outputs):
    return [type(o).__name__ + (f":{o.text}" if hasattr(o, "text") else "") for o in outputs]


def test_next_clause_tts_starts_at_the_previous_clause_first_audio_and_plays_in_order():
    text = ("Hello there.", " How are you today?", " Fine, thanks.")
    ahead = _PacedTts(reply_text=text, tts_chunks=3, tts_chunk_s=0.2)
    out, end = _reply_outputs(ahead, tts_ahead=True)
    serial = _PacedTts(reply_text=text, tts_chunks=3, tts_chunk_s=0.2)
    out_serial, end_serial = _reply_outputs(serial)  # the default: one clause at a time
    assert end.finish_reason == end_serial.finish_reason == "stop"
    assert _kinds(out) == _kinds(out_serial)  # the same outputs in the same order
    groups = [out[i:i + 5] for i in range(0, len(out), 5)]  # per clause: text, three chunks, end
    assert len(out) % 5 == 0 and len(groups) == len(ahead.spans) >= 3
    for g in groups:
        assert isinstance(g[0], TextOut) and all(isinstance(a, AudioOut) for a in g[1:4])
        assert isinstance(g[4], ClauseEnd) and g[4].text == g[0].text
    assert "".join(g[0].text for g in groups).replace(" ", "") == "".join(text).replace(" ", "")
    # ahead: each next clause started before the previous one ended; serial: after
    assert all(b[1] < a[2] for a, b in zip(ahead.spans, ahead.spans[1:], strict=False))
    assert all(b[1] >= a[2] for a, b in zip(serial.spans, serial.spans[1:], strict=False))


def test_a_failing_later_clause_ends_the_reply_after_the_audio_before_it():
    backend = _PacedTts(reply_text=("Hello there.", " How are you today?"), tts_chunks=3, tts_chunk_s=0.2,
                        fail_clause=1)
    out, end = _reply_outputs(backend, tts_ahead=True)
    assert end.finish_reason == "error" and "tts broke" in end.error
    kinds = _kinds(out)
    assert kinds.count("AudioOut") == 4  # clause 0's three chunks, then clause 1's first
    assert kinds.index("ClauseEnd:Hello there.") < kinds.index("TextOut: How are you today?")
    assert backend.open == 0  # no stream left running


def test_cancelling_a_reply_stops_every_clause_stream():
    backend = _PacedTts(delay_s=0.2, reply_text=("Hello there.", " How are you today?", " Fine."), tts_chunks=5)

    async def go():
        from controller.clauses import ClausePolicy

        request = ReplyRequest(messages=[{"role": "user", "content": "hi"}], chat=ChatParams(), tts=TtsParams(),
                               audio=True)
        backend.second_started = asyncio.Event()
        reply = Reply(backend, request, clause_policy=ClausePolicy(min_chars=4, tts_ahead=True)).start()
        await asyncio.wait_for(backend.second_started.wait(), 10)  # while the first clause still streams
        assert backend.spans[0][2] is None
        await reply.cancel()
        return [c for c in backend.calls if c.kind == "tts"]

    calls = run(go())
    assert len(calls) == 2 and all(c.cancelled for c in calls) and backend.open == 0
