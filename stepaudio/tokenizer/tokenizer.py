"""The dual-codebook audio tokenizer: offline calls and streaming sessions over shared weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stepaudio.audio.preprocess import TOKENIZER_SAMPLE_RATE_HZ, check_waveform, peak_normalize, to_16k
from stepaudio.audio.trim import trim_silence
from stepaudio.tokenizer.files import locate_tokenizer_files
from stepaudio.tokenizer.linguistic import ParaformerLinguisticEncoder
from stepaudio.tokenizer.semantic import REFERENCE_SEGMENT_MS, SpeechTokenizerV1
from stepaudio.tokenizer.session import Normalization, TokenizeResult, TokenizerSession

# Streaming segment for vq06, chosen by measurement (see benchmarks/README.md):
# the agreement with 30 s windows against the latency of the last segment.
DEFAULT_STREAM_SEGMENT_MS = 2400
DEFAULT_MAX_AUDIO_S = 600.0


class AudioTokenizer:
    def __init__(
        self,
        root: str | Path,
        device: str = "cpu",
        onnx_providers: list[str] | None = None,
        onnx_threads: int = 1,
        max_audio_s: float = DEFAULT_MAX_AUDIO_S,
    ):
        self.files = locate_tokenizer_files(root)
        self.linguistic = ParaformerLinguisticEncoder(self.files, device=device)
        self.semantic = SpeechTokenizerV1(self.files.speech_tokenizer_onnx, onnx_providers, onnx_threads)
        self.max_audio_s = max_audio_s

    def session(
        self,
        sample_rate_hz: int,
        segment_ms: int = DEFAULT_STREAM_SEGMENT_MS,
        normalization: Normalization = "running",
    ) -> TokenizerSession:
        return TokenizerSession(self, sample_rate_hz, segment_ms, normalization, self.max_audio_s)

    def tokenize(
        self,
        audio: np.ndarray,
        sample_rate_hz: int,
        segment_ms: int = REFERENCE_SEGMENT_MS,
        normalization: Normalization = "utterance",
    ) -> TokenizeResult:
        """Whole-utterance tokenization; the defaults reproduce the reference chat-input path."""
        check_waveform(audio)  # empty, NaN/inf, dtype, shape: rejected before any work
        s = self.session(sample_rate_hz, segment_ms, normalization)
        s.feed(audio)
        s.flush()
        return s.result()

    def tokenize_prompt(self, audio: np.ndarray, sample_rate_hz: int) -> TokenizeResult:
        """The reference's TTS-prompt path: 16 kHz, peak normalisation, then silence trimming."""
        x = peak_normalize(to_16k(check_waveform(audio), sample_rate_hz))
        return self.tokenize(trim_silence(x, TOKENIZER_SAMPLE_RATE_HZ), TOKENIZER_SAMPLE_RATE_HZ,
                             REFERENCE_SEGMENT_MS, normalization="none")
