"""Length regulator: token-rate encoder states -> mel-rate ``mu`` for the flow decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InterpolateRegulator(nn.Module):
    """Linear interpolation in time, then a conv stack ([Conv1d k3, GroupNorm, Mish] x N, Conv1d k1).

    ``model`` indices (0, 1, 3, 4, ..., 3N) match the official state_dict: Mish has no weights.
    """

    def __init__(self, channels: int, sampling_ratios, out_channels: int | None = None, groups: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in sampling_ratios:
            layers += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(groups, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, out_channels or channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def inference(self, h_prompt: torch.Tensor, h_gen: torch.Tensor, mel_len1: int, mel_len2: int) -> torch.Tensor:
        """h_prompt (B, T1, D), h_gen (B, T2, D) -> (B, mel_len1 + mel_len2, D_out).

        The prompt and the generated part are stretched separately, so the prompt tokens land
        exactly on the prompt mel frames that condition the decoder.
        """
        x = F.interpolate(h_gen.transpose(1, 2).contiguous(), size=mel_len2, mode="linear")  # (B, D, mel_len2)
        if h_prompt.size(1) > 0:
            x_prompt = F.interpolate(h_prompt.transpose(1, 2).contiguous(), size=mel_len1, mode="linear")
            x = torch.cat([x_prompt, x], dim=2)  # (B, D, mel_len1 + mel_len2)
        return self.model(x).transpose(1, 2)
