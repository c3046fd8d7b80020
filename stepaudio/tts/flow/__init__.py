"""CosyVoice flow matching (``MaskedDiffWithXvec``) for Step-Audio's token2wav, inference only.

``load_flow(model_dir)`` builds the model from ``cosyvoice.yaml`` and loads ``flow.pt`` strictly;
``flow.inference(token, prompt_token, prompt_feat, embedding, noise=...)`` returns the mel.
"""

from stepaudio.tts.flow.cfm import ConditionalCFM, time_grid
from stepaudio.tts.flow.conformer import ConformerEncoder
from stepaudio.tts.flow.decoder import ConditionalDecoder
from stepaudio.tts.flow.flow import FlowConditions, MaskedDiffWithXvec
from stepaudio.tts.flow.length_regulator import InterpolateRegulator
from stepaudio.tts.flow.loader import build_flow, load_flow

__all__ = [
    "ConditionalCFM",
    "ConditionalDecoder",
    "ConformerEncoder",
    "FlowConditions",
    "InterpolateRegulator",
    "MaskedDiffWithXvec",
    "build_flow",
    "load_flow",
    "time_grid",
]
