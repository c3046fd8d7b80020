"""Triton adapter: CAM++ speaker embedding (192-d x-vector) of a recording, for voice cloning."""

import logging
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from client import tensors as T
from stepaudio.audio.preprocess import AudioInputError
from stepaudio.serving_utils import model_parameters

log = logging.getLogger("speaker_embedding")


class TritonPythonModel:
    def initialize(self, args):
        from stepaudio.tts.speaker import SpeakerEmbedder

        p = model_parameters(args)
        self.embedder = SpeakerEmbedder.from_decoder_dir(p["decoder_dir"], threads=int(p["onnx_threads"]))
        self.max_audio_s = float(p["max_audio_s"])

    def _embed(self, request):
        audio = pb_utils.get_input_tensor_by_name(request, T.AUDIO.name).as_numpy()
        sr = pb_utils.get_input_tensor_by_name(request, T.SAMPLE_RATE_HZ.name).as_numpy().reshape(-1)
        audio = audio[0] if audio.ndim == 2 and audio.shape[0] == 1 else audio  # (1, T): the batch dimension
        if sr.size != 1:
            raise AudioInputError(f"{T.SAMPLE_RATE_HZ.name} must hold one value, got {sr.size}")
        if int(sr[0]) > 0 and audio.shape[-1] / int(sr[0]) > self.max_audio_s:
            raise AudioInputError(f"audio is {audio.shape[-1] / int(sr[0]):.1f} s long, over {self.max_audio_s:g} s")
        return self.embedder.embed(audio, int(sr[0]))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                emb = self._embed(request)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(T.EMBEDDING.name, emb.astype(np.float32)[None])]))
            except AudioInputError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # one bad request never takes the instance down
                log.error("speaker_embedding: %s", traceback.format_exc())
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}")))
        return responses
