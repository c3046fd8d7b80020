"""Conditional flow matching sampler: Euler steps of dx/dt = v(x, t) from noise (t=0) to mel (t=1).

Guidance: every step runs the estimator on a doubled batch, row 0 conditioned on (mu, spks,
cond) and row 1 with all three zeroed, and combines v = (1 + r) v_cond - r v_uncond with
r = ``inference_cfg_rate``. The time grid is 1 - cos(pi/2 * linspace(0, 1, n + 1)), denser near
t = 0. All arithmetic runs in mu's dtype, so a bf16 model also steps in bf16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stepaudio.tts.flow.decoder import ConditionalDecoder


def time_grid(n_timesteps: int, scheduler: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    """(n_timesteps + 1,) times from 0 to 1, computed in ``dtype`` (bf16 grids are coarse)."""
    t = torch.linspace(0, 1, n_timesteps + 1, dtype=dtype, device=device)
    if scheduler == "cosine":
        t = 1 - torch.cos(t * 0.5 * math.pi)
    elif scheduler != "linear":
        raise ValueError(f"unsupported t_scheduler {scheduler!r}")
    return t


class ConditionalCFM(nn.Module):
    def __init__(self, in_channels: int, cfm_params: dict, n_spks: int = 1, spk_emb_dim: int = 64,
                 estimator: ConditionalDecoder | None = None):
        # in_channels / n_spks / spk_emb_dim are the yaml's bookkeeping: the estimator fixes the shapes.
        # sigma_min and training_cfg_rate in cfm_params only shape the training loss.
        super().__init__()
        if estimator is None:
            raise ValueError("ConditionalCFM needs an estimator")
        if cfm_params.get("solver", "euler") != "euler":
            raise ValueError(f"unsupported solver {cfm_params['solver']!r} (only euler)")
        self.t_scheduler = cfm_params.get("t_scheduler", "cosine")
        if self.t_scheduler not in ("cosine", "linear"):
            raise ValueError(f"unsupported t_scheduler {self.t_scheduler!r}")
        self.inference_cfg_rate = float(cfm_params.get("inference_cfg_rate", 0.7))
        self.estimator = estimator

    def guided_inputs(self, mask, mu, spks, cond) -> tuple:
        """The estimator's step-invariant inputs (mask, mu, spks, cond); with guidance, for the doubled
        batch: the conditioned rows, then the same rows with mu, spks and cond zeroed. Built once per solve."""
        if self.inference_cfg_rate <= 0:
            return mask, mu, spks, cond

        def zeroed(v):
            return None if v is None else torch.cat([v, torch.zeros_like(v)])

        return (None if mask is None else torch.cat([mask, mask])), zeroed(mu), zeroed(spks), zeroed(cond)

    def guided_velocity(self, x, t, fixed: tuple) -> torch.Tensor:
        """Velocity at x (B, 80, T), time t (B,), given ``guided_inputs(...)``."""
        mask, mu, spks, cond = fixed
        r = self.inference_cfg_rate
        if r <= 0:
            return self.estimator(x, mask, mu, t, spks, cond)
        v = self.estimator(torch.cat([x, x]), mask, mu, torch.cat([t, t]), spks, cond)
        v_cond, v_uncond = v.chunk(2, dim=0)
        return (1.0 + r) * v_cond - r * v_uncond

    def velocity(self, x, mask, mu, t, spks, cond) -> torch.Tensor:
        """Guided velocity at x (B, 80, T), time t (B,)."""
        return self.guided_velocity(x, t, self.guided_inputs(mask, mu, spks, cond))

    @torch.inference_mode()
    def forward(self, mu, mask, n_timesteps: int = 10, temperature: float = 1.0, spks=None, cond=None,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """mu (B, 80, T), mask (B, 1, T) or None (no padding) -> mel (B, 80, T).

        ``noise`` (B, 80, T) is the starting point x_0 (before ``temperature``); without it a
        standard normal is drawn, from ``generator`` if given.
        """
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, dtype=torch.float32, device=mu.device)
        elif noise.shape != mu.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(mu.shape)}")
        x = noise.to(mu.dtype) * temperature
        t_span = time_grid(n_timesteps, self.t_scheduler, mu.dtype, mu.device)

        # The step keeps the reference's bookkeeping: t advances by dt and the next dt is
        # t_span[k+1] - t, so rounding in t does not accumulate.
        t = t_span[:1]  # (1,), shared by the batch
        dt = t_span[1] - t_span[0]
        fixed = self.guided_inputs(mask, mu, spks, cond)
        for step in range(1, len(t_span)):
            x = x + dt * self.guided_velocity(x, t.expand(mu.size(0)), fixed)
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        return x
