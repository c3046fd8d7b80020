"""Triton adapter: streaming audio tokenization, one sequence (correlation id) per utterance."""

import logging
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from client import tensors as T
from stepaudio.audio.preprocess import AudioInputError
from stepaudio.serving_utils import instance_device, model_parameters, providers
from stepaudio.tokenizer.tokens import token_string

log = logging.getLogger("audio_tokenizer_stream")


def _scalar(request, name, default=None):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    return t.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        import torch

        from stepaudio.tokenizer.streams import StreamRegistry, session_factory
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
        self.streams = StreamRegistry(
            session_factory(self.tokenizer, int(p["segment_ms"]), p["normalization"]),
            idle_timeout_s=float(p["idle_timeout_s"]),
            max_streams=int(p["max_streams"]),
        )
        self.streams.start_sweeper()
        self._gauge = None
        try:
            # The family must outlive its metrics, so the instance keeps it.
            self._family = family = pb_utils.MetricFamily(
                name="audio_tokenizer_open_streams", description="Open streaming tokenizer sessions",
                kind=pb_utils.MetricFamily.GAUGE)
            self._gauge = family.Metric(labels={"model": args["model_name"], "instance": args["model_instance_name"]})
            self.streams.on_change = self._gauge.set
        except Exception:  # custom metrics are optional
            log.warning("custom metrics unavailable")

    def _run(self, request):
        stream_id = int(_scalar(request, T.CONTROL_CORRID, 0))
        start = bool(_scalar(request, T.CONTROL_START, 0))
        end = bool(_scalar(request, T.CONTROL_END, 0))
        cancel = bool(_scalar(request, T.STREAM_CANCEL.name, False))
        audio = pb_utils.get_input_tensor_by_name(request, T.STREAM_AUDIO.name).as_numpy()
        sr = int(_scalar(request, T.STREAM_SAMPLE_RATE_HZ.name))
        if audio.ndim == 2 and audio.shape[0] == 1:
            audio = audio[0]  # (1, T) -> (T,): the batch dimension of one request
        new = self.streams.process(stream_id, audio, sr, start=start, end=end or cancel, cancel=cancel)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(T.AUDIO_TOKENS.name, new.astype(np.int32)[None, :]),
            pb_utils.Tensor(T.AUDIO_TOKEN_STRING.name, np.array([[token_string(new).encode()]], dtype=np.object_)),
        ])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._run(request))
            except AudioInputError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # a bad chunk never takes the instance or other streams down
                log.error("audio_tokenizer_stream: %s", traceback.format_exc())
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}")))
        return responses

    def finalize(self):
        self.streams.clear()
