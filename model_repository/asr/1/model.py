"""Triton adapter: speech recognition (decode tensors, call the core, encode tensors).

Each request carries one utterance; the valid ones of a dynamic batch are decoded together,
a bad one gets an error response naming the problem.
"""

import logging
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from client import tensors as T
from stepaudio.audio.preprocess import AudioInputError
from stepaudio.serving_utils import instance_device, model_parameters

log = logging.getLogger("asr")


def _error(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args):
        import torch

        from stepaudio.asr.recognizer import Recognizer

        p = model_parameters(args)
        torch.set_num_threads(int(p["torch_threads"]))
        self.recognizer = Recognizer(
            p["checkpoint_dir"],
            device=instance_device(args, p["device"]),
            max_audio_s=float(p["max_audio_s"]),
        )

    def _prepare(self, request):
        audio = pb_utils.get_input_tensor_by_name(request, T.ASR_AUDIO.name).as_numpy()
        if audio.ndim == 2 and audio.shape[0] == 1:
            audio = audio[0]  # (1, T) -> (T,): the batch dimension of one request
        sr = pb_utils.get_input_tensor_by_name(request, T.ASR_SAMPLE_RATE_HZ.name).as_numpy().reshape(-1)
        if sr.size != 1:
            raise AudioInputError(f"{T.ASR_SAMPLE_RATE_HZ.name} must hold one value, got {sr.size}")
        return self.recognizer.prepare(audio, int(sr[0]))

    def execute(self, requests):
        responses = [None] * len(requests)
        waves, slots = [], []
        for i, request in enumerate(requests):
            try:
                waves.append(self._prepare(request))
                slots.append(i)
            except AudioInputError as exc:
                responses[i] = _error(str(exc))
            except Exception as exc:
                responses[i] = _error(f"malformed request: {type(exc).__name__}: {exc}")
        if waves:
            try:
                for i, text in zip(slots, self.recognizer.recognize(waves), strict=True):
                    # (1, 1): the batch dimension of one request
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor(T.ASR_TEXT.name, np.array([[text.encode()]], dtype=np.object_))])
            except Exception as exc:  # a failed batch never takes the instance down
                log.error("asr: %s", traceback.format_exc())
                for i in slots:
                    responses[i] = _error(f"internal error: {type(exc).__name__}: {exc}")
        return responses

    def finalize(self):
        self.recognizer = None
