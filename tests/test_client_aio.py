"""client.aio.decoupled_responses against a scripted gRPC call: when it cancels and when it must not."""

from __future__ import annotations

import asyncio

import pytest

from client.aio import decoupled_responses


class FakeResult:
    def __init__(self, final: bool, outputs: bool = True):
        self._final, self._outputs = final, outputs

    def get_response(self):
        final = type("P", (), {"bool_param": self._final})()
        return type("R", (), {"parameters": {"triton_final_response": final}, "outputs": [1] if self._outputs else []})()


class FakeCall:
    def __init__(self, script):
        self.script, self.cancelled = list(script), False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.script:
            await asyncio.sleep(3600)  # a stream that never says anything more
        return self.script.pop(0), None

    def cancel(self):
        self.cancelled = True


class FakeClient:
    def __init__(self, script):
        self.script = script

    def stream_infer(self, requests, stream_timeout=None):
        self.call = FakeCall(self.script)
        return self.call


def collect(client, n=None, **kw):
    async def go():
        out = []
        stream = decoupled_responses(client, "m", [], **kw)
        async for r in stream:
            out.append(r)
            if n is not None and len(out) == n:
                await stream.aclose()
                break
        return out
    return asyncio.run(go())


def test_runs_to_the_final_response_without_cancelling():
    c = FakeClient([FakeResult(False), FakeResult(True)])
    assert len(collect(c)) == 2 and not c.call.cancelled


def test_leaving_early_cancels_the_request():
    c = FakeClient([FakeResult(False), FakeResult(False), FakeResult(True)])
    assert len(collect(c, n=1)) == 1 and c.call.cancelled


def test_the_empty_final_response_is_not_yielded():
    c = FakeClient([FakeResult(False), FakeResult(True, outputs=False)])
    assert len(collect(c)) == 1 and not c.call.cancelled


def test_a_silent_stream_times_out_and_is_cancelled():
    c = FakeClient([FakeResult(False)])
    with pytest.raises(asyncio.TimeoutError):
        collect(c, idle_timeout_s=0.05)
    assert c.call.cancelled
