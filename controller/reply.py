"""One assistant reply: chat LLM text -> clauses -> TTS audio, queued in playing order.

A reply runs in its own task and puts its outputs on ``outputs``; whoever forwards them to the client
reads that queue. A speculative reply runs the same way before anyone reads it: its chat request, and
optionally the TTS of its first clause, go ahead; the rest waits for ``commit()``. ``cancel()`` stops
the task, and with it the Triton requests (leaving their streams cancels them in the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.backend import Backend, BackendError, ChatParams, TtsParams
from controller.clause_tts import ClauseSynth
from controller.clauses import ClausePolicy, ClauseSegmenter
from controller.events import new_id

log = logging.getLogger("controller.reply")
CANCEL_RETRY_S = 0.1


@dataclass(frozen=True)
class ReplyRequest:
    messages: list[dict[str, Any]]
    chat: ChatParams
    tts: TtsParams
    audio: bool  # speak the reply (else text only)

    def key(self) -> str:
        """Equal keys: the same request to the models (a speculation made for it can be used)."""
        return json.dumps([self.messages, self.chat.__dict__, self.tts.__dict__, self.audio], sort_keys=True,
                          ensure_ascii=False)


# -- outputs, in order -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextOut:
    text: str


@dataclass(frozen=True)
class AudioOut:
    audio: np.ndarray  # (T,) float32
    rate_hz: int


@dataclass(frozen=True)
class ClauseEnd:
    text: str


@dataclass(frozen=True)
class ReplyEnd:
    finish_reason: str  # stop | length | error
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None


Output = TextOut | AudioOut | ClauseEnd | ReplyEnd


class Reply:
    def __init__(self, backend: Backend, request: ReplyRequest, *, speculative: bool = False,
                 speculate_tts: bool = True, clause_policy: ClausePolicy | None = None):
        self.backend = backend
        self.request = request
        self.key = request.key()
        self.id = new_id("reply")
        self.speculative = speculative
        self.speculate_tts = speculate_tts
        self.clause_policy = clause_policy or ClausePolicy()
        self.outputs: asyncio.Queue[Output] = asyncio.Queue()
        self._committed = asyncio.Event()
        if not speculative:
            self._committed.set()
        self.t_start = time.perf_counter()
        self.t_first_text: float | None = None  # seconds after start
        self.t_first_audio: float | None = None
        self.finished = False
        self.error: str | None = None
        self.clauses = 0  # spoken (TTS requested)
        self.silent_clauses = 0  # whose TTS returned no samples
        self._task: asyncio.Task | None = None
        self._synths: list[ClauseSynth] = []  # every clause TTS started, in order
        self._audio_s = 0.0  # reply audio put on outputs

    def start(self) -> Reply:
        self._task = asyncio.create_task(self._run(), name=self.id)
        return self

    def commit(self) -> None:
        self._committed.set()

    async def cancel(self) -> None:
        task = self._task
        while task is not None and not task.done():
            task.cancel()
            # Cancel again until it ends: a cancellation can be lost. Python 3.11's asyncio.wait_for (with which
            # client.aio waits for each response) returns a response that arrives together with the
            # cancellation and drops the cancellation, and the reply goes on; a speculation that is never
            # committed then waits for its commit forever, and so would this (and the session behind it).
            await asyncio.wait([task], timeout=CANCEL_RETRY_S)

    # -- the work ----------------------------------------------------------------------------------
    def _request_id(self, part: str) -> str:
        return f"{self.id}-{part}"

    async def _run(self) -> None:
        usage: dict[str, int] = {}
        try:
            if self.request.audio:
                reason = await self._speak(usage)
            else:
                reason = await self._chat_text(usage)
            self.outputs.put_nowait(ReplyEnd(reason, usage))
        except BackendError as exc:
            self.error = str(exc)
            self.outputs.put_nowait(ReplyEnd("error", usage, str(exc)))
        except Exception as exc:  # whatever broke, the response must still close
            log.exception("%s failed", self.id)
            self.error = f"internal error: {exc}"
            self.outputs.put_nowait(ReplyEnd("error", usage, self.error))
        finally:
            self.finished = True

    def _note_chat(self, delta, usage: dict[str, int]) -> None:
        if self.t_first_text is None and delta.text:
            self.t_first_text = time.perf_counter() - self.t_start
        if delta.finish_reason:
            usage.update(input_tokens=delta.prompt_tokens, output_tokens=delta.completion_tokens,
                         cached_tokens=delta.cached_prompt_tokens)

    async def _chat_text(self, usage: dict[str, int]) -> str:
        reason = "stop"
        stream = self.backend.chat(self.request.messages, self.request.chat, self._request_id("chat"))
        async with contextlib.aclosing(stream):
            async for d in stream:
                self._note_chat(d, usage)
                if d.text:
                    self.outputs.put_nowait(TextOut(d.text))
                reason = d.finish_reason or reason
        return reason

    async def _chat_clauses(self, clauses: asyncio.Queue, usage: dict[str, int], result: dict) -> None:
        seg = ClauseSegmenter(self.clause_policy)
        try:
            stream = self.backend.chat(self.request.messages, self.request.chat, self._request_id("chat"))
            async with contextlib.aclosing(stream):
                async for d in stream:
                    self._note_chat(d, usage)
                    result["text"] += d.text
                    for c in seg.feed(d.text):
                        clauses.put_nowait(c)
                    if d.finish_reason:
                        result["reason"] = d.finish_reason
            for c in seg.finish():
                clauses.put_nowait(c)
        except BackendError as exc:
            result["error"] = exc
        finally:
            clauses.put_nowait(None)

    def _audio_ahead_s(self) -> float:
        """Reply audio not yet played, assuming playback began with the first audio and never stalled (a
        speculation's audio waits for the commit, so it has at least this much ahead)."""
        if self.t_first_audio is None:
            return 0.0
        return self._audio_s - (time.perf_counter() - self.t_start - self.t_first_audio)

    async def _synthesise(self, clauses: asyncio.Queue, synths: asyncio.Queue) -> None:
        """Starts each clause's TTS, in order: a clause once the previous one has delivered audio (or, with
        ``tts_ahead`` off, finished), so at most two run at once; puts each ClauseSynth on ``synths``."""
        prev: ClauseSynth | None = None
        try:
            while (clause := await clauses.get()) is not None:
                n = len(self._synths)
                # a speculation may run its first clause's TTS; the rest waits for the commit
                if n > 0 or not self.speculate_tts:
                    await self._committed.wait()
                if prev is not None:
                    await (prev.audible.wait() if self.clause_policy.tts_ahead else prev.chunks_read.wait())
                # while the previous clause is still being synthesised, this one's audio is needed only after
                # all of that clause has played: the queue is as good as long
                ahead = float("inf") if prev is not None and not prev.done else self._audio_ahead_s()
                pace = prev.pace_s_per_audio_s if prev is not None else None
                first_chunk = self.clause_policy.tts_first_chunk(n, ahead, pace)
                tts = self.request.tts
                if first_chunk is not None:
                    tts = dataclasses.replace(tts, first_chunk_tokens=first_chunk)
                log.debug("%s: tts of clause %d (%d chars, first chunk %s)", self.id, n, len(clause), first_chunk)
                prev = ClauseSynth(n, clause, self.backend.tts(clause, tts, self._request_id(f"tts{n}")))
                self._synths.append(prev)
                synths.put_nowait(prev)
        finally:
            synths.put_nowait(None)

    async def _speak(self, usage: dict[str, int]) -> str:
        clauses: asyncio.Queue[str | None] = asyncio.Queue()
        synths: asyncio.Queue[ClauseSynth | None] = asyncio.Queue()
        result: dict[str, Any] = {"reason": "stop", "text": ""}
        chat = asyncio.create_task(self._chat_clauses(clauses, usage, result))
        producer = asyncio.create_task(self._synthesise(clauses, synths))
        try:
            n = 0
            while (synth := await synths.get()) is not None:
                self.outputs.put_nowait(TextOut(synth.text))
                while (chunk := await synth.chunks.get()) is not None:
                    if isinstance(chunk, BaseException):
                        raise chunk
                    self._audio_s += len(chunk.audio) / chunk.sample_rate_hz
                    if self.t_first_audio is None:
                        self.t_first_audio = time.perf_counter() - self.t_start
                    self.outputs.put_nowait(AudioOut(chunk.audio, chunk.sample_rate_hz))
                synth.chunks_read.set()
                if synth.audio_s == 0:  # the TTS LM gave no audio tokens (the random tiny one can): the clause is silent
                    self.silent_clauses += 1
                    log.warning("%s: the TTS of clause %d (%r) returned no audio (finish_reason %r)", self.id, n,
                                synth.text, synth.finish_reason)
                self.outputs.put_nowait(ClauseEnd(synth.text))
                n += 1
                self.clauses = n
            await producer
            await chat
            if "error" in result:
                raise result["error"]
            if n == 0:
                log.warning("%s: the reply has no speakable text (chat text %r): no TTS ran, the response has "
                            "no audio", self.id, result["text"])
            return result["reason"]
        finally:
            for task in (producer, chat):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            for synth in self._synths:
                await synth.close()
