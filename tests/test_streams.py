import numpy as np
import pytest

from stepaudio.tokenizer.streams import StreamError, StreamRegistry


class FakeSession:
    """Emits len(audio) // 100 tokens per chunk, then 99 at flush; one 'segment' per chunk."""

    def __init__(self, sr):
        self.sr = sr
        self.fed = []
        self.flushed = False
        self._n = 0

    def prepare(self, audio, final=False):
        if np.isnan(audio).any():
            raise StreamError("audio contains NaN or inf samples")
        self.fed.append(len(audio))
        self._n = len(audio) // 100
        self.flushed = final
        return [np.full(len(audio), 0.5, np.float32)]

    def complete(self, codes):
        assert len(codes) == 1 and len(codes[0]) == self.fed[-1]
        return np.concatenate([np.arange(self._n), [99] if self.flushed else []]).astype(np.int64)


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

    batches = []

    def tokenize_segments(segments):
        batches.append(len(segments))
        return [np.zeros(len(s), np.int64) for s in segments]

    reg = StreamRegistry(new, tokenize_segments, clock=clock, **kw)
    reg.batches = batches
    return reg, clock, sessions


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


def test_batch_tokenizes_segments_of_all_streams_at_once():
    from stepaudio.tokenizer.streams import Chunk

    reg, _, _ = make()
    out = reg.process_batch([
        Chunk(1, np.zeros(300, np.float32), 16000, True, False),
        Chunk(2, np.full(10, np.nan, np.float32), 16000, True, False),
        Chunk(3, np.zeros(200, np.float32), 16000, True, True),
    ])
    assert out[0].tolist() == [0, 1, 2] and isinstance(out[1], StreamError) and out[2].tolist() == [0, 1, 99]
    assert reg.batches == [2]  # streams 1 and 3 in one speech-tokenizer call
    assert len(reg) == 1
    # the same stream twice in one batch is applied in order
    out = reg.process_batch([Chunk(1, np.zeros(100, np.float32), 16000, False, False),
                             Chunk(1, np.zeros(100, np.float32), 16000, False, True)])
    assert [o.tolist() for o in out] == [[0], [0, 99]] and len(reg) == 0
