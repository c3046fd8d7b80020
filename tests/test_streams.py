import numpy as np
import pytest

from stepaudio.tokenizer.streams import StreamError, StreamRegistry


class FakeSession:
    def __init__(self, sr):
        self.sr = sr
        self.fed = []
        self.flushed = False

    def feed(self, audio):
        if np.isnan(audio).any():
            raise StreamError("audio contains NaN or inf samples")
        self.fed.append(len(audio))
        return np.arange(len(audio) // 100)

    def flush(self):
        self.flushed = True
        return np.array([99])


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def make(**kw):
    clock = Clock()
    sessions = []

    def new(sr):
        sessions.append(FakeSession(sr))
        return sessions[-1]

    return StreamRegistry(new, clock=clock, **kw), clock, sessions


def test_start_feed_end_frees():
    reg, _, sessions = make()
    seen = []
    reg.on_change = seen.append
    assert reg.process(1, np.zeros(300, np.float32), 16000, start=True, end=False).tolist() == [0, 1, 2]
    assert len(reg) == 1
    out = reg.process(1, np.zeros(100, np.float32), 16000, start=False, end=True)
    assert out.tolist() == [0, 99]
    assert len(reg) == 0 and sessions[0].flushed
    assert seen == [1, 0]


def test_unknown_id_and_sample_rate_change():
    reg, _, _ = make()
    with pytest.raises(StreamError, match="unknown stream id 7"):
        reg.process(7, np.zeros(10, np.float32), 16000, start=False, end=False)
    reg.process(1, np.zeros(10, np.float32), 16000, start=True, end=False)
    with pytest.raises(StreamError, match="sample_rate_hz changed"):
        reg.process(1, np.zeros(10, np.float32), 24000, start=False, end=False)
    assert len(reg) == 1


def test_cancel_drops_without_flush():
    reg, _, sessions = make()
    reg.process(1, np.zeros(10, np.float32), 16000, start=True, end=False)
    assert reg.process(1, np.zeros(0, np.float32), 16000, start=False, end=True, cancel=True).size == 0
    assert len(reg) == 0 and not sessions[0].flushed


def test_idle_timeout_with_fake_clock():
    reg, clock, _ = make(idle_timeout_s=10)
    reg.process(1, np.zeros(10, np.float32), 16000, start=True, end=False)
    reg.process(2, np.zeros(10, np.float32), 16000, start=True, end=False)
    clock.t = 6
    reg.process(2, np.zeros(10, np.float32), 16000, start=False, end=False)
    clock.t = 12
    assert reg.expire_idle() == 1  # stream 1 idle for 12 s, stream 2 for 6 s
    with pytest.raises(StreamError, match="expired"):
        reg.process(1, np.zeros(10, np.float32), 16000, start=False, end=False)
    assert reg.expired_total == 1


def test_max_streams_and_bad_chunk_keeps_state():
    reg, _, sessions = make(max_streams=1)
    reg.process(1, np.zeros(200, np.float32), 16000, start=True, end=False)
    with pytest.raises(StreamError, match="too many open streams"):
        reg.process(2, np.zeros(10, np.float32), 16000, start=True, end=False)
    with pytest.raises(StreamError, match="NaN"):
        reg.process(1, np.full(10, np.nan, np.float32), 16000, start=False, end=False)
    assert len(reg) == 1 and sessions[0].fed == [200]


def test_failed_first_chunk_does_not_leave_a_stream():
    reg, _, _ = make()
    with pytest.raises(StreamError):
        reg.process(1, np.full(10, np.nan, np.float32), 16000, start=True, end=False)
    assert len(reg) == 0


def test_sweeper_expires_in_background():
    import time

    reg, clock, _ = make(idle_timeout_s=1)
    reg.process(1, np.zeros(10, np.float32), 16000, start=True, end=False)
    clock.t = 5
    reg.start_sweeper(interval_s=0.01)
    deadline = time.monotonic() + 5
    while len(reg) and time.monotonic() < deadline:
        time.sleep(0.01)
    reg.stop_sweeper()
    assert len(reg) == 0
