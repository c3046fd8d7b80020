"""One Realtime session: client events in, server events out, driven by one event queue.

Everything that changes the session's state runs in ``run()``'s loop, one queue item at a time:
client frames, the ends of tokenizer runs, ASR results, closed responses. Background tasks (tokenizer
flushes, ASR, replies and their forwarders) only report back through the queue, so the state has one
owner, and ``close()`` can cancel every task and Triton request the session started.

Speculation: when the user pauses, the tokens said so far are flushed and a reply to them starts
(``Reply(speculative=True)``), invisible to the client. Resuming discards it (cancelled in Triton).
At the end of the turn it is committed if its request equals the one the committed turn makes (same
history, instructions, tokens and parameters); otherwise it is discarded and a fresh reply starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller import events as E
from controller.audio_io import AudioFormatError, InputAudio
from controller.backend import Backend, BackendError, ChatParams, TtsParams
from controller.config import ControllerConfig
from controller.history import AUDIO_TOKEN_OFFSET, Conversation, Item, ItemNotFound
from controller.metrics import Metrics
from controller.reply import Reply, ReplyRequest
from controller.response import ActiveResponse
from controller.session_config import ConfigError, SessionConfig, parse_max_tokens, parse_modalities
from controller.turns import IdleTimeout, Paused, Resumed, SpeechStarted, TurnEnded, TurnMachine, TurnParams
from controller.user_turn import AudioLog, Run, UserTurn, ms, samples
from controller.vad import WINDOW_MS, WINDOW_SAMPLES, VadModel

log = logging.getLogger("controller.session")

MIN_COMMIT_MS = 100  # the protocol's minimum for a manual commit
LOG_KEEP_MS = 2000  # input kept beyond the prefix padding while nobody speaks
THREAD_SAMPLES = 32 * WINDOW_SAMPLES  # appends longer than this (~1 s) are resampled and classified in a worker thread


# -- queue items -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientFrame:
    text: str


@dataclass(frozen=True)
class OversizedFrame:
    size: int


@dataclass(frozen=True)
class RunDone:
    turn: UserTurn
    run: Run


@dataclass(frozen=True)
class AsrDone:
    item_id: str
    transcript: str | None
    error: str | None
    seconds: float


@dataclass(frozen=True)
class ResponseClosed:
    response: ActiveResponse


@dataclass
class Speculation:
    reply: Reply
    turn_n: int
    revision: int


Send = Callable[[dict[str, Any]], Awaitable[None]]


class Session:
    def __init__(self, ctl: ControllerConfig, backend: Backend, vad: VadModel, metrics: Metrics, send: Send,
                 model: str = "step-audio", beta: bool = False):
        self.ctl, self.backend, self.vad_model, self.metrics = ctl, backend, vad, metrics
        self._send_raw, self.beta = send, beta
        self.id = E.new_id("sess")
        self.conversation_id = E.new_id("conv")
        self.cfg = SessionConfig(id=self.id, model=model, instructions=ctl.default_instructions)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.conv = Conversation()
        self.machine = TurnMachine(self._turn_params())
        self.vad = vad.new_stream()
        self.input = InputAudio(self.cfg.input_format)
        self.log = AudioLog()
        self.vad_samples = 0  # 16 kHz samples the VAD has classified: the session's audio clock
        self.audio_in_s = 0.0
        self.turn: UserTurn | None = None  # being spoken (or the manual buffer)
        self.pending: list[UserTurn] = []  # ended, their tokens not all in yet
        self.spec: Speculation | None = None
        self.response: ActiveResponse | None = None
        self.deferred_response: dict | None = None  # a response.create waiting for tokens
        self.tasks: set[asyncio.Task] = set()
        self._turn_n = 0
        self._send_lock = asyncio.Lock()
        self.closed = False
        self.busy = False  # handling a queue item (tests wait for the session to be idle)
        self.turn_busy_s = 0.0  # controller time spent on the current turn (decode, VAD, encode, send)
        self.created_s = time.time()

    # -- plumbing ----------------------------------------------------------------------------------
    async def send(self, ev: dict[str, Any]) -> None:
        if self.beta:
            ev = E.to_beta(ev)
            if ev is None:
                return
        if ev["type"] == "error":
            self.metrics.errors.labels(ev["error"]["code"]).inc()
        async with self._send_lock:
            if self.closed:
                return
            try:
                await self._send_raw(ev)
            except (ConnectionError, RuntimeError) as exc:  # the client went away: close() follows
                log.debug("session %s: send failed: %s", self.id, exc)

    async def error(self, code: str, message: str, param: str | None = None, event_id: str | None = None) -> None:
        await self.send(E.error(code, message, param, event_id))

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.id}-{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _turn_params(self) -> TurnParams:
        td = self.cfg.turn_detection
        if td is None:
            return TurnParams()
        end_ms = td.end_silence_ms()
        return TurnParams(threshold=td.threshold, prefix_padding_ms=td.prefix_padding_ms,
                          silence_duration_ms=end_ms, pause_ms=min(self.ctl.pause_ms, end_ms),
                          min_speech_ms=self.ctl.min_speech_ms, interrupt_response=td.interrupt_response,
                          idle_timeout_ms=td.idle_timeout_ms)

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.send(E.event("session.created", session=self._session_obj()))
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    return
                t0 = time.perf_counter()
                self.busy = True
                try:
                    await self._handle(item)
                finally:
                    self.busy = False
                self.turn_busy_s += time.perf_counter() - t0
        finally:
            await self.close()

    async def _handle(self, item: Any) -> None:
        if isinstance(item, ClientFrame):
            await self._client_frame(item.text)
        elif isinstance(item, OversizedFrame):
            await self.error(E.FRAME_TOO_LARGE, f"frame of {item.size} bytes is larger than the "
                             f"{self.ctl.max_frame_bytes} allowed; it was dropped")
        elif isinstance(item, RunDone):
            await self._run_done(item.turn, item.run)
        elif isinstance(item, AsrDone):
            await self._asr_done(item)
        elif isinstance(item, ResponseClosed):
            await self._response_closed(item.response)

    async def close(self) -> None:
        """Cancels everything this session started, in the controller and in Triton."""
        if self.closed:
            return
        self.closed = True  # nothing more goes to the client
        if self.response is not None:
            await self.response.cancel("client_cancelled")
            self.response = None
        await self._discard_speculation()
        for turn in [t for t in (self.turn, *self.pending) if t is not None]:
            for run in turn.runs:
                if run.open:
                    await run.stream.cancel()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.turn, self.pending = None, []

    # -- client events -----------------------------------------------------------------------------
    async def _client_frame(self, text: str) -> None:
        try:
            ev = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            await self.error(E.INVALID_JSON, f"the frame is not valid JSON: {exc}")
            return
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
            await self.error(E.INVALID_JSON, "an event must be a JSON object with a string 'type'")
            return
        handler = _HANDLERS.get(ev["type"])
        eid = ev.get("event_id") if isinstance(ev.get("event_id"), str) else None
        if handler is None:
            await self.error(E.UNKNOWN_EVENT, f"unknown event type {ev['type']!r}", "type", eid)
            return
        try:
            await handler(self, ev)
        except ConfigError as exc:
            await self.error(exc.code, str(exc), exc.param, eid)
        except _EventError as exc:
            await self.error(exc.code, str(exc), exc.param, eid)

    async def _session_update(self, ev: dict) -> None:
        old = self.cfg
        self.cfg = old.apply_update(ev.get("session"), beta=self.beta)
        if self.cfg.input_format != old.input_format:
            self.input = InputAudio(self.cfg.input_format)
        if (self.cfg.turn_detection is None) != (old.turn_detection is None):
            await self._drop_turn()  # manual <-> VAD: an utterance in progress does not carry over
            self.machine = TurnMachine(self._turn_params())
            self.vad = self.vad_model.new_stream()
        else:
            self.machine.params = self._turn_params()
        await self.send(E.event("session.updated", session=self._session_obj()))

    def _session_obj(self) -> dict:
        return self.cfg.to_beta() if self.beta else self.cfg.to_ga()

    async def _append(self, ev: dict) -> None:
        if self.ctl.require_session_update and not self.cfg.updated:
            raise _EventError(E.SESSION_NOT_CONFIGURED, "send session.update before audio")
        if "audio" not in ev:
            raise _EventError(E.MISSING_FIELD, "input_audio_buffer.append needs 'audio'", "audio")
        try:
            x = self.input.decode(ev["audio"])
        except AudioFormatError as exc:
            raise _EventError(exc.code, str(exc), "audio") from None
        seconds = len(x) / self.input.rate_hz
        if self.audio_in_s + seconds > self.ctl.max_session_audio_s:
            raise _EventError(E.SESSION_AUDIO_LIMIT,
                              f"this session has sent its {self.ctl.max_session_audio_s:.0f} s of audio", "audio")
        self.audio_in_s += seconds
        if len(x) > THREAD_SAMPLES:
            x16 = await asyncio.to_thread(self.input.to_model_rate, x)
        else:
            x16 = self.input.to_model_rate(x)
        self.log.append(x16)
        if self.cfg.turn_detection is None:
            self._manual_audio(len(x16))
        else:
            await self._vad_audio(x16)
        self._trim_log()

    def _manual_audio(self, n_new: int) -> None:
        self.vad_samples = self.log.end  # no VAD: the clock is what arrived
        if self.turn is None:
            self.turn = self._new_turn(start=self.log.end - n_new)
        self._push(self.turn, self.log.end)

    def _trim_log(self) -> None:
        td = self.cfg.turn_detection
        keep = self.log.end - samples((td.prefix_padding_ms if td else 0) + LOG_KEEP_MS)
        starts = [t.start for t in (self.turn, *self.pending) if t is not None]
        self.log.trim(min([keep, *starts]))

    async def _vad_audio(self, x16: np.ndarray) -> None:
        if len(x16) > THREAD_SAMPLES:
            probs = await asyncio.to_thread(self.vad.feed, x16)
        else:
            probs = await self.vad.feed_async(x16)  # batched with other sessions' windows (vad_batch_ms)
        for p in probs:
            self.vad_samples += WINDOW_SAMPLES
            actions = self.machine.window(p, ms(self.vad_samples), WINDOW_MS)
            if actions:
                # the run's audio is pushed once per append (below), not per window: before the actions it
                # must hold the windows before this one, as if it had been
                self._push_current(self.vad_samples - WINDOW_SAMPLES)
                for action in actions:
                    await self._action(action)
        self._push_current(self.vad_samples)

    def _push_current(self, upto: int) -> None:
        if self.turn is not None and self.turn.current is not None:
            self._push(self.turn, upto)

    async def _commit(self, ev: dict) -> None:
        if self.cfg.turn_detection is not None:
            ended = self.machine.force_end()
            if ended is None:
                raise _EventError(E.COMMIT_EMPTY, "buffer too small: no speech in the input audio buffer")
            await self._end_turn(ended.audio_end_ms, respond=False)
            return
        turn = self.turn
        if turn is None or ms(self.log.end - turn.start) < MIN_COMMIT_MS:
            got = 0 if turn is None else ms(self.log.end - turn.start)
            raise _EventError(E.COMMIT_EMPTY, f"buffer too small. Expected at least {MIN_COMMIT_MS}ms of audio, "
                              f"but buffer only has {got}ms of audio")
        await self._end_turn(ms(self.log.end), respond=False)

    async def _clear(self, ev: dict) -> None:
        await self._drop_turn()
        if self.cfg.turn_detection is not None:
            self.machine.force_end()
        await self.send(E.event("input_audio_buffer.cleared"))

    async def _item_create(self, ev: dict) -> None:
        item = ev.get("item")
        if not isinstance(item, dict):
            raise _EventError(E.MISSING_FIELD, "conversation.item.create needs 'item'", "item")
        if item.get("type", "message") != "message":
            raise _EventError(E.UNSUPPORTED, f"item type {item.get('type')!r} is not supported (only messages)",
                              "item.type")
        role = item.get("role")
        if role not in ("user", "assistant", "system"):
            raise _EventError(E.INVALID_VALUE, "item.role must be user, assistant or system", "item.role")
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise _EventError(E.MISSING_FIELD, "item.content must be a non-empty list", "item.content")
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "text", "output_text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise _EventError(E.UNSUPPORTED, f"content type {kind!r} is not supported here (text only)",
                                  "item.content")
        kind = "output_text" if role == "assistant" else "input_text"
        new = Item(id=item.get("id") if isinstance(item.get("id"), str) else E.new_id("item"), role=role,
                   kind=kind, text="".join(texts))
        try:
            prev = self.conv.add(new, ev.get("previous_item_id"))
        except ItemNotFound as exc:
            raise _EventError(E.ITEM_NOT_FOUND, f"previous item {exc.args[0]} does not exist",
                              "previous_item_id") from None
        await self.send(E.event("conversation.item.added", previous_item_id=prev, item=new.to_wire()))
        await self.send(E.event("conversation.item.done", previous_item_id=prev, item=new.to_wire()))

    def _get_item(self, ev: dict) -> Item:
        item_id = ev.get("item_id")
        if not isinstance(item_id, str):
            raise _EventError(E.MISSING_FIELD, "item_id is required", "item_id")
        try:
            return self.conv.get(item_id)
        except ItemNotFound:
            raise _EventError(E.ITEM_NOT_FOUND, f"item {item_id} does not exist", "item_id") from None

    async def _item_truncate(self, ev: dict) -> None:
        item = self._get_item(ev)
        end_ms = ev.get("audio_end_ms")
        if isinstance(end_ms, bool) or not isinstance(end_ms, int):
            raise _EventError(E.MISSING_FIELD, "audio_end_ms must be an integer", "audio_end_ms")
        if ev.get("content_index", 0) != 0:
            raise _EventError(E.INVALID_VALUE, "content_index must be 0", "content_index")
        if self.response is not None and self.response.item is item:
            await self._cancel_response("client_cancelled")
        try:
            self.conv.truncate(item.id, end_ms)
        except ValueError as exc:
            raise _EventError(E.INVALID_AUDIO_END, str(exc), "audio_end_ms") from None
        await self.send(E.event("conversation.item.truncated", item_id=item.id, content_index=0,
                                audio_end_ms=end_ms))

    async def _item_delete(self, ev: dict) -> None:
        item = self._get_item(ev)
        self.conv.delete(item.id)
        await self.send(E.event("conversation.item.deleted", item_id=item.id))

    async def _item_retrieve(self, ev: dict) -> None:
        item = self._get_item(ev)
        await self.send(E.event("conversation.item.retrieved", item=item.to_wire()))

    async def _response_create(self, ev: dict) -> None:
        if self.response is not None or self.deferred_response is not None:
            raise _EventError(E.ACTIVE_RESPONSE, "Conversation already has an active response in progress")
        overrides = ev.get("response") or {}
        if not isinstance(overrides, dict):
            raise _EventError(E.INVALID_VALUE, "response must be an object", "response")
        self._check_overrides(overrides)
        if any(not t.tokens_ready() for t in self.pending):
            self.deferred_response = overrides  # starts when the committed audio is tokenized
            return
        await self._start_response(self._build_request(overrides=overrides), overrides=overrides)

    async def _response_cancel(self, ev: dict) -> None:
        rid = ev.get("response_id")
        active = self.response
        if active is None or (isinstance(rid, str) and rid and rid != active.id):
            if self.deferred_response is not None and not rid:
                self.deferred_response = None
                return
            raise _EventError(E.CANCEL_NOT_ACTIVE, "Cancellation failed: no active response found")
        await self._cancel_response("client_cancelled")

    async def _output_clear(self, ev: dict) -> None:
        await self.send(E.event("output_audio_buffer.cleared"))

    # -- turns -------------------------------------------------------------------------------------
    def _new_turn(self, start: int) -> UserTurn:
        self._turn_n += 1
        turn = UserTurn(n=self._turn_n, item_id=E.new_id("item"), start=start)
        self._open_run(turn, start)
        return turn

    def _open_run(self, turn: UserTurn, start: int) -> None:
        turn.runs.append(Run(stream=self.backend.open_tokenizer_stream(), start=start, pushed=start))

    def _push(self, turn: UserTurn, upto: int) -> None:
        run = turn.current
        if run is not None and upto > run.pushed:
            run.stream.push(self.log.slice(run.pushed, upto))
            run.pushed = upto

    def _finish_run(self, turn: UserTurn) -> None:
        run = turn.current
        if run is None:
            return
        self._push(turn, self.vad_samples if self.cfg.turn_detection is not None else self.log.end)
        run.end = run.pushed
        turn.t_flush = time.perf_counter()

        async def finish() -> None:
            try:
                run.tokens = await run.stream.finish()
            except BackendError as exc:
                run.error = str(exc)
            self.queue.put_nowait(RunDone(turn, run))

        run.task = self._spawn(finish(), f"run{turn.n}")

    async def _action(self, a) -> None:
        if isinstance(a, SpeechStarted):
            await self._speech_started(a)
        elif isinstance(a, Paused):
            if self.turn is not None:
                self._finish_run(self.turn)
        elif isinstance(a, Resumed):
            turn = self.turn
            if turn is not None:
                turn.revision += 1
                if await self._discard_speculation():
                    log.debug("session %s: speculation discarded on resume", self.id)
                self._open_run(turn, turn.runs[-1].end if turn.runs else samples(a.at_ms))
        elif isinstance(a, TurnEnded):
            await self._end_turn(a.audio_end_ms, respond=self.cfg.turn_detection.create_response)
        elif isinstance(a, IdleTimeout):
            await self.send(E.event("input_audio_buffer.timeout_triggered", audio_start_ms=a.audio_start_ms,
                                    audio_end_ms=a.audio_end_ms, item_id=E.new_id("item")))
            if self.cfg.turn_detection.create_response and self.response is None:
                await self._start_response(self._build_request())

    async def _speech_started(self, a: SpeechStarted) -> None:
        if a.barge_in:
            await self._interrupt()
        await self._drop_turn()
        await self._discard_speculation()
        self.conv.apply_transcripts()
        self.turn_busy_s = 0.0
        start = samples(a.audio_start_ms)
        self.turn = self._new_turn(start=max(start, 0))
        self._push(self.turn, self.vad_samples)
        await self.send(E.event("input_audio_buffer.speech_started", audio_start_ms=a.audio_start_ms,
                                item_id=self.turn.item_id))

    async def _interrupt(self) -> None:
        """Barge-in: the reply in progress (or about to start) is cancelled."""
        if self.response is not None:
            await self._cancel_response("turn_detected")
        for t in self.pending:
            if t.respond:
                t.respond = False
                self.machine.reply_finished(0)

    async def _end_turn(self, audio_end_ms: int, respond: bool) -> None:
        turn = self.turn
        if turn is None:
            return
        self.turn = None
        self._finish_run(turn)
        turn.ended, turn.end, turn.t_ended = True, samples(audio_end_ms), time.perf_counter()
        if respond and self.response is not None:
            # interrupt_response is off and the previous reply still runs: no second response meanwhile
            log.debug("session %s: turn %d gets no response (one is active)", self.id, turn.n)
            respond = False
        turn.respond = respond
        if respond:
            self.machine.reply_started()
        item = Item(id=turn.item_id, role="user", kind="input_audio", audio_ms=ms(turn.end - turn.start))
        prev = self.conv.add(item)
        self.metrics.turns.inc()
        if self.cfg.turn_detection is not None:
            await self.send(E.event("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms,
                                    item_id=turn.item_id))
        await self.send(E.event("input_audio_buffer.committed", item_id=turn.item_id, previous_item_id=prev))
        await self.send(E.event("conversation.item.added", previous_item_id=prev, item=item.to_wire()))
        await self.send(E.event("conversation.item.done", previous_item_id=prev, item=item.to_wire()))
        self.pending.append(turn)
        if turn.tokens_ready():
            await self._turn_tokens_ready(turn)

    async def _drop_turn(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            await self._discard_speculation()
            for run in turn.runs:
                if run.open:
                    await run.stream.cancel()
                    run.end = run.pushed

    async def _run_done(self, turn: UserTurn, run: Run) -> None:
        if turn.t_flush is not None and turn.tokens_ready():
            self.metrics.latency.labels("tokenizer_flush").observe(time.perf_counter() - turn.t_flush)
        if turn.ended:
            if turn in self.pending and turn.tokens_ready():
                await self._turn_tokens_ready(turn)
        elif turn is self.turn and turn.tokens_ready() and turn.current is None:
            await self._maybe_speculate(turn)

    async def _turn_tokens_ready(self, turn: UserTurn) -> None:
        self.pending.remove(turn)
        try:
            item = self.conv.get(turn.item_id)
        except ItemNotFound:
            item = None  # deleted by the client meanwhile
        error = turn.failed()
        if item is not None and error is None:
            item.audio_tokens = [AUDIO_TOKEN_OFFSET + t for t in turn.tokens()]
            if self.backend.has_asr:
                audio = self.log.slice(turn.start, turn.end)
                self._spawn(self._asr(turn.item_id, audio), f"asr{turn.n}")
        if error is not None:
            await self.error(E.BACKEND_ERROR, f"the audio tokenizer failed on this turn: {error}")
        if turn.respond:
            if error is None and item is not None and self.response is None:
                await self._respond_to_turn(turn)
            else:
                await self._discard_speculation()
                self.machine.reply_finished(0)
        elif self.spec is not None and self.spec.turn_n == turn.n:
            await self._discard_speculation()
        if self.deferred_response is not None and not any(not t.tokens_ready() for t in self.pending):
            overrides, self.deferred_response = self.deferred_response, None
            if self.response is None:
                await self._start_response(self._build_request(overrides=overrides), overrides=overrides)

    async def _respond_to_turn(self, turn: UserTurn) -> None:
        request = self._build_request()
        spec, self.spec = self.spec, None
        if spec is not None:
            if spec.turn_n == turn.n and spec.revision == turn.revision and spec.reply.key == request.key() \
                    and spec.reply.error is None:
                spec.reply.commit()
                self.metrics.speculation.labels("committed").inc()
                await self._start_response(spec.reply.request, reply=spec.reply, t_turn_end=turn.t_ended)
                return
            await spec.reply.cancel()
            self.metrics.speculation.labels("discarded").inc()
        await self._start_response(request, t_turn_end=turn.t_ended)

    # -- speculation -------------------------------------------------------------------------------
    async def _maybe_speculate(self, turn: UserTurn) -> None:
        td = self.cfg.turn_detection
        if not self.ctl.speculation or td is None or not td.create_response or self.spec is not None \
                or self.response is not None or turn.failed() or self.pending:
            return
        tokens = [AUDIO_TOKEN_OFFSET + t for t in turn.tokens()]
        if not tokens:
            return
        request = self._build_request(extra=Item(id=turn.item_id, role="user", kind="input_audio",
                                                 audio_tokens=tokens))
        reply = Reply(self.backend, request, speculative=True, speculate_tts=self.ctl.speculate_tts,
                      clause_policy=self.ctl.clause_policy).start()
        self.spec = Speculation(reply, turn.n, turn.revision)
        self.metrics.speculation.labels("started").inc()

    async def _discard_speculation(self) -> bool:
        spec, self.spec = self.spec, None
        if spec is None:
            return False
        await spec.reply.cancel()
        self.metrics.speculation.labels("discarded").inc()
        return True

    # -- responses ---------------------------------------------------------------------------------
    def _check_overrides(self, o: dict) -> None:
        if "output_modalities" in o or "modalities" in o:
            key = "output_modalities" if "output_modalities" in o else "modalities"
            parse_modalities(o[key], f"response.{key}")
        for key in ("max_output_tokens", "max_response_output_tokens"):
            if key in o:
                parse_max_tokens(o[key], f"response.{key}")
        if o.get("conversation", "auto") not in ("auto", "none"):
            raise _EventError(E.UNSUPPORTED, "response.conversation must be 'auto' or 'none'", "response.conversation")
        if o.get("input") is not None:
            raise _EventError(E.UNSUPPORTED, "response.input is not supported", "response.input")

    def _build_request(self, extra: Item | None = None, overrides: dict | None = None) -> ReplyRequest:
        o = overrides or {}
        instructions = o.get("instructions") if isinstance(o.get("instructions"), str) else self.cfg.instructions
        modalities = self.cfg.output_modalities
        for key in ("output_modalities", "modalities"):
            if key in o:
                modalities = parse_modalities(o[key], key)
        limit: int | str = self.cfg.max_output_tokens
        for key in ("max_output_tokens", "max_response_output_tokens"):
            if key in o:
                limit = parse_max_tokens(o[key], key)
        max_new = self.ctl.max_reply_tokens if limit == "inf" else min(int(limit), self.ctl.max_reply_tokens)
        voice = self.cfg.voice
        out = o.get("audio", {}).get("output", {}) if isinstance(o.get("audio"), dict) else {}
        if isinstance(out, dict) and isinstance(out.get("voice"), str):
            voice = out["voice"]
        elif isinstance(o.get("voice"), str):
            voice = o["voice"]
        budget = self.ctl.max_context_tokens - max_new
        messages = self.conv.messages(instructions, budget, extra=extra)
        chat = ChatParams(max_new_tokens=max_new, temperature=self.ctl.temperature if self.cfg.temperature is None
                          else self.cfg.temperature, top_p=self.ctl.top_p, seed=self.ctl.seed)
        tts = TtsParams(speaker=voice if voice in self.ctl.speakers else None,
                        max_new_tokens=self.ctl.tts_max_new_tokens, seed=self.ctl.seed)
        return ReplyRequest(messages=messages, chat=chat, tts=tts, audio="audio" in modalities)

    async def _start_response(self, request: ReplyRequest, reply: Reply | None = None, overrides: dict | None = None,
                              t_turn_end: float | None = None) -> None:
        o = overrides or {}
        if reply is None:
            reply = Reply(self.backend, request, clause_policy=self.ctl.clause_policy).start()
        in_conv = o.get("conversation", "auto") == "auto"
        resp = ActiveResponse(
            reply, send=self.send, metrics=self.metrics, output_format=self.cfg.output_format,
            voice=self.cfg.voice, max_output_tokens=o.get("max_output_tokens", self.cfg.max_output_tokens),
            in_conversation=in_conv, metadata=o.get("metadata"), conversation_id=self.conversation_id,
            delta_ms=self.ctl.audio_delta_ms, t_turn_end=t_turn_end,
            on_closed=lambda r: self.queue.put_nowait(ResponseClosed(r)))
        self.response = resp
        self.machine.reply_started()
        prev = self.conv.add(resp.item) if in_conv else None
        await resp.open(prev)

    async def _cancel_response(self, reason: str) -> None:
        resp, self.response = self.response, None
        if resp is None:
            return
        await resp.cancel(reason)
        self._account_reply(resp)
        self.machine.reply_finished(resp.playback_left_ms())

    async def _response_closed(self, resp: ActiveResponse) -> None:
        if self.response is not resp:
            return  # cancelled: already accounted for
        self.response = None
        await resp.wait()
        self._account_reply(resp)
        self.machine.reply_finished(resp.playback_left_ms())
        self.metrics.turn_overhead.observe(self.turn_busy_s + resp.busy_s)

    def _account_reply(self, resp: ActiveResponse) -> None:
        r = resp.reply
        if r.t_first_text is not None:
            self.metrics.latency.labels("llm_first_text").observe(r.t_first_text)
        if r.t_first_audio is not None:
            self.metrics.latency.labels("tts_first_audio").observe(r.t_first_audio)

    # -- ASR ---------------------------------------------------------------------------------------
    async def _asr(self, item_id: str, audio: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            text, err = await self.backend.asr(audio), None
        except BackendError as exc:
            text, err = None, str(exc)
        self.queue.put_nowait(AsrDone(item_id, text, err, len(audio) / 16000))
        self.metrics.latency.labels("asr").observe(time.perf_counter() - t0)

    async def _asr_done(self, done: AsrDone) -> None:
        try:
            item = self.conv.get(done.item_id)
        except ItemNotFound:
            return
        if done.error is not None:
            await self.send(E.event("conversation.item.input_audio_transcription.failed", item_id=done.item_id,
                                    content_index=0, error={"type": "transcription_error", "code": E.BACKEND_ERROR,
                                                            "message": done.error, "param": None}))
            return
        item.transcript = done.transcript
        await self.send(E.event("conversation.item.input_audio_transcription.completed", item_id=done.item_id,
                                content_index=0, transcript=done.transcript,
                                usage={"type": "duration", "seconds": round(done.seconds, 3)}))


class _EventError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


_HANDLERS = {
    "session.update": Session._session_update,
    "input_audio_buffer.append": Session._append,
    "input_audio_buffer.commit": Session._commit,
    "input_audio_buffer.clear": Session._clear,
    "conversation.item.create": Session._item_create,
    "conversation.item.truncate": Session._item_truncate,
    "conversation.item.delete": Session._item_delete,
    "conversation.item.retrieve": Session._item_retrieve,
    "response.create": Session._response_create,
    "response.cancel": Session._response_cancel,
    "output_audio_buffer.clear": Session._output_clear,
}
