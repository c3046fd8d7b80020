"""Triton model and tensor names, dtypes and shapes: the one definition shared by the renderer,
the Python-backend models and the clients (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    triton_dtype: str  # as in config.pbtxt, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = False
    ragged: bool = False

    @property
    def client_dtype(self) -> str:  # as tritonclient names it, e.g. "FP32"
        return {"TYPE_STRING": "BYTES"}.get(self.triton_dtype, self.triton_dtype.removeprefix("TYPE_"))


# -- audio_tokenizer: one whole utterance per request -------------------------------------------
AUDIO_TOKENIZER = "audio_tokenizer"
AUDIO = TensorSpec("audio", "TYPE_FP32", (-1,))  # mono PCM in [-1, 1]
SAMPLE_RATE_HZ = TensorSpec("sample_rate_hz", "TYPE_INT32", (1,))
SEGMENT_MS = TensorSpec("segment_ms", "TYPE_INT32", (1,), optional=True)
NORMALIZATION = TensorSpec("normalization", "TYPE_STRING", (1,), optional=True)
AUDIO_TOKENS = TensorSpec("audio_tokens", "TYPE_INT32", (-1,))  # N of <audio_N>, 5 per 120 ms
AUDIO_TOKEN_STRING = TensorSpec("audio_token_string", "TYPE_STRING", (1,))
AUDIO_TOKENIZER_INPUTS = (AUDIO, SAMPLE_RATE_HZ, SEGMENT_MS, NORMALIZATION)
AUDIO_TOKENIZER_OUTPUTS = (AUDIO_TOKENS, AUDIO_TOKEN_STRING)

# -- audio_tokenizer_stream: a sequence (correlation id) per utterance, chunks as they arrive ----
AUDIO_TOKENIZER_STREAM = "audio_tokenizer_stream"
STREAM_AUDIO = TensorSpec("audio", "TYPE_FP32", (-1,), ragged=True)
STREAM_SAMPLE_RATE_HZ = TensorSpec("sample_rate_hz", "TYPE_INT32", (1,))
STREAM_CANCEL = TensorSpec("cancel", "TYPE_BOOL", (1,), optional=True)  # with END: drop, don't flush
STREAM_INPUTS = (STREAM_AUDIO, STREAM_SAMPLE_RATE_HZ, STREAM_CANCEL)
STREAM_OUTPUTS = (AUDIO_TOKENS, AUDIO_TOKEN_STRING)
# Sequence-batcher control tensors delivered to the model.
CONTROL_START = "START"
CONTROL_END = "END"
CONTROL_CORRID = "CORRID"
