"""The per-session turn state machine: Silence, UserSpeaking, UserPaused, BotReplying.

Pure and clocked by the audio itself: every input is a VAD window (its speech probability and the
audio time at its end) or a reply starting/ending, every output an action for the session. Audio
time is the position in the session's input audio, so a scripted timeline replays exactly, however
fast or slow the audio arrives.

Hysteresis as Silero's own iterator has it: speech needs ``p >= threshold``; silence starts at the
first window with ``p < threshold - 0.15`` and is reset by a window back at ``p >= threshold``.
A silence of ``pause_ms`` makes a pause (the session may start a speculative reply); one of
``silence_duration_ms`` ends the turn. ``pause_ms`` is shorter than the end-of-turn silence, so a
speculative reply gets a head start of the difference.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TurnState(enum.Enum):
    SILENCE = "silence"
    USER_SPEAKING = "user_speaking"
    USER_PAUSED = "user_paused"
    BOT_REPLYING = "bot_replying"


@dataclass(frozen=True)
class TurnParams:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    pause_ms: int = 200
    min_speech_ms: int = 64  # of consecutive speech windows before speech counts as started
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - 0.15, 0.01)

    @property
    def effective_pause_ms(self) -> int:
        # a pause must come before the end of the turn to be worth anything
        return min(self.pause_ms, max(self.silence_duration_ms - 1, 0))


# -- actions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # speech onset minus prefix_padding_ms (not before 0)
    onset_ms: int
    barge_in: bool  # a reply was active and interrupt_response is set: cancel it


@dataclass(frozen=True)
class Paused:
    at_ms: int  # where the silence began


@dataclass(frozen=True)
class Resumed:
    at_ms: int


@dataclass(frozen=True)
class TurnEnded:
    audio_end_ms: int  # includes the trailing silence, as the protocol's speech_stopped does
    speech_end_ms: int  # where the silence began


@dataclass(frozen=True)
class IdleTimeout:
    audio_start_ms: int
    audio_end_ms: int


Action = SpeechStarted | Paused | Resumed | TurnEnded | IdleTimeout


class TurnMachine:
    def __init__(self, params: TurnParams):
        self.params = params
        self.state = TurnState.SILENCE
        self.reply_active = False
        self._speech_run_ms = 0  # consecutive speech while not yet speaking
        self._run_start_ms: int | None = None
        self._silence_start_ms: int | None = None
        self._idle_from_ms: int | None = None  # the idle timeout counts from here
        self.now_ms = 0

    # -- inputs ------------------------------------------------------------------------------------
    def window(self, prob: float, end_ms: int, window_ms: int) -> list[Action]:
        """One VAD window ending at ``end_ms`` of audio time."""
        self.now_ms = end_ms
        p = self.params
        start_ms = end_ms - window_ms
        out: list[Action] = []
        if self.state in (TurnState.SILENCE, TurnState.BOT_REPLYING):
            if prob >= p.threshold:
                if self._run_start_ms is None:
                    self._run_start_ms = start_ms
                self._speech_run_ms += window_ms
                if self._speech_run_ms >= p.min_speech_ms:
                    onset = self._run_start_ms
                    barge_in = self.reply_active and p.interrupt_response
                    out.append(SpeechStarted(max(0, onset - p.prefix_padding_ms), onset, barge_in))
                    self.state = TurnState.USER_SPEAKING
                    self._silence_start_ms = None
                    self._idle_from_ms = None
            else:
                self._speech_run_ms, self._run_start_ms = 0, None
                out.extend(self._check_idle(end_ms))
            return out
        # USER_SPEAKING or USER_PAUSED
        if prob >= p.threshold:
            self._silence_start_ms = None
            if self.state is TurnState.USER_PAUSED:
                self.state = TurnState.USER_SPEAKING
                out.append(Resumed(start_ms))
            return out
        if prob < p.neg_threshold and self._silence_start_ms is None:
            self._silence_start_ms = start_ms
        if self._silence_start_ms is None:
            return out
        silence_ms = end_ms - self._silence_start_ms
        if self.state is TurnState.USER_SPEAKING and silence_ms >= p.effective_pause_ms:
            self.state = TurnState.USER_PAUSED
            out.append(Paused(self._silence_start_ms))
        if self.state is TurnState.USER_PAUSED and silence_ms >= p.silence_duration_ms:
            out.append(TurnEnded(end_ms, self._silence_start_ms))
            self._end_user_turn(end_ms)
        return out

    def force_end(self) -> TurnEnded | None:
        """The client committed by hand (or the buffer was cleared) while the user was speaking."""
        if self.state not in (TurnState.USER_SPEAKING, TurnState.USER_PAUSED):
            return None
        speech_end = self._silence_start_ms if self._silence_start_ms is not None else self.now_ms
        self._end_user_turn(self.now_ms)
        return TurnEnded(self.now_ms, speech_end)

    def reply_started(self) -> None:
        self.reply_active = True
        if self.state is TurnState.SILENCE:
            self.state = TurnState.BOT_REPLYING

    def reply_finished(self, playback_ms: int = 0) -> None:
        """A reply ended (completed or cancelled); the idle timeout counts from the end of its audio."""
        self.reply_active = False
        if self.state is TurnState.BOT_REPLYING:
            self.state = TurnState.SILENCE
        self._idle_from_ms = self.now_ms + playback_ms

    # -- internals ---------------------------------------------------------------------------------
    def _end_user_turn(self, _end_ms: int) -> None:
        self._silence_start_ms = None
        self._speech_run_ms, self._run_start_ms = 0, None
        self.state = TurnState.BOT_REPLYING if self.reply_active else TurnState.SILENCE

    def _check_idle(self, end_ms: int) -> list[Action]:
        timeout = self.params.idle_timeout_ms
        if timeout is None or self.reply_active or self._idle_from_ms is None:
            return []
        if end_ms - self._idle_from_ms >= timeout:
            start = self._idle_from_ms
            self._idle_from_ms = None  # once per silence
            return [IdleTimeout(start, end_ms)]
        return []
