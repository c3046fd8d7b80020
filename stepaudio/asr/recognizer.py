"""Offline Paraformer recognition with the audio tokenizer's FunASR model.

The tokenizer uses only the encoder of ParaformerStreaming (vq02); recognition runs the whole
model over a whole utterance, as FunASR's offline Paraformer decoding does: Kaldi fbank + LFR +
CMVN (FunASR's offline ``WavFrontend``), the encoder with its chunk masks, the CIF predictor
(acoustic embeddings and token count), the SANM decoder, greedy argmax, tokens.json pieces, text.
Utterances of a batch are padded together and give exactly their single-utterance results.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stepaudio.asr.text import tokens_to_text
from stepaudio.audio.preprocess import (
    TOKENIZER_SAMPLE_RATE_HZ,
    AudioInputError,
    check_sample_rate,
    check_waveform,
    to_16k,
)
from stepaudio.tokenizer.files import locate_tokenizer_files
from stepaudio.tokenizer.linguistic import ParaformerModel, load_paraformer

DEFAULT_MAX_AUDIO_S = 120.0
# Padded audio per forward pass: longer batches are split (attention memory grows with T^2).
DEFAULT_MAX_BATCH_AUDIO_S = 240.0


class Recognizer:
    def __init__(
        self,
        tokenizer_dir: str | Path | None = None,
        device: str = "cpu",
        max_audio_s: float = DEFAULT_MAX_AUDIO_S,
        max_batch_audio_s: float = DEFAULT_MAX_BATCH_AUDIO_S,
        paraformer: ParaformerModel | None = None,
    ):
        """Loads the model from a Step-Audio-Tokenizer folder, or shares an already loaded one
        (``paraformer``, e.g. ``AudioTokenizer.linguistic.paraformer``)."""
        if paraformer is None:
            if tokenizer_dir is None:
                raise ValueError("Recognizer needs tokenizer_dir or a loaded paraformer")
            paraformer = load_paraformer(locate_tokenizer_files(tokenizer_dir), device)
        from funasr.frontends.wav_frontend import WavFrontend

        self.paraformer = paraformer
        self.model = paraformer.model
        self.frontend = WavFrontend(cmvn_file=str(paraformer.files.cmvn_file), **paraformer.frontend_conf)
        self.max_audio_s = float(max_audio_s)
        self.max_batch_samples = int(max_batch_audio_s * TOKENIZER_SAMPLE_RATE_HZ)
        # Shorter than one fbank window (25 ms) holds no frame to recognise: "" without a model call.
        self.min_samples = int(paraformer.frontend_conf.get("frame_length", 25) * TOKENIZER_SAMPLE_RATE_HZ // 1000)
        # Ids FunASR removes before the pieces (blank 0, and sos/eos).
        self._dropped_ids = {int(self.model.blank_id), int(self.model.sos), int(self.model.eos)}
        # FunASR's streaming model keeps the decoder's chunk mask on itself between the predictor
        # and the decoder calls: one forward pass at a time per model object.
        self._lock = threading.Lock()

    def prepare(self, audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        """Validated mono 16 kHz float32; AudioInputError names what is wrong."""
        x = check_waveform(audio)
        sr = check_sample_rate(sample_rate_hz)
        duration_s = len(x) / sr
        if duration_s > self.max_audio_s:
            raise AudioInputError(f"audio is {duration_s:.1f} s long, over the maximum of {self.max_audio_s:g} s")
        return to_16k(x, sr)

    def transcribe(self, audio: np.ndarray, sample_rate_hz: int) -> str:
        return self.recognize([self.prepare(audio, sample_rate_hz)])[0]

    def transcribe_batch(self, items: Sequence[tuple[np.ndarray, int]]) -> list[str]:
        """(audio, sample_rate_hz) pairs -> texts; the first bad item raises AudioInputError."""
        waves = []
        for i, (audio, sr) in enumerate(items):
            try:
                waves.append(self.prepare(audio, sr))
            except AudioInputError as exc:
                raise AudioInputError(f"item {i}: {exc}") from exc
        return self.recognize(waves)

    def recognize(self, waves_16k: Sequence[np.ndarray]) -> list[str]:
        """Prepared 16 kHz waveforms -> texts."""
        vocab = self.paraformer.vocab
        return [tokens_to_text(vocab[i] for i in ids) for ids in self.recognize_ids(waves_16k)]

    def recognize_ids(self, waves_16k: Sequence[np.ndarray]) -> list[list[int]]:
        """Prepared 16 kHz waveforms -> token ids (blank, sos and eos removed), in input order."""
        out: list[list[int]] = [[] for _ in waves_16k]
        usable = [i for i, w in enumerate(waves_16k) if len(w) >= self.min_samples]
        order = sorted(usable, key=lambda i: len(waves_16k[i]))
        group: list[int] = []
        for i in order:  # ascending length: the last member sets a group's padded size
            if group and len(waves_16k[i]) * (len(group) + 1) > self.max_batch_samples:
                self._decode_group(waves_16k, group, out)
                group = []
            group.append(i)
        if group:
            self._decode_group(waves_16k, group, out)
        return out

    def _decode_group(self, waves: Sequence[np.ndarray], idx: list[int], out: list[list[int]]) -> None:
        for i, ids in zip(idx, self._decode([waves[i] for i in idx]), strict=True):
            out[i] = ids

    @torch.inference_mode()
    def _decode(self, waves: list[np.ndarray]) -> list[list[int]]:
        wav_lens = torch.tensor([len(w) for w in waves])
        wav = torch.zeros(len(waves), int(wav_lens.max()))  # (B, T_samples)
        for i, w in enumerate(waves):
            wav[i, : len(w)] = torch.from_numpy(w)
        feats, feat_lens = self.frontend(wav, wav_lens)  # (B, T_lfr, 560): 60 ms frames
        device = self.paraformer.device
        feats, feat_lens = feats.to(device, torch.float32), feat_lens.to(device, torch.int32)
        with self._lock:
            enc, enc_lens = self.model.encode(feats, feat_lens)  # (B, T_enc, D)
            # Zero the frames past each utterance's end: the CIF predictor's convolution and its
            # tail frame read them (FunASR's own batched decoding lets padding change the last token).
            valid = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]  # (B, T_enc)
            enc = enc * valid[:, :, None]
            embeds, n_tokens, _, _ = self.model.calc_predictor(enc, enc_lens)  # (B, N, D), (B,)
            n_tokens = n_tokens.round().long()
            if int(n_tokens.max()) < 1:
                return [[] for _ in waves]
            log_probs, _ = self.model.cal_decoder_with_predictor(enc, enc_lens, embeds, n_tokens)  # (B, N, V)
        best = log_probs.argmax(dim=-1).cpu()  # (B, N)
        return [
            [t for t in best[b, : int(n_tokens[b])].tolist() if t not in self._dropped_ids]
            for b in range(len(waves))
        ]
