"""Shaped like tts: a synchronous decoupled execute hands each request to a thread pool, whose thread
streams a BLS decoupled call to ``lm`` (token ids only) and sends audio-like responses.
``REPRO_FIXED=1``: every BLS iterator is kept in ``stepaudio.serving_utils.Graveyard`` (what
tts/1/model.py does), so the stub never drops the last reference to it."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from stepaudio.serving_utils import Graveyard

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
FIXED = os.environ.get("REPRO_FIXED") == "1"


def _audio(wav, reason=""):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("AUDIO", np.asarray(wav, dtype=np.float32)),
        pb_utils.Tensor("SAMPLE_RATE", np.array([22050], dtype=np.int32)),
        pb_utils.Tensor("FINISH_REASON", np.array([reason.encode()], dtype=np.object_))])


class TritonPythonModel:
    def initialize(self, args):
        self.pool = ThreadPoolExecutor(max_workers=32)
        self.graveyard = Graveyard(hold_s=10)

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])
            self.pool.submit(self._serve, n, request.get_response_sender())
        return None

    def _tokens(self, n):
        request = pb_utils.InferenceRequest(model_name="lm", requested_output_names=["TOKEN_IDS"], inputs=[
            pb_utils.Tensor("N", np.array([n], dtype=np.int32)),
            pb_utils.Tensor("REQUEST_ID", np.array([b"x"], dtype=np.object_))])
        responses = request.exec(decoupled=True)
        if FIXED:
            self.graveyard.bury(responses)
        for response in responses:
            if response.has_error():
                raise RuntimeError(response.error().message())
            out = pb_utils.get_output_tensor_by_name(response, "TOKEN_IDS")
            if out is not None:
                yield out.as_numpy().tolist()

    def _serve(self, n, sender):
        try:
            held = []
            for ids in self._tokens(n):
                held += ids
                if len(held) >= 15:
                    sender.send(_audio(np.full(480 * len(held), 0.1, np.float32)))
                    held = []
            sender.send(_audio(np.zeros(0, np.float32), "stop"), flags=FINAL)
        except Exception as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.graveyard.clear()
