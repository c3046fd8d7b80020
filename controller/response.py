"""One response on the wire: a reply's outputs forwarded as the protocol's response.* events.

``open`` announces the response and its assistant item and starts forwarding; the forwarder turns
text into transcript (or text) deltas and audio into ``response.output_audio.delta`` events in the
session's output format, and closes the response when the reply ends. ``cancel`` stops it midway
(barge-in, response.cancel, disconnect) and closes it as cancelled; either way the closing events
(output/transcript/content part/item done, then ``response.done``) are sent exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from controller.audio_io import OutputAudio
from controller.events import event, new_id
from controller.history import Item
from controller.metrics import Metrics
from controller.reply import AudioOut, ClauseEnd, Reply, ReplyEnd, TextOut

log = logging.getLogger("controller.response")
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ActiveResponse:
    def __init__(self, reply: Reply, *, send: Send, metrics: Metrics, output_format: str, voice: str,
                 max_output_tokens: int | str, in_conversation: bool, metadata: Any, conversation_id: str,
                 delta_ms: int, t_turn_end: float | None, on_closed: Callable[[ActiveResponse], None]):
        self.reply = reply
        self.id = new_id("resp")
        self.audio = reply.request.audio
        kind = "output_audio" if self.audio else "output_text"
        self.item = Item(id=new_id("item"), role="assistant", kind=kind, status="in_progress")
        self._send, self.metrics = send, metrics
        self.output_format, self.voice = output_format, voice
        self.max_output_tokens, self.in_conversation, self.metadata = max_output_tokens, in_conversation, metadata
        self.conversation_id = conversation_id
        self.out = OutputAudio(output_format, delta_ms)
        self.t_turn_end = t_turn_end
        self.t_first_audio_sent: float | None = None
        self.on_closed = on_closed
        self.text = ""
        self.segments: list[tuple[str, int]] = []
        self._clause_start_ms = 0
        self._clause_text = ""
        self.closed = False
        self.status = "in_progress"
        self.busy_s = 0.0  # time spent converting and sending (controller overhead)
        self._task: asyncio.Task | None = None

    # -- wire objects ------------------------------------------------------------------------------
    def _part(self) -> dict[str, Any]:
        return {"type": "audio", "transcript": self.text} if self.audio else {"type": "text", "text": self.text}

    def _ids(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item.id, "output_index": 0, "content_index": 0}

    def response_obj(self, status: str, details: dict | None = None, usage: dict | None = None) -> dict[str, Any]:
        u = usage or {}
        inp, out = int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0))
        return {
            "id": self.id, "object": "realtime.response", "status": status, "status_details": details,
            "output": [self.item.to_wire()] if status != "in_progress" else [],
            "conversation_id": self.conversation_id if self.in_conversation else None,
            "output_modalities": ["audio"] if self.audio else ["text"],
            "audio": {"output": {"format": {"type": self.output_format}, "voice": self.voice}},
            "max_output_tokens": self.max_output_tokens, "metadata": self.metadata,
            "usage": None if usage is None else {
                "input_tokens": inp, "output_tokens": out, "total_tokens": inp + out,
                "input_token_details": {"cached_tokens": int(u.get("cached_tokens", 0)), "text_tokens": inp,
                                        "audio_tokens": 0},
                "output_token_details": {"text_tokens": out, "audio_tokens": 0}},
        }

    # -- life cycle --------------------------------------------------------------------------------
    async def open(self, previous_item_id: str | None) -> None:
        await self._send(event("response.created", response=self.response_obj("in_progress")))
        await self._send(event("rate_limits.updated", rate_limits=[
            {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60.0},
            {"name": "tokens", "limit": 100000, "remaining": 100000, "reset_seconds": 60.0}]))
        wire = self.item.to_wire()
        await self._send(event("response.output_item.added", response_id=self.id, output_index=0, item=wire))
        if self.in_conversation:
            await self._send(event("conversation.item.added", previous_item_id=previous_item_id, item=wire))
        await self._send(event("response.content_part.added", **self._ids(), part=self._part()))
        self._task = asyncio.create_task(self._forward(), name=self.id)

    async def cancel(self, reason: str) -> None:
        if self._task is not None and not self._task.done():
            if self.closed:  # the forwarder is sending the closing events: let it finish
                await self._task
            else:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self.reply.cancel()
        await self._close("cancelled", {"type": "cancelled", "reason": reason})

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    # -- forwarding --------------------------------------------------------------------------------
    async def _forward(self) -> None:
        try:
            await self._forward_outputs()
        except Exception as exc:  # a bug here must still close the response
            log.exception("response %s: forwarding failed", self.id)
            await self._close("failed", {"type": "failed", "error": {"type": "server_error", "code": "server_error",
                                                                      "message": f"internal error: {exc}"}})
            await self.reply.cancel()

    async def _forward_outputs(self) -> None:
        while True:
            out = await self.reply.outputs.get()
            t0 = time.perf_counter()
            if isinstance(out, TextOut):
                self.text += out.text
                self._clause_text = out.text
                kind = "response.output_audio_transcript.delta" if self.audio else "response.output_text.delta"
                await self._send(event(kind, **self._ids(), delta=out.text))
            elif isinstance(out, AudioOut):
                await self._send_audio(self.out.convert(out.audio, out.rate_hz))
            elif isinstance(out, ClauseEnd):
                await self._send_audio(self.out.flush())
                self._end_clause()
            elif isinstance(out, ReplyEnd):
                self.busy_s += time.perf_counter() - t0
                if out.error:
                    details = {"type": "failed", "error": {"type": "server_error", "code": "backend_error",
                                                           "message": out.error}}
                    await self._close("failed", details, out.usage)
                elif out.finish_reason == "length":
                    await self._close("incomplete", {"type": "incomplete", "reason": "max_output_tokens"}, out.usage)
                else:
                    await self._close("completed", None, out.usage)
                return
            self.busy_s += time.perf_counter() - t0

    def _end_clause(self) -> None:
        if self._clause_text:
            self.segments.append((self._clause_text, self.out.duration_ms - self._clause_start_ms))
        self._clause_start_ms = self.out.duration_ms
        self._clause_text = ""

    async def _send_audio(self, samples) -> None:
        for b64, _n in self.out.deltas(samples):
            if self.t_first_audio_sent is None:
                self.t_first_audio_sent = time.perf_counter()
                if self.t_turn_end is not None:
                    self.metrics.latency.labels("voice_to_voice").observe(self.t_first_audio_sent - self.t_turn_end)
            await self._send(event("response.output_audio.delta", **self._ids(), delta=b64))

    async def _close(self, status: str, details: dict | None, usage: dict | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.status = status
        if self._clause_text:  # cut off inside a clause: what of it was sent
            self._end_clause()
        it = self.item
        it.status = "completed" if status == "completed" else "incomplete"
        it.text, it.audio_ms, it.segments = self.text, self.out.duration_ms, list(self.segments)
        if self.audio and status == "completed" and self.out.duration_ms == 0:
            log.warning("response %s (%s) completed without audio: %d clause(s) spoken, %d of them silent, "
                        "transcript %r", self.id, self.reply.id, self.reply.clauses, self.reply.silent_clauses,
                        self.text)
        elif status == "failed":
            log.warning("response %s (%s) failed: %s", self.id, self.reply.id, details)
        try:
            if self.audio:
                await self._send(event("response.output_audio.done", **self._ids()))
                await self._send(event("response.output_audio_transcript.done", **self._ids(), transcript=self.text))
            else:
                await self._send(event("response.output_text.done", **self._ids(), text=self.text))
            await self._send(event("response.content_part.done", **self._ids(), part=self._part()))
            wire = it.to_wire()
            await self._send(event("response.output_item.done", response_id=self.id, output_index=0, item=wire))
            if self.in_conversation:
                await self._send(event("conversation.item.done", item=wire))
            await self._send(event("response.done", response=self.response_obj(status, details, usage or {})))
        finally:
            self.metrics.responses.labels(status).inc()
            self.on_closed(self)

    def playback_left_ms(self) -> int:
        """Audio the client is still playing, assuming it plays from the first delta in real time."""
        if self.t_first_audio_sent is None:
            return 0
        played = (time.perf_counter() - self.t_first_audio_sent) * 1000
        return max(0, int(self.out.duration_ms - played))
