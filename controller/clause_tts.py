"""One clause's TTS stream, read into a queue as it arrives, so the next clause can be synthesised while
the one before it still plays (or is still being synthesised).

A reply's clauses must be heard in order, but their syntheses need not wait for each other: the next
clause's TTS starts once the previous one has delivered audio (``Reply``), and its chunks wait here
until playback reaches them. Otherwise each clause would begin only after the previous one's last
chunk, and the listener would hear the next clause's set-up (its prompt, its first tokens, its first
flow run) as a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any


class ClauseSynth:
    """Pumps ``stream`` (backend TTS chunks) into ``chunks``: each chunk with audio, then an exception if the
    stream failed, then None. ``audible`` is set at the first audio or at the end, whichever comes first."""

    def __init__(self, index: int, text: str, stream: AsyncIterator[Any]):
        self.index, self.text = index, text
        self.chunks: asyncio.Queue[Any] = asyncio.Queue()
        self.audible = asyncio.Event()
        self.chunks_read = asyncio.Event()  # set by the reader once it took every chunk
        self.done = False
        self.audio_s = 0.0
        self.finish_reason = ""
        self.pace_s_per_audio_s: float | None = None  # wall s from request to end per s of audio
        self._t_start = time.perf_counter()
        self._task = asyncio.create_task(self._pump(stream), name=f"clause-tts-{index}")

    async def _pump(self, stream: AsyncIterator[Any]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    self.finish_reason = chunk.finish_reason or self.finish_reason
                    if len(chunk.audio):
                        self.audio_s += len(chunk.audio) / chunk.sample_rate_hz
                        self.chunks.put_nowait(chunk)
                        self.audible.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the reader re-raises it in order, after the audio before it
            self.chunks.put_nowait(exc)
        finally:
            if self.audio_s > 0:  # includes the request's fixed costs (prefill, first chunk): a cautious estimate
                self.pace_s_per_audio_s = (time.perf_counter() - self._t_start) / self.audio_s
            self.done = True
            self.audible.set()
            self.chunks.put_nowait(None)

    async def close(self) -> None:
        """Stops the stream if it still runs (leaving it cancels the request in the server)."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
