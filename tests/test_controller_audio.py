"""The controller's audio pieces: G.711 codecs, streaming resampling, wire (de)coding, Silero VAD."""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest

from controller import g711
from controller.audio_io import AudioFormatError, InputAudio, OutputAudio
from controller.resample import StreamingResampler
from tests.conftest import ROOT

# -- G.711 -------------------------------------------------------------------------------------------
# Fixed points of ITU-T G.711 (as tabulated by the Sun reference implementation).
ULAW_DECODED = {0x00: -32124, 0x7F: 0, 0x80: 32124, 0xFF: 0, 0x0F: -16764, 0x8F: 16764, 0x70: -120, 0xF0: 120}
ALAW_DECODED = {0xD5: 8, 0x55: -8, 0xAA: 32256, 0x2A: -32256, 0x80: 5504, 0x00: -5504}
ULAW_ENCODED = {0: 0xFF, -1: 0x7E, 32767: 0x80, -32768: 0x00, 100: 0xF2}
ALAW_ENCODED = {0: 0xD5, -1: 0x55, 32767: 0xAA, -32768: 0x2A, 100: 0xD3}


def test_g711_known_values():
    for code, value in ULAW_DECODED.items():
        assert g711.ulaw_decode(np.array([code]))[0] == value, hex(code)
    for code, value in ALAW_DECODED.items():
        assert g711.alaw_decode(np.array([code]))[0] == value, hex(code)
    for value, code in ULAW_ENCODED.items():
        assert g711.ulaw_encode(np.array([value]))[0] == code, value
    for value, code in ALAW_ENCODED.items():
        assert g711.alaw_encode(np.array([value]))[0] == code, value


def test_g711_round_trip_is_the_identity_on_codes():
    codes = np.arange(256)
    # every code decodes to a value that encodes back to it (µ-law has two zeros: 0x7F and 0xFF)
    assert np.array_equal(g711.alaw_encode(g711.alaw_decode(codes)), codes)
    back = g711.ulaw_encode(g711.ulaw_decode(codes))
    assert np.array_equal(back[codes != 0x7F], codes[codes != 0x7F]) and back[0x7F] == 0xFF


def test_g711_matches_audioop_on_every_sample():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # in the standard library up to Python 3.12
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(g711.ulaw_encode(x), np.frombuffer(audioop.lin2ulaw(x.tobytes(), 2), np.uint8))
    assert np.array_equal(g711.alaw_encode(x), np.frombuffer(audioop.lin2alaw(x.tobytes(), 2), np.uint8))


# -- resampling --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate_in,rate_out", [(24000, 16000), (8000, 16000), (22050, 24000), (22050, 8000),
                                              (16000, 16000)])
def test_streaming_resampler_is_chunking_invariant_and_matches_resample_poly(rate_in, rate_out):
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(rate_in + rate_out)
    x = rng.standard_normal(7001).astype(np.float32)
    whole = StreamingResampler(rate_in, rate_out)
    one = np.concatenate([whole.process(x), whole.flush()])
    pieces = StreamingResampler(rate_in, rate_out)
    out, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, 500))
        out.append(pieces.process(x[i:i + k]))
        i += k
    out.append(pieces.flush())
    assert np.array_equal(np.concatenate(out), one)
    g = np.gcd(rate_in, rate_out)
    ref = signal.resample_poly(x.astype(np.float64), rate_out // g, rate_in // g)
    assert len(one) == len(ref)
    np.testing.assert_allclose(one, ref, atol=2e-6)


def test_resampled_tone_keeps_frequency_and_level():
    t = np.arange(24000) / 24000
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    r = StreamingResampler(24000, 16000)
    y = np.concatenate([r.process(x), r.flush()])
    spectrum = np.abs(np.fft.rfft(y[1000:-1000] * np.hanning(len(y) - 2000)))
    peak_hz = np.argmax(spectrum) * 16000 / (len(y) - 2000)
    assert abs(peak_hz - 440) < 2
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_a_tone_above_the_new_nyquist_is_filtered_out():
    t = np.arange(24000) / 24000
    x = np.sin(2 * np.pi * 10000 * t).astype(np.float32)  # above 8 kHz: must not alias into 16 kHz audio
    r = StreamingResampler(24000, 16000)
    y = r.process(x)
    assert np.sqrt(np.mean(y[500:-500] ** 2)) < 0.01


# -- the wire ----------------------------------------------------------------------------------------
def test_input_audio_decodes_and_rejects():
    pcm = (np.arange(-100, 100) * 100).astype("<i2")
    inp = InputAudio("audio/pcm")
    x = inp.decode(base64.b64encode(pcm.tobytes()).decode())
    np.testing.assert_array_equal(np.round(x * 32768).astype(np.int16), pcm)
    for bad, code in (("%%%", "invalid_base64"), (base64.b64encode(b"abc").decode(), "invalid_audio"), (5, "invalid_base64")):
        with pytest.raises(AudioFormatError) as e:
            inp.decode(bad)
        assert e.value.code == code
    ulaw = InputAudio("audio/pcmu")
    assert ulaw.rate_hz == 8000
    np.testing.assert_allclose(ulaw.decode(base64.b64encode(bytes([0xFF, 0x80])).decode()), [0.0, 32124 / 32768])


def test_output_audio_deltas_are_small_and_complete():
    out = OutputAudio("audio/pcm", max_delta_ms=100)
    tts = np.full(22050, 0.25, np.float32)  # 1 s at the TTS rate
    samples = np.concatenate([out.convert(tts, 22050), out.flush()])
    deltas = out.deltas(samples)
    assert len(samples) == 24000 and len(deltas) == 10
    assert all(n == 2400 for _, n in deltas) and out.duration_ms == 1000
    pcm = np.frombuffer(base64.b64decode(deltas[5][0]), "<i2")
    assert np.all(np.abs(pcm - 8192) <= 12)  # the filter's pass-band ripple is about 0.1 %
    # the next utterance starts a fresh resampler (the previous one was flushed)
    assert len(out.convert(tts, 22050)) > 0


# -- Silero VAD --------------------------------------------------------------------------------------
def test_silero_stream_equals_window_by_window_in_any_chunking():
    from controller.vad import CONTEXT_SAMPLES, STATE_SHAPE, WINDOW_SAMPLES, SileroVad, default_model_path

    if not default_model_path().is_file():
        pytest.skip(f"{default_model_path()} is missing (make setup)")
    sf = pytest.importorskip("soundfile")
    x, rate = sf.read(str(ROOT / "client" / "samples" / "demo_order.wav"), dtype="float32")
    assert rate == 16000
    vad = SileroVad()
    # the reference: each 512-sample window after the last 64 samples of the one before (zeros at first)
    state, context, ref = np.zeros(STATE_SHAPE, np.float32), np.zeros(CONTEXT_SAMPLES, np.float32), []
    for k in range(len(x) // WINDOW_SAMPLES):
        window = x[k * WINDOW_SAMPLES:(k + 1) * WINDOW_SAMPLES]
        p, state = vad.run(np.concatenate([context, window])[None, :], state)
        context = window[-CONTEXT_SAMPLES:]
        ref.append(p)
    assert max(ref) > 0.9 and min(ref) < 0.1  # speech and pauses
    rng = np.random.default_rng(0)
    for high in (300, 1600, 20000):
        stream, got, i = vad.new_stream(), [], 0
        while i < len(x):
            n = int(rng.integers(1, high))
            got += stream.feed(x[i:i + n])
            i += n
        assert got == ref


def test_silero_batches_streams_and_gives_each_its_own_probabilities():
    import asyncio

    from controller.vad import SileroVad, default_model_path

    if not default_model_path().is_file():
        pytest.skip(f"{default_model_path()} is missing (make setup)")
    sf = pytest.importorskip("soundfile")
    clips = [sf.read(str(ROOT / "client" / "samples" / f"demo_{n}.wav"), dtype="float32")[0]
             for n in ("order", "weather", "bargein")]
    alone = [SileroVad().new_stream().feed(x) for x in clips]
    vad = SileroVad(batch_window_s=0.005, batch_min_streams=2)

    async def session(x, chunk):
        stream, probs = vad.new_stream(), []
        for i in range(0, len(x), chunk):
            probs += await stream.feed_async(x[i:i + chunk])
            await asyncio.sleep(0)  # the next append comes later
        return probs

    async def all_sessions():
        return await asyncio.gather(*(session(x, c) for x, c in zip(clips, (1600, 1000, 2500), strict=True)))

    together = asyncio.run(all_sessions())
    assert together == alone
    assert vad.batched_windows > sum(len(p) for p in alone) // 2  # (the first stream's first append ran alone)
    assert vad.batches < vad.batched_windows  # windows of different streams shared runs of the model
