"""Clients of the speech-decoder stages alone: ``speaker_embedding`` and the streaming ``token2wav``."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

from client import tensors as T
from client.tokenize import new_stream_id


def _input(spec: T.TensorSpec, value: np.ndarray) -> grpcclient.InferInput:
    i = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
    i.set_data_from_numpy(value)
    return i


def speaker_embedding(client: grpcclient.InferenceServerClient, audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """(T,) float audio in [-1, 1] -> (192,) CAM++ embedding."""
    res = client.infer(T.SPEAKER_EMBEDDING, [
        _input(T.AUDIO, np.asarray(audio, dtype=np.float32).reshape(1, -1)),
        _input(T.SAMPLE_RATE_HZ, np.array([[sample_rate_hz]], dtype=np.int32)),
    ])
    return res.as_numpy(T.EMBEDDING.name).reshape(-1)


class Token2WavStream:
    """One utterance through ``token2wav``: the first push carries the voice (prompt flow tokens (T1,),
    prompt mel (frames, 80), speaker embedding (192,)); each push returns the 22050 Hz audio it completed."""

    def __init__(self, client: grpcclient.InferenceServerClient, prompt_flow_tokens: np.ndarray,
                 prompt_mel: np.ndarray, embedding: np.ndarray, decoder: str = "CosyVoice-300M-25Hz",
                 seed: int = 0, stream_id: int | None = None):
        self.client = client
        self.stream_id = stream_id or new_stream_id()
        self._voice = [
            _input(T.DECODER, np.array([[decoder.encode()]], dtype=np.object_)),
            _input(T.PROMPT_FLOW_TOKENS, np.asarray(prompt_flow_tokens, dtype=np.int32).reshape(1, -1)),
            _input(T.PROMPT_MEL, np.asarray(prompt_mel, dtype=np.float32).reshape(1, -1)),
            _input(T.PROMPT_EMBEDDING, np.asarray(embedding, dtype=np.float32).reshape(1, -1)),
            _input(T.T2W_SEED, np.array([[seed]], dtype=np.int64)),
        ]
        self._started = False
        self.closed = False

    def _send(self, tokens, end: bool, cancel: bool = False) -> np.ndarray:
        inputs = [_input(T.FLOW_TOKENS, np.asarray(tokens, dtype=np.int32).reshape(1, -1))]
        if not self._started:
            inputs += self._voice
        if cancel:
            inputs.append(_input(T.STREAM_CANCEL, np.array([[True]], dtype=np.bool_)))
        start, self._started = not self._started, True
        self.closed = end
        res = self.client.infer(T.TOKEN2WAV, inputs, sequence_id=self.stream_id, sequence_start=start,
                                sequence_end=end)
        return res.as_numpy(T.T2W_AUDIO.name).reshape(-1)

    def push(self, tokens) -> np.ndarray:
        return self._send(tokens, end=False)

    def finish(self, tokens=()) -> np.ndarray:
        return self._send(tokens, end=True)

    def cancel(self) -> None:
        if self._started and not self.closed:
            self._send([], end=True, cancel=True)
        self.closed = True
