"""Tiny random-weight CosyVoice decoder folders (``CosyVoice-300M-25Hz[-Music]/``) in the official layout.

``cosyvoice.yaml`` keeps the official HyperPyYAML structure and classes with shrunk dimensions
(vocab 5120 dual-codebook ids at 41.67 tokens/s); ``flow.pt`` and ``hift.pt`` are plain state_dicts
of our modules built from that yaml, which carry the official key names.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

YAML = """\
# Tiny random-weight CosyVoice config (official structure, shrunk dims). seed: {seed}
__set_seed1: !apply:random.seed [{seed}]
__set_seed2: !apply:numpy.random.seed [{seed}]
__set_seed3: !apply:torch.manual_seed [{seed}]

sample_rate: 22050
spk_embed_dim: 192

flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: 32
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 5120
    input_frame_rate: 41.67
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        output_size: 32
        attention_heads: 2
        linear_units: 64
        num_blocks: 2
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 32
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1, 1, 1, 1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [32, 32]
            dropout: 0.0
            attention_head_dim: 16
            n_blocks: 1
            num_mid_blocks: 2
            num_heads: 2
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 16
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 16

feat_extractor: !name:cosyvoice.matcha.audio.mel_spectrogram
    n_fft: 1024
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 256
    win_size: 1024
    fmin: 0
    fmax: 8000
    center: False
"""

F0_TARGET_STD_HZ = 100.0  # random init gives f0 ~ 0.2 Hz: every frame would be unvoiced


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, buf)
    path.write_bytes(buf.getvalue())


def write_cosyvoice(dest: Path, seed: int) -> Path:
    """Write cosyvoice.yaml, flow.pt and hift.pt (campplus.onnx is written by its own writer)."""
    from stepaudio.tts.cosyvoice_yaml import load_cosyvoice_yaml
    from stepaudio.tts.flow import build_flow
    from stepaudio.tts.hift import HiftConfig, HiFTGenerator

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "cosyvoice.yaml").write_text(YAML.format(seed=seed), encoding="utf-8")
    conf = load_cosyvoice_yaml(dest / "cosyvoice.yaml")
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        flow = build_flow(conf["flow"])
        _save(flow.state_dict(), dest / "flow.pt")
        torch.manual_seed(seed + 1)
        hift = HiFTGenerator(HiftConfig.from_node(conf["hift"])).eval()
        # Rescale the F0 head so predicted f0 spreads like |N(0, 100 Hz)| on a plausible log-mel,
        # making most frames voiced (the harmonic source then matters, as with trained weights).
        mel = -6.0 + 2.0 * torch.randn(1, 80, 64, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            f0 = hift.f0_predictor(mel)
            scale = F0_TARGET_STD_HZ / max(float(f0.std()), 1e-6)
            hift.f0_predictor.classifier.weight.mul_(scale)
            hift.f0_predictor.classifier.bias.mul_(scale)
        _save(hift.state_dict(), dest / "hift.pt")
    finally:
        torch.random.set_rng_state(state)
    return dest
