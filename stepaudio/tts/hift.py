"""HiFT vocoder (neural source filter + iSTFT head) for inference: mel (B, 80, T) -> 22050 Hz audio.

The module tree and parameter names follow the official ``hift.pt`` checkpoints, so they load with
``strict=True``:

* ``f0_predictor``: five weight-normed ``Conv1d(k=3)`` layers with ELU (``condnet.{0,2,4,6,8}``), then a
  ``Linear`` classifier; F0 (Hz) is the absolute value of its output, one value per mel frame.
* ``m_source``: harmonic source. F0 is repeated to the sample rate (x prod(upsample_rates) x hop), the
  fundamental and ``nb_harmonics`` overtones are integrated to phases, voiced frames (F0 above the
  threshold) keep the sines, every sample gets Gaussian noise (std ``nsf_sigma`` when voiced,
  ``nsf_alpha / 3`` when unvoiced), and ``l_linear`` + tanh merge the harmonics into one excitation.
* the filter: ``conv_pre``; per stage LeakyReLU, a weight-normed ``ConvTranspose1d`` (``ups``), the STFT
  of the source brought to that stage's rate (``source_downs``, then a ``source_resblocks`` block) and
  added, then the mean of the multi-receptive-field blocks (``resblocks``); a (1, 0) reflection pad
  after the last upsampling; LeakyReLU(0.01), ``conv_post`` to n_fft + 2 channels: exp of the first
  n_fft/2 + 1 is the magnitude (clipped at 100), sin of the rest is the phase; iSTFT (periodic Hann);
  the waveform is clamped to +-audio_limit.
* the residual blocks use Snake activations ``x + sin(alpha x)^2 / (alpha + 1e-9)`` with a learnt
  per-channel ``alpha`` (linear scale), not LeakyReLU.

Weight norm is stored the old way (``*.weight_g`` / ``*.weight_v``, norm over every dim but 0); the
newer ``*.parametrizations.weight.original0/1`` names are renamed at load. ``remove_weight_norm()``
folds g and v into a plain ``weight`` for faster inference with the same outputs.

Randomness (the initial harmonic phases, the additive sine noise, the NSF noise branch) comes from a
``HiftNoise`` object, so runs are reproducible: ``TorchNoise`` draws from a ``torch.Generator`` in the
order the reference draws from the global generator (so ``TorchNoise(seed)`` equals the reference run
after ``torch.manual_seed(seed)``), ``FixedNoise`` replays given tensors. The phase integral is
accumulated in float64 (torch's CPU cumsum does so for float32 input; a float32 running sum on GPU would
drift by ~1e-3 in the waveform over a few seconds) and rounded to float32 as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from stepaudio.tokenizer.files import CheckpointError

SAMPLE_RATE = 22050
CONFIG_FILE = "cosyvoice.yaml"
HIFT_FILE = "hift.pt"

# --------------------------------------------------------------------------------------------------
# Weight-normed layers (old-style parameter names: weight_g, weight_v)


class _WeightNormMixin:
    """Replaces a layer's ``weight`` by ``weight_g`` (per output slice along dim 0) and ``weight_v``."""

    weight_g: nn.Parameter
    weight_v: nn.Parameter

    def _split_weight(self) -> None:
        w = self._parameters.pop("weight")  # type: ignore[attr-defined]
        with torch.no_grad():
            g = torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True)
        self.weight_g = nn.Parameter(g)
        self.weight_v = nn.Parameter(w.detach().clone())
        self._folded = False

    def current_weight(self) -> torch.Tensor:
        if self._folded:
            return self._parameters["weight"]  # type: ignore[attr-defined]
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def fold_weight_norm(self) -> None:
        if self._folded:
            return
        with torch.no_grad():
            w = torch._weight_norm(self.weight_v, self.weight_g, 0).detach().clone()
        del self._parameters["weight_g"]  # type: ignore[attr-defined]
        del self._parameters["weight_v"]  # type: ignore[attr-defined]
        self._parameters["weight"] = nn.Parameter(w, requires_grad=False)  # type: ignore[attr-defined]
        self._folded = True


class WNConv1d(_WeightNormMixin, nn.Conv1d):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._split_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.current_weight(), self.bias)


class WNConvTranspose1d(_WeightNormMixin, nn.ConvTranspose1d):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._split_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return F.conv_transpose1d(
            x, self.current_weight(), self.bias, self.stride, self.padding, self.output_padding,
            self.groups, self.dilation,
        )


def _rename_new_style_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``x.parametrizations.weight.original0`` (g) / ``original1`` (v) -> ``x.weight_g`` / ``x.weight_v``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for suffix, new in ((".parametrizations.weight.original0", ".weight_g"),
                            (".parametrizations.weight.original1", ".weight_v")):
            if key.endswith(suffix):
                key = key[: -len(suffix)] + new
                break
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class HiftConfig:
    """HiFTGenerator hyperparameters; the defaults are the official CosyVoice-300M values."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = SAMPLE_RATE
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: list[int] = field(default_factory=lambda: [8, 8])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16])
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    source_resblock_kernel_sizes: list[int] = field(default_factory=lambda: [7, 11])
    source_resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 2)
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_num_class: int = 1
    f0_in_channels: int = 80
    f0_cond_channels: int = 512

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates) * self.hop_len

    @classmethod
    def from_node(cls, node: Any) -> HiftConfig:
        """From the ``hift`` block of ``load_cosyvoice_yaml`` (a ``Node`` or a plain mapping of kwargs)."""
        kw = dict(getattr(node, "kwargs", node))
        cfg = cls()
        simple = ("in_channels", "base_channels", "nb_harmonics", "sampling_rate", "nsf_alpha", "nsf_sigma",
                  "nsf_voiced_threshold", "upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes",
                  "resblock_dilation_sizes", "source_resblock_kernel_sizes",
                  "source_resblock_dilation_sizes", "lrelu_slope", "audio_limit")
        for name in simple:
            if name in kw:
                setattr(cfg, name, kw[name])
        istft = kw.get("istft_params") or {}
        cfg.n_fft = int(istft.get("n_fft", cfg.n_fft))
        cfg.hop_len = int(istft.get("hop_len", cfg.hop_len))
        f0 = kw.get("f0_predictor")
        if f0 is not None:
            target = getattr(f0, "target", "ConvRNNF0Predictor")
            if not str(target).endswith("ConvRNNF0Predictor"):
                raise ValueError(f"unsupported f0_predictor {target!r} (expected ConvRNNF0Predictor)")
            f0kw = dict(getattr(f0, "kwargs", f0))
            cfg.f0_num_class = int(f0kw.get("num_class", cfg.f0_num_class))
            cfg.f0_in_channels = int(f0kw.get("in_channels", cfg.f0_in_channels))
            cfg.f0_cond_channels = int(f0kw.get("cond_channels", cfg.f0_cond_channels))
        for name in ("in_channels", "base_channels", "nb_harmonics", "sampling_rate"):
            setattr(cfg, name, int(getattr(cfg, name)))
        for name in ("nsf_alpha", "nsf_sigma", "nsf_voiced_threshold", "lrelu_slope", "audio_limit"):
            setattr(cfg, name, float(getattr(cfg, name)))
        if len(cfg.upsample_rates) != len(cfg.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(cfg.source_resblock_kernel_sizes) != len(cfg.upsample_rates):
            raise ValueError("one source resblock per upsampling stage is expected")
        return cfg


# --------------------------------------------------------------------------------------------------
# Random sources


class HiftNoise(Protocol):
    """Where the vocoder's random tensors come from (all float32, standard distributions).

    ``phase``: (B, H+1, 1) uniform on [-pi, pi) as drawn; the generator zeroes harmonic 0 itself.
    ``sine_noise``: (B, H+1, L) standard normal; ``nsf_noise``: (B, L, 1) standard normal (the NSF noise
    branch; drawn and returned for parity with the reference's random stream, it does not reach the audio).
    """

    def phase(self, shape: tuple[int, ...]) -> torch.Tensor: ...

    def sine_noise(self, shape: tuple[int, ...]) -> torch.Tensor: ...

    def nsf_noise(self, shape: tuple[int, ...]) -> torch.Tensor: ...


class TorchNoise:
    """Draws from a CPU ``torch.Generator`` (so results do not depend on the model's device)."""

    def __init__(self, seed: int | None = None, generator: torch.Generator | None = None):
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        self.generator = generator

    def phase(self, shape: tuple[int, ...]) -> torch.Tensor:
        low = torch.tensor(-math.pi, dtype=torch.float32)
        high = torch.tensor(math.pi, dtype=torch.float32)
        return low + torch.rand(shape, generator=self.generator) * (high - low)

    def sine_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)

    def nsf_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)


class FixedNoise:
    """Replays given tensors; along the sample axis a longer tensor is cut to the first L samples."""

    def __init__(self, phase: Any, sine_noise: Any, nsf_noise: Any | None = None):
        self._phase = torch.as_tensor(phase, dtype=torch.float32)
        self._sine = torch.as_tensor(sine_noise, dtype=torch.float32)
        self._nsf = None if nsf_noise is None else torch.as_tensor(nsf_noise, dtype=torch.float32)

    @staticmethod
    def _fit(t: torch.Tensor, shape: tuple[int, ...], axis: int, what: str) -> torch.Tensor:
        want, have = list(shape), list(t.shape)
        fits = len(have) == len(want) and have[axis] >= want[axis]
        fits = fits and all(h == w for i, (h, w) in enumerate(zip(have, want, strict=True)) if i != axis)
        if not fits:
            raise ValueError(f"injected {what} has shape {tuple(have)}, need {tuple(want)}")
        return t.narrow(axis, 0, want[axis])

    def phase(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self._fit(self._phase, shape, 2, "phase vector")

    def sine_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self._fit(self._sine, shape, 2, "sine noise")

    def nsf_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self._nsf is None:
            return torch.zeros(shape)
        return self._fit(self._nsf, shape, 1, "NSF noise")


# --------------------------------------------------------------------------------------------------
# Modules


class ConvRNNF0Predictor(nn.Module):
    """mel (B, C, T) -> F0 in Hz (B, T)."""

    def __init__(self, num_class: int = 1, in_channels: int = 80, cond_channels: int = 512):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers.append(WNConv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1))
            layers.append(nn.ELU())
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.condnet(mel).transpose(1, 2)
        return self.classifier(h).squeeze(-1).abs()


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha[None, :, None]
        return x + (1.0 / (a + 1e-9)) * torch.sin(x * a).pow(2)


class ResBlock(nn.Module):
    """Per dilation d: x += conv2(snake(conv1_d(snake(x)))), 'same' padding."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True)
        for conv1, conv2, act1, act2 in layers:
            x = x + conv2(act2(conv1(act1(x))))
        return x


class SourceModuleHnNSF(nn.Module):
    """F0 at the sample rate (B, 1, L) -> excitation (B, 1, L); the harmonic sines are computed inline."""

    def __init__(self, sampling_rate: int, nb_harmonics: int, sine_amp: float, noise_std: float,
                 voiced_threshold: float):
        super().__init__()
        self.sampling_rate = sampling_rate
        self.nb_harmonics = nb_harmonics
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(nb_harmonics + 1, 1)

    def sine_source(self, f0: torch.Tensor, noise: HiftNoise) -> tuple[torch.Tensor, torch.Tensor]:
        """The noisy harmonic sines (B, H+1, L) and the voiced mask (B, 1, L)."""
        b, _, n = f0.shape
        h = self.nb_harmonics + 1
        mult = torch.arange(1, h + 1, dtype=f0.dtype, device=f0.device)[:, None]
        cycles = f0 * mult / self.sampling_rate  # (B, H+1, L), cycles per sample, float32
        # Running phase: summed in float64, then rounded to float32 and wrapped to [0, 1) cycles.
        wrapped = torch.cumsum(cycles.double(), dim=-1).to(f0.dtype).remainder(1.0)
        theta = 2 * math.pi * wrapped
        start = noise.phase((b, h, 1)).to(device=f0.device, dtype=f0.dtype).clone()
        start[:, 0] = 0.0
        sines = self.sine_amp * torch.sin(theta + start)
        uv = (f0 > self.voiced_threshold).to(f0.dtype)
        amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        eps = noise.sine_noise((b, h, n)).to(device=f0.device, dtype=f0.dtype)
        return sines * uv + amp * eps, uv

    def forward(self, f0: torch.Tensor, noise: HiftNoise) -> torch.Tensor:
        sines, _ = self.sine_source(f0, noise)
        merged = torch.tanh(self.l_linear(sines.transpose(1, 2)))  # (B, L, 1)
        noise.nsf_noise(tuple(merged.shape))  # the reference's unused noise branch (keeps the stream aligned)
        return merged.transpose(1, 2)


class HiftOutput(NamedTuple):
    wav: torch.Tensor  # (B, T * samples_per_frame), clamped to +-audio_limit
    source: torch.Tensor  # (B, 1, T * samples_per_frame), the excitation
    f0: torch.Tensor  # (B, T) Hz


class HiFTGenerator(nn.Module):
    def __init__(self, config: HiftConfig | None = None):
        super().__init__()
        cfg = config or HiftConfig()
        self.config = cfg
        self.n_fft = cfg.n_fft
        self.hop_len = cfg.hop_len
        self.lrelu_slope = cfg.lrelu_slope
        self.audio_limit = cfg.audio_limit
        self.upsample_factor = cfg.samples_per_frame
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.num_upsamples = len(cfg.upsample_rates)
        spec_ch = cfg.n_fft + 2
        base = cfg.base_channels

        self.m_source = SourceModuleHnNSF(cfg.sampling_rate, cfg.nb_harmonics, cfg.nsf_alpha, cfg.nsf_sigma,
                                          cfg.nsf_voiced_threshold)
        self.conv_pre = WNConv1d(cfg.in_channels, base, 7, padding=3)
        self.ups = nn.ModuleList(
            WNConvTranspose1d(base >> i, base >> (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True))
        )
        # Stage i sees the source spectrogram at the rate reached after ups[i]: frames are
        # decimated by the product of the remaining upsampling rates.
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (k, d) in enumerate(
            zip(cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes, strict=True)
        ):
            ch = base >> (i + 1)
            stride = math.prod(cfg.upsample_rates[i + 1:])
            if stride == 1:
                self.source_downs.append(nn.Conv1d(spec_ch, ch, 1))
            else:
                self.source_downs.append(nn.Conv1d(spec_ch, ch, 2 * stride, stride, padding=stride // 2))
            self.source_resblocks.append(ResBlock(ch, k, d))
        self.resblocks = nn.ModuleList(
            ResBlock(base >> (i + 1), k, d)
            for i in range(self.num_upsamples)
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = WNConv1d(base >> self.num_upsamples, spec_ch, 7, padding=3)
        self.f0_predictor = ConvRNNF0Predictor(cfg.f0_num_class, cfg.f0_in_channels, cfg.f0_cond_channels)
        window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float64).to(torch.float32)
        self.register_buffer("stft_window", window, persistent=False)

    # -- stages (separable so the convolutional part can be exported on its own) --

    def source_from_f0(self, f0: torch.Tensor, noise: HiftNoise) -> torch.Tensor:
        """F0 per frame (B, T) -> excitation (B, 1, T * samples_per_frame)."""
        f0_samples = f0[:, None, :].repeat_interleave(self.upsample_factor, dim=-1)
        return self.m_source(f0_samples, noise)

    def source_stft(self, source: torch.Tensor) -> torch.Tensor:
        """(B, 1, L) -> real and imaginary STFT parts stacked on channels (B, n_fft + 2, L / hop + 1)."""
        spec = torch.stft(source.squeeze(1), self.n_fft, self.hop_len, self.n_fft, window=self.stft_window,
                          return_complex=True)
        return torch.cat([spec.real, spec.imag], dim=1)

    def decode(self, mel: torch.Tensor, s_stft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolutional filter: mel and source spectrogram -> (magnitude, phase), each (B, n_fft/2+1, F)."""
        x = self.conv_pre(mel)
        for i in range(self.num_upsamples):
            x = self.ups[i](F.leaky_relu(x, self.lrelu_slope))
            if i == self.num_upsamples - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            acc = blocks[0](x)
            for block in blocks[1:]:
                acc = acc + block(x)
            x = acc / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))
        bins = self.n_fft // 2 + 1
        return torch.exp(x[:, :bins]), torch.sin(x[:, bins:])

    def istft(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        magnitude = magnitude.clamp(max=1e2)
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        wav = torch.istft(spec, self.n_fft, self.hop_len, self.n_fft, window=self.stft_window)
        return wav.clamp(-self.audio_limit, self.audio_limit)

    @torch.inference_mode()
    def inference(self, mel: torch.Tensor, noise: HiftNoise | None = None,
                  cache_source: torch.Tensor | None = None) -> HiftOutput:
        """mel (B, in_channels, T) -> ``HiftOutput(wav, source, f0)``.

        ``noise`` defaults to a fresh ``TorchNoise()`` (unseeded). ``cache_source`` (B, 1, n), when given,
        replaces the first n source samples (to continue a previous chunk's excitation seamlessly).
        """
        mel = mel.float()
        f0 = self.f0_predictor(mel)
        source = self.source_from_f0(f0, noise if noise is not None else TorchNoise())
        if cache_source is not None and cache_source.shape[-1] > 0:
            n = min(cache_source.shape[-1], source.shape[-1])
            source = source.clone()
            source[..., :n] = cache_source[..., :n].to(source)
        magnitude, phase = self.decode(mel, self.source_stft(source))
        return HiftOutput(self.istft(magnitude, phase), source, f0)

    def remove_weight_norm(self) -> HiFTGenerator:
        """Folds every weight-normed layer's g and v into a plain ``weight`` (same outputs, faster)."""
        for module in self.modules():
            if isinstance(module, _WeightNormMixin):
                module.fold_weight_norm()
        return self


# --------------------------------------------------------------------------------------------------
# Loading


def _config_from_yaml(path: Path) -> HiftConfig:
    from stepaudio.tts.cosyvoice_yaml import load_cosyvoice_yaml

    node = load_cosyvoice_yaml(path)["hift"]
    if not str(node.target).endswith("HiFTGenerator"):
        raise CheckpointError(f"{path}: the 'hift' block builds {node.target!r}, expected a HiFTGenerator")
    try:
        return HiftConfig.from_node(node)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad 'hift' hyperparameters ({exc})") from exc


def load_hift_state_dict(model: HiFTGenerator, path: str | Path) -> None:
    """Loads ``hift.pt`` (old- or new-style weight-norm names) into ``model`` with strict checking."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: HiFT vocoder state_dict not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read a torch state_dict ({exc})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict mapping names to tensors")
    state = _rename_new_style_weight_norm({str(k).removeprefix("module."): v for k, v in state.items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{path}: weights do not fit the HiFT config ({detail})") from exc


def load_hift(model_dir: str | Path, *, device: str | torch.device = "cpu",
              fold_weight_norm: bool = False) -> HiFTGenerator:
    """Builds the vocoder from ``model_dir/cosyvoice.yaml`` and loads ``model_dir/hift.pt`` (strict)."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: CosyVoice config not found")
    try:
        model = HiFTGenerator(_config_from_yaml(config_path))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: cannot build the HiFT vocoder from the 'hift' block ({exc})") from exc
    load_hift_state_dict(model, model_dir / HIFT_FILE)
    if fold_weight_norm:
        model.remove_weight_norm()
    return model.eval().to(device)
