"""Voices for the TTS pipeline: built-in speakers and voice cloning from (recording, exact transcript).

A voice is everything the TTS LM and the flow decoder need from its prompt recording
(``VoicePrompt``), prepared as the reference's ``preprocess_prompt_wav`` does:

1. mono mix (mean over channels);
2. resample to 16 kHz -> CAM++ speaker embedding (192,) (``SpeakerEmbedder``);
3. resample to 22.05 kHz -> prompt mel (T, 80) (``PromptMel``, the yaml's ``feat_extractor``);
4. the audio tokenizer's TTS-prompt path on the mono recording at its own rate (16 kHz, peak
   normalisation, silence trim) -> LLM audio ids 65536 + N, and flow tokens N.

The reference computes the embedding and the mel with the *common* decoder's front end
(``CosyVoice-300M-25Hz``) even when the Music decoder synthesises, so one bank serves both. It casts
the mel and the embedding to bf16 for the flow; a ``VoicePrompt`` keeps float32 and leaves the cast to
the flow.

Built-in speakers come from a ``speakers/`` folder in the reference layout (``speakers_info.json``:
id -> prompt text, and ``{id}_prompt.wav``); they are read and prepared on first use and kept. For a
leading RAP / 哼唱 tag the reference uses the ``{speaker}{tag}`` entry (e.g. ``TingtingRAP``); here
that entry is used when it exists, and the plain speaker otherwise (the reference would raise).
Clones are cached by a hash of the audio samples, the sample rate and the transcript, in a bounded
LRU. A cloned voice has no speaker name, so the TTS prompt uses the system prompt without one, as
the reference does.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from stepaudio.audio.preprocess import AudioInputError, check_sample_rate, check_waveform
from stepaudio.audio.resample import resample
from stepaudio.llm.prompts import AUDIO_TOKEN_OFFSET, MUSIC_TAGS, detect_instruction
from stepaudio.tokenizer.files import CheckpointError
from stepaudio.tts.mel import PromptMel
from stepaudio.tts.speaker import EMBEDDING_DIM, SpeakerEmbedder

SPEAKERS_INFO_FILE = "speakers_info.json"
SPEAKERS_DIR = "speakers"  # the reference reads it relative to the Step-Audio repository root
EMBEDDING_SAMPLE_RATE_HZ = 16000
DEFAULT_CACHE_SIZE = 32


class VoiceInputError(AudioInputError):
    """A bad clone request (audio or transcript); the message names the problem."""


class UnknownSpeakerError(ValueError):
    """A built-in speaker id that the ``speakers/`` folder does not define."""


@dataclass(frozen=True)
class PromptLimits:
    min_s: float = 0.5
    max_s: float = 30.0
    silence_peak: float = 1e-3  # a recording whose peak is below this is silent (-60 dBFS)
    max_text_chars: int = 1000
    max_channels: int = 8  # (channels, T): more "channels" than this is most likely (T, channels)


@dataclass(frozen=True, eq=False)
class VoicePrompt:
    """One prepared voice. The arrays are read-only; ``prompt_llm_ids`` must not be mutated either."""

    prompt_text: str
    prompt_llm_ids: list[int]  # the prompt's audio tokens as TTS-LM ids (65536 + N)
    prompt_flow_tokens: np.ndarray  # (T_tok,) int64, prompt_llm_ids - 65536 (0..5119)
    speaker_embedding: np.ndarray  # (192,) float32, CAM++ (the flow L2-normalises it)
    prompt_mel: np.ndarray  # (T_mel, 80) float32, the flow's prompt_feat
    speaker: str = ""  # name for the system prompt: the built-in speaker asked for, "" for a clone
    entry: str = ""  # the speakers_info.json id the prompt came from, "" for a clone
    key: str = field(default="", repr=False)  # cache key (a hex digest) of a clone

    @property
    def prompt_token_len(self) -> int:
        return int(self.prompt_flow_tokens.shape[0])

    @property
    def prompt_mel_len(self) -> int:
        return int(self.prompt_mel.shape[0])

    @property
    def is_clone(self) -> bool:
        return not self.entry


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def check_prompt_audio(audio: np.ndarray, sample_rate_hz: int, limits: PromptLimits = PromptLimits()) -> np.ndarray:
    """Mono float32 (T,) from (T,) or (channels, T) float audio; VoiceInputError when unusable."""
    try:
        sr = check_sample_rate(sample_rate_hz)
        a = np.asarray(audio)
        if a.ndim == 2 and a.shape[0] > limits.max_channels:
            raise VoiceInputError(
                f"prompt audio has shape {a.shape}: expected (T,) or (channels, T) with at most "
                f"{limits.max_channels} channels (transpose (T, channels) input)"
            )
        x = check_waveform(a, name="prompt audio")
    except VoiceInputError:
        raise
    except AudioInputError as exc:
        raise VoiceInputError(str(exc)) from exc
    dur = len(x) / sr
    if dur < limits.min_s:
        raise VoiceInputError(f"prompt audio is too short: {dur:.3f} s (at least {limits.min_s} s)")
    if dur > limits.max_s:
        raise VoiceInputError(f"prompt audio is too long: {dur:.1f} s (at most {limits.max_s} s)")
    peak = float(np.abs(x).max())
    if peak < limits.silence_peak:
        raise VoiceInputError(f"prompt audio is silent (peak {peak:.2e} < {limits.silence_peak:.0e})")
    return x


def check_prompt_text(prompt_text: str, limits: PromptLimits = PromptLimits()) -> str:
    if not isinstance(prompt_text, str):
        raise VoiceInputError(f"the prompt transcript must be a string, got {type(prompt_text).__name__}")
    if not prompt_text.strip():
        raise VoiceInputError("the prompt transcript is empty (cloning needs the exact transcript of the recording)")
    if len(prompt_text) > limits.max_text_chars:
        raise VoiceInputError(
            f"the prompt transcript is too long: {len(prompt_text)} characters (at most {limits.max_text_chars})"
        )
    return prompt_text


def clone_key(audio: np.ndarray, sample_rate_hz: int, prompt_text: str) -> str:
    """Hex digest of the mono float32 samples, their shape, the rate and the transcript."""
    x = np.ascontiguousarray(audio, dtype=np.float32)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{x.shape}|{int(sample_rate_hz)}|".encode())
    h.update(x.tobytes())
    h.update(b"|")
    h.update(prompt_text.encode("utf-8"))
    return h.hexdigest()


class VoicePreparer:
    """The three front ends a voice needs: audio tokenizer, CAM++ and the prompt mel."""

    def __init__(self, tokenizer, embedder: SpeakerEmbedder, mel: PromptMel):
        self.tokenizer = tokenizer  # an AudioTokenizer (anything with tokenize_prompt(wav, sr).llm_ids)
        self.embedder = embedder
        self.mel = mel
        # One preparation at a time: prompts are rare and cached, and the tokenizer's modules are
        # shared with other users, so this keeps CPU use bounded and makes no thread-safety assumption.
        self._lock = threading.Lock()

    @classmethod
    def from_dirs(cls, tokenizer_dir: str | Path, decoder_dir: str | Path, onnx_threads: int = 1) -> VoicePreparer:
        """From ``Step-Audio-Tokenizer/`` and the common decoder ``CosyVoice-300M-25Hz/``."""
        from stepaudio.tokenizer.tokenizer import AudioTokenizer

        decoder_dir = Path(decoder_dir)
        return cls(
            AudioTokenizer(tokenizer_dir, onnx_threads=onnx_threads),
            SpeakerEmbedder.from_decoder_dir(decoder_dir, threads=onnx_threads),
            PromptMel.from_yaml(decoder_dir / "cosyvoice.yaml"),
        )

    def prepare(self, mono: np.ndarray, sample_rate_hz: int, prompt_text: str, **meta: str) -> VoicePrompt:
        """``mono``: checked (T,) float32 audio (see ``check_prompt_audio``)."""
        sr = int(sample_rate_hz)
        with self._lock:
            embedding = self.embedder.embed_16k(resample(mono, sr, EMBEDDING_SAMPLE_RATE_HZ))
            mel = self.mel(resample(mono, sr, self.mel.sample_rate_hz))
            llm_ids = np.asarray(self.tokenizer.tokenize_prompt(mono, sr).llm_ids, dtype=np.int64).reshape(-1)
        if llm_ids.size == 0:
            raise VoiceInputError("the prompt audio gave no speech tokens (is it speech?)")
        if embedding.shape != (EMBEDDING_DIM,):
            raise CheckpointError(f"speaker embedding has shape {embedding.shape}, expected ({EMBEDDING_DIM},)")
        return VoicePrompt(
            prompt_text=prompt_text,
            prompt_llm_ids=[int(i) for i in llm_ids],
            prompt_flow_tokens=_readonly(llm_ids - AUDIO_TOKEN_OFFSET),
            speaker_embedding=_readonly(embedding.astype(np.float32)),
            prompt_mel=_readonly(mel.astype(np.float32)),
            **meta,
        )


def read_speakers_info(speakers_dir: str | Path) -> dict[str, str]:
    path = Path(speakers_dir) / SPEAKERS_INFO_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: not found (the built-in speakers' list)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise CheckpointError(f"{path}: expected an object mapping speaker id -> prompt text")
    return data


def read_prompt_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(channels, T) float32 in [-1, 1] and the sample rate (int PCM scaled by 1/32768, as torchaudio)."""
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / OSError
        raise CheckpointError(f"{path}: cannot read the prompt recording ({exc})") from exc
    return np.ascontiguousarray(data.T), int(sr)


class VoiceBank:
    """Built-in speakers (lazily prepared, kept) and an LRU of cloned voices. Thread-safe."""

    def __init__(
        self,
        preparer: VoicePreparer,
        speakers_dir: str | Path | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        limits: PromptLimits = PromptLimits(),
    ):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.preparer = preparer
        self.speakers_dir = Path(speakers_dir) if speakers_dir is not None else None
        self.cache_size = int(cache_size)
        self.limits = limits
        self._lock = threading.Lock()
        self._info: dict[str, str] | None = None
        self._builtin: dict[str, VoicePrompt] = {}
        self._clones: OrderedDict[str, VoicePrompt] = OrderedDict()
        self._inflight: dict[str, threading.Event] = {}
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_dirs(
        cls,
        tokenizer,
        decoder_dir: str | Path,
        speakers_dir: str | Path | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        limits: PromptLimits = PromptLimits(),
        onnx_threads: int = 1,
    ) -> VoiceBank:
        """``tokenizer``: an ``AudioTokenizer`` (shared with other users) or its ``Step-Audio-Tokenizer/``
        folder; ``decoder_dir``: the common decoder ``CosyVoice-300M-25Hz/`` (its ``campplus.onnx`` and
        the yaml's ``feat_extractor``); ``speakers_dir``: the ``speakers/`` folder or None."""
        if isinstance(tokenizer, (str, Path)):
            from stepaudio.tokenizer.tokenizer import AudioTokenizer

            tokenizer = AudioTokenizer(tokenizer, onnx_threads=onnx_threads)
        decoder_dir = Path(decoder_dir)
        preparer = VoicePreparer(
            tokenizer,
            SpeakerEmbedder.from_decoder_dir(decoder_dir, threads=onnx_threads),
            PromptMel.from_yaml(decoder_dir / "cosyvoice.yaml"),
        )
        return cls(preparer, speakers_dir, cache_size, limits)

    # -- built-in speakers -------------------------------------------------------------------------
    def speakers_info(self) -> dict[str, str]:
        """id -> prompt text of the built-in speakers (read once; empty without a speakers folder)."""
        if self._info is None:
            info = read_speakers_info(self.speakers_dir) if self.speakers_dir is not None else {}
            with self._lock:
                if self._info is None:
                    self._info = info
        return dict(self._info)

    def speaker_ids(self) -> list[str]:
        return list(self.speakers_info())

    def has_speaker(self, speaker_id: str) -> bool:
        return speaker_id in self.speakers_info()

    def entry_for(self, speaker: str, text: str = "") -> str:
        """The speakers_info entry for ``speaker`` synthesising ``text``: ``{speaker}{tag}`` when the
        leading tag is RAP / 哼唱 and that entry exists, else ``speaker``."""
        info = self.speakers_info()
        tag = detect_instruction(text)
        if tag in MUSIC_TAGS and f"{speaker}{tag}" in info:
            return f"{speaker}{tag}"
        if speaker not in info:
            known = ", ".join(sorted(info)) or "none"
            raise UnknownSpeakerError(f"unknown speaker {speaker!r} (built-in speakers: {known})")
        return speaker

    def builtin(self, speaker: str, text: str = "") -> VoicePrompt:
        """The prepared voice of built-in ``speaker`` for ``text`` (RAP / 哼唱 routing as ``entry_for``)."""
        entry = self.entry_for(speaker, text)
        voice = self._get_or_prepare(self._builtin, entry, lambda: self._prepare_builtin(entry), lru=False)
        return voice if voice.speaker == speaker else replace(voice, speaker=speaker)

    def _prepare_builtin(self, entry: str) -> VoicePrompt:
        assert self.speakers_dir is not None
        path = self.speakers_dir / f"{entry}_prompt.wav"
        if not path.is_file():
            raise CheckpointError(f"{path}: prompt recording of built-in speaker {entry!r} not found")
        audio, sr = read_prompt_wav(path)
        text = self.speakers_info()[entry]
        try:
            mono = check_prompt_audio(audio, sr, replace(self.limits, max_s=max(self.limits.max_s, 600.0)))
        except VoiceInputError as exc:
            raise CheckpointError(f"{path}: unusable prompt recording ({exc})") from exc
        return self.preparer.prepare(mono, sr, text, speaker=entry, entry=entry)

    # -- clones ------------------------------------------------------------------------------------
    def clone(self, audio: np.ndarray, sample_rate_hz: int, prompt_text: str) -> VoicePrompt:
        """A voice cloned from ``audio`` ((T,) or (channels, T) float in [-1, 1]) and its exact transcript."""
        text = check_prompt_text(prompt_text, self.limits)
        mono = check_prompt_audio(audio, sample_rate_hz, self.limits)
        sr = int(sample_rate_hz)
        key = clone_key(mono, sr, text)
        return self._get_or_prepare(
            self._clones, key, lambda: self.preparer.prepare(mono, sr, text, key=key), lru=True
        )

    def cache_info(self) -> dict[str, int]:
        with self._lock:
            return {"clones": len(self._clones), "builtin": len(self._builtin), "max_clones": self.cache_size,
                    "hits": self.hits, "misses": self.misses}

    def clear(self) -> None:
        with self._lock:
            self._clones.clear()
            self._builtin.clear()

    # -- shared ------------------------------------------------------------------------------------
    def _get_or_prepare(
        self, cache: dict[str, VoicePrompt], key: str, make: Callable[[], VoicePrompt], lru: bool
    ) -> VoicePrompt:
        """Cached value, or ``make()`` once per key even when several threads ask at the same time."""
        slot = ("c:" if lru else "b:") + key
        while True:
            with self._lock:
                hit = cache.get(key)
                if hit is not None:
                    self.hits += 1
                    if lru:
                        self._clones.move_to_end(key)
                    return hit
                waiting = self._inflight.get(slot)
                if waiting is None:
                    done = self._inflight[slot] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait()  # another thread prepares it; look again (it may have failed)
        try:
            value = make()
            with self._lock:
                if not lru:
                    cache[key] = value
                elif self.cache_size > 0:
                    self._clones[key] = value
                    while len(self._clones) > self.cache_size:
                        self._clones.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._inflight[slot]
            done.set()
