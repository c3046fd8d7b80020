"""``MaskedDiffWithXvec`` inference: flow ids + prompt (tokens, mel, x-vector) -> mel frames.

Steps (batch 1, as the reference):
1. speaker: L2-normalised 192-d x-vector -> Linear -> 80-d ``spks``;
2. tokens: prompt + generated flow ids (one flat vocabulary; Step-Audio's 0..1023 vq02 and
   1024..5119 vq06) -> embedding -> Conformer encoder -> Linear to 80;
3. length regulator: prompt states stretched to the prompt-mel length, generated states to
   mel_len2 = int(T2 / input_frame_rate * 22050 / 256) frames;
4. cond: the prompt mel in the first mel_len1 frames, zeros after;
5. CFM sampling of all frames, then the prompt frames are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stepaudio.tts.flow.cfm import ConditionalCFM
from stepaudio.tts.flow.conformer import ConformerEncoder
from stepaudio.tts.flow.length_regulator import InterpolateRegulator

DEFAULT_MEL = {"sampling_rate": 22050, "hop_size": 256}


@dataclass
class FlowConditions:
    """What the CFM decoder needs, all in the model dtype."""

    mu: torch.Tensor  # (1, 80, mel_len1 + mel_len2), length-regulated encoder output
    spks: torch.Tensor  # (1, 80), projected speaker embedding
    cond: torch.Tensor  # (1, 80, mel_len1 + mel_len2), prompt mel then zeros
    mask: torch.Tensor  # (1, 1, mel_len1 + mel_len2), all ones (no padding at batch 1)
    mel_len1: int  # prompt frames
    mel_len2: int  # frames to generate


def _batch1(x: torch.Tensor, ndim: int, name: str) -> torch.Tensor:
    if x.dim() == ndim - 1:
        x = x.unsqueeze(0)
    if x.dim() != ndim or x.size(0) != 1:
        raise ValueError(f"{name}: expected batch 1 with {ndim} dims, got shape {tuple(x.shape)}")
    return x


class MaskedDiffWithXvec(nn.Module):
    def __init__(
        self,
        encoder: ConformerEncoder,
        length_regulator: InterpolateRegulator,
        decoder: ConditionalCFM,
        input_size: int = 512,
        output_size: int = 80,
        spk_embed_dim: int = 192,
        vocab_size: int = 4096,
        input_frame_rate: float = 50,
        mel_feat_conf: dict | None = None,
        **_unused,  # output_type, only_mask_loss, decoder_conf: training / bookkeeping only
    ):
        super().__init__()
        self.output_size = output_size
        self.vocab_size = vocab_size
        self.input_frame_rate = input_frame_rate
        self.mel_feat_conf = {**DEFAULT_MEL, **(mel_feat_conf or {})}
        self.input_embedding = nn.Embedding(vocab_size, input_size)
        self.spk_embed_affine_layer = nn.Linear(spk_embed_dim, output_size)
        self.encoder = encoder
        self.encoder_proj = nn.Linear(encoder.output_size(), output_size)
        self.decoder = decoder
        self.length_regulator = length_regulator

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embedding.weight.dtype

    def mel_frames(self, n_tokens: int) -> int:
        """Mel frames for ``n_tokens`` generated tokens (the reference's expression and rounding)."""
        return int(n_tokens / self.input_frame_rate * self.mel_feat_conf["sampling_rate"]
                   / self.mel_feat_conf["hop_size"])

    @torch.inference_mode()
    def prepare(self, token, prompt_token, prompt_feat, embedding, trace: dict | None = None) -> FlowConditions:
        """token (1, T2), prompt_token (1, T1) int; prompt_feat (1, mel_len1, 80); embedding (1, 192).

        ``trace``, when given, receives the intermediates token_emb, encoder_out, encoder_proj_out.
        """
        token = _batch1(token, 2, "token")
        prompt_token = _batch1(prompt_token, 2, "prompt_token")
        prompt_feat = _batch1(prompt_feat, 3, "prompt_feat").to(self.dtype)
        embedding = _batch1(embedding, 2, "embedding").to(self.dtype)

        spks = self.spk_embed_affine_layer(F.normalize(embedding, dim=1))  # (1, 80)

        ids = torch.cat([prompt_token, token], dim=1).long()
        if ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ValueError(f"flow token id {int(ids.max())} is outside the vocabulary 0..{self.vocab_size - 1}")
        # Negative ids (stray padding) read row 0, as in the reference.
        token_emb = self.input_embedding(ids.clamp(min=0))  # (1, T1 + T2, input_size)
        encoder_out = self.encoder(token_emb)  # (1, T1 + T2, D)
        h = self.encoder_proj(encoder_out)  # (1, T1 + T2, 80)
        if trace is not None:
            trace.update(token_emb=token_emb, encoder_out=encoder_out, encoder_proj_out=h)

        n1 = prompt_token.size(1)
        mel_len1, mel_len2 = prompt_feat.size(1), self.mel_frames(token.size(1))
        mu = self.length_regulator.inference(h[:, :n1], h[:, n1:], mel_len1, mel_len2)  # (1, T_mel, 80)

        cond = torch.zeros(1, self.output_size, mel_len1 + mel_len2, dtype=self.dtype, device=mu.device)
        cond[:, :, :mel_len1] = prompt_feat.transpose(1, 2)
        mask = torch.ones(1, 1, mel_len1 + mel_len2, dtype=self.dtype, device=mu.device)
        return FlowConditions(mu.transpose(1, 2).contiguous(), spks, cond, mask, mel_len1, mel_len2)

    @torch.inference_mode()
    def inference(self, token, prompt_token, prompt_feat, embedding, noise: torch.Tensor | None = None,
                  n_timesteps: int = 10, temperature: float = 1.0, generator: torch.Generator | None = None,
                  trace: dict | None = None) -> torch.Tensor:
        """Returns the generated mel (1, 80, mel_len2) in the model dtype.

        ``noise`` (1, 80, mel_len1 + mel_len2) replaces the Gaussian starting point of the ODE, so
        a run is reproducible; ``trace`` also receives the ``FlowConditions`` under "conditions".
        """
        c = self.prepare(token, prompt_token, prompt_feat, embedding, trace)
        if trace is not None:
            trace["conditions"] = c
        # Batch 1 has no padding (c.mask is all ones): the decoder skips the masking products.
        mel = self.decoder(c.mu, None, n_timesteps, temperature, spks=c.spks, cond=c.cond,
                           noise=noise, generator=generator)
        return mel[:, :, c.mel_len1:]
