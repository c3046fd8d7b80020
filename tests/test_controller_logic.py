"""Pure pieces of the controller: the turn state machine, clause segmentation, history, session config."""

from __future__ import annotations

import pytest

from controller.clauses import ClausePolicy, ClauseSegmenter
from controller.history import Conversation, Item, estimate_text_tokens, heard_text
from controller.session_config import ConfigError, SessionConfig
from controller.turns import (
    IdleTimeout,
    Paused,
    Resumed,
    SpeechStarted,
    TurnEnded,
    TurnMachine,
    TurnParams,
    TurnState,
)

W = 32  # ms per VAD window


def timeline(machine: TurnMachine, spec: str, start_ms: int = 0) -> list[tuple[int, object]]:
    """Feeds one window per character ('#' speech p=0.9, '~' p=0.4 in the hysteresis band, '.' silence)."""
    out, t = [], start_ms
    for ch in spec:
        t += W
        p = {"#": 0.9, "~": 0.4, ".": 0.05}[ch]
        out += [(t, a) for a in machine.window(p, t, W)]
    return out


def test_turn_with_a_short_pause_and_an_end():
    m = TurnMachine(TurnParams(pause_ms=192, silence_duration_ms=512, prefix_padding_ms=96, min_speech_ms=64))
    events = timeline(m, "...." + "#" * 10 + "......" + "##" + "#" * 8 + "." * 16 + "....")
    kinds = [type(a).__name__ for _, a in events]
    assert kinds == ["SpeechStarted", "Paused", "Resumed", "Paused", "TurnEnded"]
    t_start, started = events[0]
    assert isinstance(started, SpeechStarted)
    assert started.onset_ms == 4 * W and started.audio_start_ms == 4 * W - 96 and t_start == 6 * W  # 2 windows to confirm
    assert not started.barge_in
    t_pause, paused = events[1]
    assert paused.at_ms == 14 * W and t_pause == 20 * W  # 6 silent windows = 192 ms
    assert isinstance(events[2][1], Resumed) and events[2][1].at_ms == 20 * W
    t_end, ended = events[4]
    assert isinstance(ended, TurnEnded)
    assert ended.speech_end_ms == 30 * W and ended.audio_end_ms == 30 * W + 512 == t_end
    assert m.state is TurnState.SILENCE


def test_hysteresis_band_neither_starts_nor_ends_silence():
    m = TurnMachine(TurnParams(pause_ms=96, silence_duration_ms=192, min_speech_ms=32))
    events = timeline(m, "#" + "~" * 20)  # between threshold-0.15 and threshold: still speaking
    assert [type(a) for _, a in events] == [SpeechStarted]
    events = timeline(m, "......", start_ms=21 * W)
    assert [type(a) for _, a in events] == [Paused, TurnEnded]


def test_a_click_shorter_than_min_speech_is_ignored():
    m = TurnMachine(TurnParams(min_speech_ms=96))
    assert timeline(m, "##....##..") == []
    assert m.state is TurnState.SILENCE


def test_barge_in_only_with_interrupt_response():
    for interrupt in (True, False):
        m = TurnMachine(TurnParams(min_speech_ms=64, interrupt_response=interrupt))
        m.reply_started()
        assert m.state is TurnState.BOT_REPLYING
        (_, started), = timeline(m, "###")
        assert started.barge_in is interrupt
        assert m.state is TurnState.USER_SPEAKING


def test_idle_timeout_counts_from_the_end_of_the_reply_playback():
    m = TurnMachine(TurnParams(idle_timeout_ms=320))
    m.reply_started()
    timeline(m, "." * 5)
    m.reply_finished(playback_ms=160)  # at 160 ms; playing until 320 ms
    events = timeline(m, "." * 15, start_ms=160)
    (t, idle), = events
    assert isinstance(idle, IdleTimeout) and idle.audio_start_ms == 320 and t == 640


def test_force_end_for_a_manual_commit():
    m = TurnMachine(TurnParams(min_speech_ms=32))
    assert m.force_end() is None
    timeline(m, "####")
    ended = m.force_end()
    assert isinstance(ended, TurnEnded) and ended.audio_end_ms == 4 * W and m.state is TurnState.SILENCE


# -- clauses -----------------------------------------------------------------------------------------
def _segment(text: str, step: int, policy: ClausePolicy | None = None) -> list[str]:
    s = ClauseSegmenter(policy or ClausePolicy())
    out = []
    for i in range(0, len(text), step):
        out += s.feed(text[i:i + step])
    return out + s.finish()


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_clauses_cut_at_punctuation_and_lose_nothing(step):
    text = "你好，我是小明。今天天气很好，我们去公园散步吧！Okay? Sure... See you then."
    clauses = _segment(text, step)
    assert "".join(clauses) == text
    assert clauses[0] == "你好，我是小明。"  # the first clause waits for 4 characters, then cuts
    assert clauses[1] == "今天天气很好，我们去公园散步吧！"  # later ones need 12
    assert all(len(c) <= 120 for c in clauses)


def test_clauses_without_punctuation_cut_at_words_or_markup():
    words = " ".join(["word"] * 40)
    clauses = _segment(words, 7)
    assert "".join(clauses) == words and len(clauses[0]) <= 40
    assert all(c.endswith("word ") or c == clauses[-1] for c in clauses)
    markup = "<unused_12345>" * 20
    clauses = _segment(markup, 5)
    assert "".join(clauses) == markup
    assert all(c.startswith("<") and c.endswith(">") for c in clauses)


# -- history -----------------------------------------------------------------------------------------
def test_heard_text_keeps_played_clauses_and_a_share_of_the_cut_one():
    segments = [("Hello there. ", 1000), ("How are you?", 1000)]
    assert heard_text(segments, 2000) == "Hello there. How are you?"
    assert heard_text(segments, 1000) == "Hello there. "
    assert heard_text(segments, 1500) == "Hello there. How ar"
    assert heard_text([("<a_1><b_2><c_3>", 900)], 450) == "<a_1>"  # never half a piece
    assert heard_text(segments, 0) == ""


def test_conversation_order_truncate_and_transcripts():
    c = Conversation()
    u = Item(id="u1", role="user", kind="input_audio", audio_tokens=[65536, 65537])
    a = Item(id="a1", role="assistant", kind="output_audio", text="Hi. Bye.", audio_ms=2000,
             segments=[("Hi. ", 1000), ("Bye.", 1000)])
    assert c.add(u) is None and c.add(a) == "u1"
    assert c.add(Item(id="s0", role="system", kind="input_text", text="first"), "root") is None
    assert [i.id for i in c.items] == ["s0", "u1", "a1"]
    with pytest.raises(ValueError):
        c.truncate("a1", 2500)
    with pytest.raises(ValueError):
        c.truncate("u1", 10)
    c.truncate("a1", 1000)
    assert c.get("a1").text == "Hi. " and c.get("a1").status == "incomplete"
    u.transcript = "hello"
    assert c.messages("sys", 1000)[2]["content"] == {"type": "audio", "tokens": [65536, 65537]}
    c.apply_transcripts()
    assert c.messages("sys", 1000) == [{"role": "system", "content": "sys"}, {"role": "system", "content": "first"},
                                       {"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hi. "}]


def test_token_estimate():
    assert estimate_text_tokens("<audio_1><audio_2>") == 2
    assert estimate_text_tokens("你好吗") == 3
    assert estimate_text_tokens("abcdefg") == 3


# -- session config ----------------------------------------------------------------------------------
def test_session_update_ga_partial_and_null_turn_detection():
    cfg = SessionConfig(id="s", model="m")
    new = cfg.apply_update({"type": "realtime", "instructions": "x", "audio": {
        "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad", "silence_duration_ms": 800}},
        "output": {"voice": "Tingting"}}})
    assert (new.instructions, new.input_format, new.output_format, new.voice) == ("x", "audio/pcmu", "audio/pcm", "Tingting")
    assert new.turn_detection.silence_duration_ms == 800 and new.turn_detection.threshold == 0.5
    assert cfg.instructions == ""  # the old config is untouched
    manual = new.apply_update({"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    assert manual.turn_detection is None and manual.to_ga()["audio"]["input"]["turn_detection"] is None
    semantic = cfg.apply_update({"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}})
    assert semantic.turn_detection.end_silence_ms() == 400


def test_session_update_beta_shape():
    cfg = SessionConfig(id="s", model="m").apply_update(
        {"input_audio_format": "g711_alaw", "output_audio_format": "g711_ulaw", "voice": "v", "modalities": ["text"],
         "turn_detection": {"type": "server_vad", "threshold": 0.7}}, beta=True)
    beta = cfg.to_beta()
    assert (beta["input_audio_format"], beta["output_audio_format"], beta["modalities"]) == ("g711_alaw", "g711_ulaw", ["text"])
    assert beta["turn_detection"]["threshold"] == 0.7


@pytest.mark.parametrize("update,param,code", [
    ({"type": "transcription"}, "session.type", "invalid_value"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "session.audio.input.format",
     "unsupported_audio_format"),
    ({"audio": {"output": {"format": "mp3"}}}, "session.audio.output.format", "unsupported_audio_format"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
     "session.audio.input.turn_detection.threshold", "invalid_value"),
    ({"audio": {"input": {"turn_detection": {"type": "magic"}}}}, "session.audio.input.turn_detection.type",
     "invalid_value"),
    ({"max_output_tokens": 0}, "session.max_output_tokens", "invalid_value"),
    ({"output_modalities": ["video"]}, "session.output_modalities", "invalid_value"),
])
def test_session_update_rejects_bad_values(update, param, code):
    with pytest.raises(ConfigError) as e:
        SessionConfig(id="s", model="m").apply_update(update)
    assert e.value.param == param and e.value.code == code
