"""Token2WavStreams: per-stream state with one owner, freed on end, cancel, error and idle timeout."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stepaudio.tts.streams import StreamInputError, StreamVoice, Token2WavStreams


class FakeStream:
    def __init__(self, fail_at: int | None):
        self.tokens, self.fail_at, self.closed = 0, fail_at, False

    def push(self, tokens):
        self.tokens += len(tokens)
        if self.fail_at is not None and self.tokens >= self.fail_at:
            raise RuntimeError("flow failed")
        return [np.ones(len(tokens), np.float32)] if len(tokens) else []

    def finish(self):
        return [np.zeros(3, np.float32)]

    def close(self):
        self.closed = True


class FakeT2W:
    def __init__(self, fail_at=None):
        self.fail_at, self.made = fail_at, []

    def session(self, voice, seed=0, policy=None):
        self.made.append(FakeStream(self.fail_at))
        self.made[-1].policy = policy
        return self.made[-1]


VOICE = StreamVoice("d", voice=None)


def _registry(clock=time.monotonic, fail_at=None, **kw):
    t2w = FakeT2W(fail_at)
    return Token2WavStreams({"d": t2w}, clock=clock, **kw), t2w


def test_end_frees_after_the_flush():
    reg, t2w = _registry()
    assert reg.push(1, np.arange(4), start=VOICE).size == 4
    out = reg.push(1, np.arange(2), end=True)
    assert out.size == 2 + 3 and len(reg) == 0 and t2w.made[0].closed and reg.freed["end"] == 1
    with pytest.raises(StreamInputError, match="unknown stream id 1"):
        reg.push(1, np.arange(2))


def test_cancel_frees_without_output():
    reg, t2w = _registry()
    reg.push(7, np.arange(4), start=VOICE)
    assert reg.push(7, np.arange(4), cancel=True).size == 0
    assert len(reg) == 0 and t2w.made[0].closed and reg.freed["cancel"] == 1


def test_error_in_a_push_frees_that_stream_only():
    reg, t2w = _registry(fail_at=6)
    reg.push(1, np.arange(4), start=VOICE)
    reg.push(2, np.arange(1), start=VOICE)
    with pytest.raises(RuntimeError, match="flow failed"):
        reg.push(1, np.arange(4))
    assert len(reg) == 1 and reg.freed["error"] == 1 and t2w.made[0].closed and not t2w.made[1].closed
    assert reg.push(2, np.arange(2), end=True).size == 5


def test_bad_tokens_refused_without_touching_the_stream():
    reg, t2w = _registry()
    reg.push(1, np.arange(4), start=VOICE)
    with pytest.raises(StreamInputError, match=r"0\.\.5119"):
        reg.push(1, np.array([5120]))
    assert t2w.made[0].tokens == 4 and len(reg) == 1
    with pytest.raises(StreamInputError, match=r"0\.\.5119"):
        reg.push(2, np.array([-3]), start=VOICE)
    assert len(reg) == 1 and reg.freed["error"] == 1  # the new stream never began


def test_idle_timeout_on_a_virtual_clock_and_by_the_sweeper():
    now = [0.0]
    reg, t2w = _registry(clock=lambda: now[0], idle_timeout_s=10)
    reg.push(1, np.arange(4), start=VOICE)
    now[0] = 5.0
    reg.push(2, np.arange(4), start=VOICE)
    now[0] = 11.0
    assert reg.expire_idle() == 1 and len(reg) == 1 and t2w.made[0].closed and reg.freed["idle"] == 1
    real, t2w = _registry(idle_timeout_s=0.2)
    real.start_sweeper(interval_s=0.05)
    try:
        real.push(1, np.arange(4), start=VOICE)
        deadline = time.monotonic() + 5
        while len(real) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(real) == 0 and real.freed["idle"] == 1
    finally:
        real.close()


def test_limits_and_unknown_decoder():
    reg, _ = _registry(max_streams=1)
    reg.push(1, np.arange(1), start=VOICE)
    with pytest.raises(StreamInputError, match="too many open streams"):
        reg.push(2, np.arange(1), start=VOICE)
    with pytest.raises(StreamInputError, match="unknown decoder"):
        reg.push(3, np.arange(1), start=StreamVoice("other", voice=None))
    counts = []
    reg.on_change = counts.append
    reg.push(1, np.arange(1), start=VOICE)  # a restart replaces the old state
    assert len(reg) == 1 and counts == [1]


def test_first_chunk_of_one_stream():
    from stepaudio.tts.chunking import ChunkPolicy

    reg, t2w = _registry(policy=ChunkPolicy(first=20, cap=40))
    reg.push(1, np.arange(1), start=VOICE)
    reg.push(2, np.arange(1), start=StreamVoice("d", voice=None, first_chunk_tokens=60))
    assert t2w.made[0].policy == ChunkPolicy(first=20, cap=40)
    assert t2w.made[1].policy == ChunkPolicy(first=60, cap=60)  # the rest of the deployment's policy kept
    reg.push(3, np.arange(1), start=VOICE)
    for bad in (0, 1001):  # refused before the old state of that id is touched
        with pytest.raises(StreamInputError, match=r"first_chunk_tokens must be in 1\.\.1000"):
            reg.push(3, np.arange(1), start=StreamVoice("d", voice=None, first_chunk_tokens=bad))
    assert not t2w.made[2].closed and len(reg) == 3
