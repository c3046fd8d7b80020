"""A ``speakers/`` folder in the reference layout, with one tiny built-in voice.

::

    speakers/
      speakers_info.json        {"Tingting": "<prompt text>", "TingtingRAP": "（RAP）...", "Tingting哼唱": "（哼唱）..."}
      Tingting_prompt.wav       22050 Hz mono 16-bit PCM, ~1.5 s
      TingtingRAP_prompt.wav    the same samples
      Tingting哼唱_prompt.wav    the same samples

The reference registers every id of ``speakers_info.json`` at start-up from ``{id}_prompt.wav`` and
uses ``{speaker}{tag}`` for RAP / 哼唱 requests. The released folder has a different recording per
entry; here all three reuse one synthetic signal: a voiced, speech-like tone (a glottal-like
harmonic series with vibrato and a drifting pitch, shaped by syllable-rate amplitude envelopes, plus
a little breath noise) between short near-silent edges, generated from the seed alone so the bytes
never change. ``Tingting``'s text is the released one; the RAP / 哼唱 texts are our own, starting with
the tag as the released ones do.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

SAMPLE_RATE_HZ = 22050
DURATION_S = 1.5
EDGE_S = 0.12  # near-silent lead-in and tail (the tokenizer's prompt path trims them)
SPEAKER = "Tingting"
SPEAKERS_INFO = {
    SPEAKER: "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？",
    f"{SPEAKER}RAP": "（RAP）我们一起去海边 听海浪唱歌 看海鸥飞过",
    f"{SPEAKER}哼唱": "（哼唱）月亮弯弯 照着小河 风轻轻吹过",
}
INFO_FILE = "speakers_info.json"


def synthetic_voice(seed: int, duration_s: float = DURATION_S, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """(N,) float32 in [-1, 1]: a deterministic speech-like harmonic signal."""
    rng = np.random.RandomState(seed)
    n = round(duration_s * sample_rate_hz)
    t = np.arange(n, dtype=np.float64) / sample_rate_hz
    voiced_s = duration_s - 2 * EDGE_S
    # Pitch: a falling-rising contour around ~220 Hz with 5.5 Hz vibrato.
    f0 = 220.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, np.pi)) + 6.0 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate_hz
    # Harmonics with a 1/k roll-off and two formant-like bumps.
    voice = np.zeros(n)
    for k in range(1, 16):
        fk = k * f0
        formants = 1.0 + 1.5 * np.exp(-(((fk - 700.0) / 250.0) ** 2)) + 0.8 * np.exp(-(((fk - 1800.0) / 400.0) ** 2))
        voice += formants / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    # Syllables at ~5 Hz: raised-cosine bumps with random strengths, inside the voiced span.
    env = np.zeros(n)
    n_syl = max(1, int(voiced_s * 5))
    starts = EDGE_S + np.arange(n_syl) * voiced_s / n_syl
    for start in starts:
        width = voiced_s / n_syl
        inside = (t >= start) & (t < start + width)
        env[inside] += rng.uniform(0.6, 1.0) * np.sin(np.pi * (t[inside] - start) / width) ** 0.7
    breath = rng.randn(n) * (0.02 + 0.03 * env)
    x = env * voice + breath + 0.002 * rng.randn(n)
    x = 0.6 * x / np.max(np.abs(x))
    return x.astype(np.float32)


def wav_bytes(audio: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> bytes:
    """16-bit PCM WAV (no timestamped chunks, so the bytes depend on the samples only)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate_hz, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def write_speakers(dest: Path, seed: int) -> Path:
    """Write the ``speakers/`` folder itself at ``dest`` (created if missing) and return it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wav = wav_bytes(synthetic_voice(seed))
    for speaker_id in SPEAKERS_INFO:
        (dest / f"{speaker_id}_prompt.wav").write_bytes(wav)
    (dest / INFO_FILE).write_text(json.dumps(SPEAKERS_INFO, ensure_ascii=False, indent=4) + "\n", encoding="utf-8")
    return dest
