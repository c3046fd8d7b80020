"""Token2wav: speech tokens + a voice prompt -> 22050 Hz float32 audio, offline or streamed in chunks.

Offline: ``Token2Wav(flow, hift).offline(tokens, voice, seed)`` runs the flow on all tokens and
vocodes the whole mel with ``HiFTGenerator.inference``.

Streaming: ``stream = t2w.session(voice, seed)``; ``stream.push(new_tokens)`` and ``stream.finish()``
return lists of waveform chunks. The method, chosen to stay as close to the offline result as the
models allow:

1. Chunking: ``stepaudio.tts.chunking.plan_chunks`` decides when a chunk of tokens is released
   (small first chunk, growing hops, a few tokens of look-ahead).
2. Flow: re-run on the prompt, the last ``flow_context`` released tokens (default 20; None: all of
   them) and every token received since (look-ahead included), so the non-causal encoder and the
   interpolating length regulator see context on both sides of the chunk, while a run's cost stays
   bounded however long the utterance gets. The window's frames are right-aligned on the frames of
   all tokens. The ODE starts from one session-fixed noise tensor, sliced by absolute frame
   position, so each frame starts from the same noise as in offline synthesis. Only the frames of
   the released tokens are kept (the mel cache); they are never recomputed. The frames past the
   chunk (from the look-ahead tokens) are provisional: they serve only as right context for the
   vocoder. A chunk released with no new tokens since the last run (a push that ends the stream
   can release two) reuses that run.
3. Vocoder: each chunk vocodes a mel window = ``left_context`` cached frames + the overlap + the
   new frames + the provisional frames. The harmonic source is computed outside ``inference``
   so it is continuous across chunks: samples already committed are reused (the source cache), new
   samples continue the running phase sum (kept in float64, exactly like the offline cumulative
   sum) and take their noise from session-fixed streams indexed by absolute sample position.
   Hence the streamed source equals the offline one up to F0 differences near window edges.
4. Seams: the last ``overlap`` frames of each chunk are held back and, when the next chunk
   recomputes them with more right context, cross-faded (complementary Hann fades, sum 1).
   ``finish`` flushes the rest. The streamed total length equals the offline length.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from stepaudio.tts.chunking import ChunkPolicy, plan_chunks

SAMPLE_RATE = 22050
# Released tokens a streaming chunk's flow run re-reads before the new tokens (after the prompt). On the
# golden tiny weights the streamed-vs-offline SNR is the same within 1 dB for 5..40 tokens and for all
# (the deviation comes from the missing right context), while the flow's work stops growing with the
# utterance: 30% fewer estimator frames for 180 tokens.
FLOW_CONTEXT_TOKENS = 20


@dataclass(frozen=True)
class PromptVoice:
    """The voice: prompt flow tokens (T1,), prompt mel (mel_len1, 80) and x-vector (192,)."""

    prompt_token: torch.Tensor
    prompt_feat: torch.Tensor
    embedding: torch.Tensor

    @classmethod
    def of(cls, prompt_token, prompt_feat, embedding) -> PromptVoice:
        t = torch.as_tensor(np.asarray(prompt_token)).long().reshape(-1)
        f = torch.as_tensor(np.asarray(prompt_feat, dtype=np.float32))
        f = f.reshape(-1, f.shape[-1])
        e = torch.as_tensor(np.asarray(embedding, dtype=np.float32)).reshape(-1)
        return cls(t, f, e)


class GrowingNoise:
    """A standard-normal stream (1, channels, n) from a seed, grown in fixed blocks in order, so any
    slice is the same however it is requested. ``forget(upto)`` drops what is no longer needed."""

    def __init__(self, seed: int, channels: int, block: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.channels, self.block = channels, block
        self.base = 0  # absolute index of buf[..., 0]
        self.buf = torch.zeros(1, channels, 0)

    def get(self, start: int, end: int) -> torch.Tensor:
        if start < self.base:
            raise ValueError(f"noise before {self.base} was already dropped (asked from {start})")
        while self.base + self.buf.shape[-1] < end:
            new = torch.randn((1, self.channels, self.block), generator=self.generator)
            self.buf = torch.cat([self.buf, new], dim=-1)
        return self.buf[..., start - self.base:end - self.base]

    def forget(self, upto: int) -> None:
        if upto > self.base:
            cut = min(upto - self.base, self.buf.shape[-1])
            self.buf = self.buf[..., cut:]
            self.base += cut


class SessionNoise:
    """All the randomness of one synthesis, fixed by ``seed``: the flow's starting noise per mel
    frame, the vocoder's harmonic start phases and its sine noise per sample. Also a ``HiftNoise``
    (phase / sine_noise / nsf_noise from position 0) for the offline vocoder."""

    def __init__(self, seed: int, n_harmonics: int, mel_channels: int = 80, samples_per_frame: int = 256):
        g = torch.Generator().manual_seed(seed)
        self.start_phase = (torch.rand((1, n_harmonics, 1), generator=g) * 2 - 1) * math.pi
        self.flow = GrowingNoise(seed * 2 + 1, mel_channels, 64)
        self.sine = GrowingNoise(seed * 2 + 2, n_harmonics, 64 * samples_per_frame)

    def phase(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self.start_phase.expand(shape).clone()

    def sine_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self.sine.get(0, shape[-1]).expand(shape).clone()

    def nsf_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape)  # the reference's unused branch; it never reaches the audio


def _tokens(tokens) -> torch.Tensor:
    return torch.as_tensor(np.asarray(tokens)).long().reshape(-1)


def hann_fades(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Complementary (fade_in, fade_out) of length n: a half Hann rise, and 1 minus it."""
    fade_in = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
    return fade_in, (1.0 - fade_in).astype(np.float32)


class Token2Wav:
    """The flow runs where its parameters are (CPU or GPU); the vocoder and every stream cache stay on
    the CPU: the flow's 10 U-Net passes dominate, and the source/iSTFT bookkeeping is small."""

    def __init__(self, flow, hift, n_timesteps: int = 10, flow_context: int | None = FLOW_CONTEXT_TOKENS):
        self.flow, self.hift, self.n_timesteps = flow, hift, n_timesteps
        self.flow_context = flow_context  # for its sessions (see Token2WavStream.flow_context)
        self.device = next(flow.parameters()).device if any(True for _ in flow.parameters()) else torch.device("cpu")
        self.spf = hift.upsample_factor  # samples per mel frame (256)
        self.n_harmonics = hift.m_source.nb_harmonics + 1

    def noise(self, seed: int) -> SessionNoise:
        return SessionNoise(seed, self.n_harmonics, self.flow.output_size, self.spf)

    @torch.inference_mode()
    def flow_mel(self, tokens: torch.Tensor, voice: PromptVoice, noise: SessionNoise, start: int = 0) -> torch.Tensor:
        """The flow on the prompt and ``tokens[start:]``: (1, 80, W) float32 with W = mel_frames(len(tokens) - start),
        the last W of the mel_frames(len(tokens)) frames (right-aligned: the end frame is exact). Each frame
        starts from the session noise of its absolute position."""
        n_prompt = voice.prompt_feat.shape[0]
        end = self.flow.mel_frames(tokens.numel())
        first = end - self.flow.mel_frames(tokens.numel() - start)
        z = noise.flow.get(0, n_prompt + end)
        if first:
            z = torch.cat([z[..., :n_prompt], z[..., n_prompt + first:]], dim=-1)
        dev = self.device
        mel = self.flow.inference(tokens[None, start:].to(dev), voice.prompt_token[None].to(dev),
                                  voice.prompt_feat[None].to(dev), voice.embedding[None].to(dev),
                                  noise=z.to(dev), n_timesteps=self.n_timesteps)
        return mel.float().cpu()

    @torch.inference_mode()
    def offline(self, tokens, voice: PromptVoice, seed: int = 0) -> np.ndarray:
        """The reference: flow on all tokens, then the whole mel through ``HiFTGenerator.inference``."""
        noise = self.noise(seed)
        mel = self.flow_mel(_tokens(tokens), voice, noise)
        if mel.shape[-1] == 0:
            return np.zeros(0, np.float32)
        return self.hift.inference(mel, noise=noise).wav[0].numpy().astype(np.float32)

    def session(self, voice: PromptVoice, seed: int = 0, policy: ChunkPolicy | None = None,
                left_context: int = 12, overlap: int = 3) -> Token2WavStream:
        return Token2WavStream(self, voice, seed, policy or ChunkPolicy(), left_context, overlap, self.flow_context)


@dataclass
class ChunkStat:
    tokens: int  # tokens released in this chunk
    samples: int  # samples returned
    flow_s: float
    vocoder_s: float


@dataclass
class Token2WavStream:
    """One streaming synthesis. Not thread-safe; one owner pushes tokens and finishes it."""

    t2w: Token2Wav
    voice: PromptVoice
    seed: int
    policy: ChunkPolicy
    left_context: int  # cached mel frames before the overlap given to the vocoder as left context
    overlap: int  # frames recomputed by the next chunk and cross-faded
    # Released tokens the flow re-runs before each new chunk, as context (rounded down to whole token
    # groups); None: all of them. The prompt is always included.
    flow_context: int | None = None
    stats: list[ChunkStat] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.flow_context is not None and self.flow_context < self.policy.group:
            # Less than a group could start the flow window past the mel cache end.
            raise ValueError(f"flow_context must be None or at least {self.policy.group} tokens, got {self.flow_context}")
        self.noise = self.t2w.noise(self.seed)
        self.tokens = torch.zeros(0, dtype=torch.long)
        self.n_emitted = 0  # tokens released
        self.mel = torch.zeros(1, self.t2w.flow.output_size, 0)  # final frames (mel cache)
        self.frames_out = 0  # frames whose samples are fully returned
        self.pending = np.zeros(0, np.float32)  # held-back samples of the overlap frames
        self.source = torch.zeros(1, 1, 0)  # committed source samples, from source_base on
        self.source_base = 0
        self.phase_sum = torch.zeros(1, self.t2w.n_harmonics, 1, dtype=torch.float64)  # cycles to source end
        self.flow_tokens = -1  # token count of the last flow run, whose mel is kept in flow_out
        self.flow_out = self.mel
        self.flow_first = 0  # absolute frame of flow_out[..., 0]
        self.finished = False

    # -- public --

    def push(self, new_tokens) -> list[np.ndarray]:
        if self.finished:
            raise RuntimeError("push after finish")
        self.tokens = torch.cat([self.tokens, _tokens(new_tokens)])
        return self._drain(final=False)

    def finish(self) -> list[np.ndarray]:
        if self.finished:
            return []
        out = self._drain(final=True)
        if self.pending.size:
            out.append(self.pending)
            self.pending = np.zeros(0, np.float32)
        self.finished = True
        return out

    def close(self) -> None:
        """Drops every buffer (mel and source caches, noise, pending samples); the stream is then unusable."""
        self.finished = True
        self.tokens = torch.zeros(0, dtype=torch.long)
        self.mel = torch.zeros(1, self.t2w.flow.output_size, 0)
        self.flow_out, self.flow_tokens, self.flow_first = self.mel, -1, 0
        self.source = torch.zeros(1, 1, 0)
        self.pending = np.zeros(0, np.float32)
        self.noise = None

    # -- internals --

    def _drain(self, final: bool) -> list[np.ndarray]:
        out = []
        while (size := plan_chunks(self.tokens.numel(), self.n_emitted, final, self.policy)) is not None:
            chunk = self._chunk(size, final and self.n_emitted + size == self.tokens.numel())
            if chunk.size:
                out.append(chunk)
        return out

    @torch.inference_mode()
    def _chunk(self, size: int, last: bool) -> np.ndarray:
        t2w, spf = self.t2w, self.t2w.spf
        t0 = time.perf_counter()
        n = self.tokens.numel()
        if self.flow_tokens != n:  # else (a push with end releasing two chunks) it is the same run
            start = 0
            if self.flow_context is not None:
                g = self.policy.group
                start = max(0, self.n_emitted - self.flow_context) // g * g
            self.flow_out = t2w.flow_mel(self.tokens, self.voice, self.noise, start)
            self.flow_first = t2w.flow.mel_frames(n) - self.flow_out.shape[-1]
            self.flow_tokens = n
        f0, mel_all = self.flow_first, self.flow_out  # frames [f0, mel_frames(n)): cache end onwards
        self.n_emitted += size
        end = t2w.flow.mel_frames(self.n_emitted)  # frames of the released tokens
        self.mel = torch.cat([self.mel, mel_all[..., self.mel.shape[-1] - f0:end - f0]], dim=-1)
        t1 = time.perf_counter()

        # Vocoder window: [w0, w1) frames; samples from frames_out on are (re)computed.
        new_from = self.frames_out
        w0 = max(0, new_from - self.left_context)
        w1 = f0 + mel_all.shape[-1] if not last else end
        mel_win = torch.cat([self.mel[..., w0:], mel_all[..., end - f0:w1 - f0]], dim=-1)
        wav = np.zeros(0, np.float32)
        if mel_win.shape[-1] > 0:
            wav_win = self._vocode(mel_win, w0, commit=end)  # source committed up to released frames
            wav = wav_win[(new_from - w0) * spf:(end - w0) * spf]
        hold = 0 if last else min(self.overlap, end - new_from) * spf
        if self.pending.size:
            n = min(self.pending.size, wav.size)
            fade_in, fade_out = hann_fades(n)
            head = self.pending[:n] * fade_out + wav[:n] * fade_in
            wav = np.concatenate([head, wav[n:]])
        ready = wav[:wav.size - hold]
        self.pending = wav[wav.size - hold:].copy()
        self.frames_out = end - hold // spf
        t2 = time.perf_counter()
        self.stats.append(ChunkStat(size, int(ready.size), t1 - t0, t2 - t1))
        self._forget()
        return np.ascontiguousarray(ready, dtype=np.float32)

    def _vocode(self, mel: torch.Tensor, w0: int, commit: int) -> np.ndarray:
        """Vocodes mel frames [w0, w0 + T) with a source continuous with the committed one."""
        hift, spf = self.t2w.hift, self.t2w.spf
        f0 = hift.f0_predictor(mel)  # (1, T)
        s0, s1 = w0 * spf, (w0 + mel.shape[-1]) * spf
        have = self.source_base + self.source.shape[-1]  # committed source end (samples)
        src = self.source[..., s0 - self.source_base:]
        if s1 > have:
            f0_new = f0[:, None, :].repeat_interleave(spf, dim=-1)[..., have - s0:]
            fresh, cycles_total = self._source(f0_new, have)
            src = torch.cat([src, fresh], dim=-1)
            keep = max(0, commit * spf - have)
            self.source = torch.cat([self.source, fresh[..., :keep]], dim=-1)
            self.phase_sum = self.phase_sum + cycles_total[..., keep - 1:keep] if keep else self.phase_sum
        magnitude, phase = hift.decode(mel, hift.source_stft(src[..., :s1 - s0]))
        return hift.istft(magnitude, phase)[0].numpy()

    def _source(self, f0: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The harmonic-plus-noise excitation for samples [start, start + n) given F0 there (1, 1, n),
        as ``SourceModuleHnNSF`` computes it, with the phase sum continued from the committed end.
        Also returns the cumulative cycles (float64) from the committed end."""
        m = self.t2w.hift.m_source
        h = self.t2w.n_harmonics
        mult = torch.arange(1, h + 1, dtype=f0.dtype)[:, None]
        cycles = torch.cumsum((f0 * mult / m.sampling_rate).double(), dim=-1)  # (1, H+1, n)
        wrapped = (self.phase_sum + cycles).to(f0.dtype).remainder(1.0)
        start_phase = self.noise.start_phase.clone()
        start_phase[:, 0] = 0.0
        sines = m.sine_amp * torch.sin(2 * math.pi * wrapped + start_phase)
        uv = (f0 > m.voiced_threshold).to(f0.dtype)
        amp = uv * m.noise_std + (1 - uv) * m.sine_amp / 3
        eps = self.noise.sine.get(start, start + f0.shape[-1])
        merged = torch.tanh(m.l_linear((sines * uv + amp * eps).transpose(1, 2)))
        return merged.transpose(1, 2), cycles

    def _forget(self) -> None:
        """Drops source samples and noise no later window can reach."""
        keep_from = max(0, self.frames_out - self.left_context) * self.t2w.spf
        if keep_from > self.source_base:
            self.source = self.source[..., keep_from - self.source_base:]
            self.source_base = keep_from
        self.noise.sine.forget(self.source_base + self.source.shape[-1])


def load_token2wav(decoder_dir, device: str = "cpu", n_timesteps: int = 10, onnx_dir=None,
                   onnx_threads: int = 1, flow_context: int | None = FLOW_CONTEXT_TOKENS) -> Token2Wav:
    """A ``CosyVoice-300M-25Hz*`` folder as a Token2Wav: the flow on ``device``, HiFT (weight norm folded)
    on the CPU. With ``onnx_dir`` (holding ``export_cosyvoice_onnx``'s files) the flow estimator and the
    HiFT decoder run through ONNX Runtime on the CPU instead."""
    from stepaudio.tts.flow import load_flow
    from stepaudio.tts.hift import load_hift

    flow = load_flow(decoder_dir, device="cpu" if onnx_dir else device)
    hift = load_hift(decoder_dir, fold_weight_norm=True)
    if onnx_dir:
        from stepaudio.tts.onnx_modules import use_onnx

        use_onnx(flow, hift, onnx_dir, threads=onnx_threads)
    return Token2Wav(flow, hift, n_timesteps=n_timesteps, flow_context=flow_context)
