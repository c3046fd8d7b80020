"""Triton adapter: offline audio tokenization (decode tensors, call the core, encode tensors)."""

import logging
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from client import tensors as T
from stepaudio.audio.preprocess import AudioInputError
from stepaudio.serving_utils import instance_device, model_parameters, providers

log = logging.getLogger("audio_tokenizer")


def _optional(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        import torch

        from stepaudio.tokenizer.tokenizer import AudioTokenizer

        p = model_parameters(args)
        torch.set_num_threads(int(p["torch_threads"]))
        self.tokenizer = AudioTokenizer(
            p["checkpoint_dir"],
            device=instance_device(args, p["device"]),
            onnx_providers=providers(p["onnx_providers"]),
            onnx_threads=int(p["onnx_threads"]),
            max_audio_s=float(p["max_audio_s"]),
        )

    def _run(self, request):
        audio = pb_utils.get_input_tensor_by_name(request, T.AUDIO.name).as_numpy()
        sr = pb_utils.get_input_tensor_by_name(request, T.SAMPLE_RATE_HZ.name).as_numpy().reshape(-1)
        if sr.size != 1:
            raise AudioInputError(f"{T.SAMPLE_RATE_HZ.name} must hold one value, got {sr.size}")
        prompt = _optional(request, T.TTS_PROMPT.name)
        if prompt is not None and bool(prompt.reshape(-1)[0]):
            result = self.tokenizer.tokenize_prompt(audio, int(sr[0]))
            return self._response(result)
        kwargs = {}
        seg = _optional(request, T.SEGMENT_MS.name)
        if seg is not None:
            kwargs["segment_ms"] = int(seg.reshape(-1)[0])
        norm = _optional(request, T.NORMALIZATION.name)
        if norm is not None:
            kwargs["normalization"] = norm.reshape(-1)[0].decode("utf-8")
        return self._response(self.tokenizer.tokenize(audio, int(sr[0]), **kwargs))

    @staticmethod
    def _response(result):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(T.AUDIO_TOKENS.name, result.audio_n.astype(np.int32)),
            pb_utils.Tensor(T.AUDIO_TOKEN_STRING.name, np.array([result.token_string.encode()], dtype=np.object_)),
        ])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._run(request))
            except AudioInputError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # a bad request never takes the instance down
                log.error("audio_tokenizer: %s", traceback.format_exc())
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}")))
        return responses

    def finalize(self):
        self.tokenizer = None
