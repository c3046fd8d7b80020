"""Client of the Triton ``asr`` model (tritonclient only): one utterance -> its transcript."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

from client import tensors as T


def _input(spec: T.TensorSpec, value: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
    inp.set_data_from_numpy(value)
    return inp


def asr_inputs(audio: np.ndarray, sample_rate_hz: int) -> list[grpcclient.InferInput]:
    """Request tensors for one utterance; the leading 1 is the batch dimension."""
    return [
        _input(T.ASR_AUDIO, np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)),
        _input(T.ASR_SAMPLE_RATE_HZ, np.array([[sample_rate_hz]], dtype=np.int32)),
    ]


def transcribe(client: grpcclient.InferenceServerClient, audio: np.ndarray, sample_rate_hz: int) -> str:
    """Mono PCM in [-1, 1] -> text (UTF-8). Raises tritonclient's InferenceServerException on bad input."""
    res = client.infer(T.ASR, asr_inputs(audio, sample_rate_hz))
    return res.as_numpy(T.ASR_TEXT.name).reshape(-1)[0].decode("utf-8")
