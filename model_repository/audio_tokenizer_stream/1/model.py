"""Triton adapter: streaming audio tokenization, one sequence (correlation id) per utterance."""

import logging
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from client import tensors as T
from stepaudio.audio.preprocess import AudioInputError
from stepaudio.serving_utils import Gauge, instance_device, model_parameters, providers
from stepaudio.tokenizer.streams import Chunk
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
            self.tokenizer.semantic.tokenize,
            idle_timeout_s=float(p["idle_timeout_s"]),
            max_streams=int(p["max_streams"]),
        )
        self.streams.start_sweeper()
        self._gauge = Gauge(pb_utils, "audio_tokenizer_open_streams", "Open streaming tokenizer sessions",
                            {"model": args["model_name"], "instance": args["model_instance_name"]}, log)
        self.streams.on_change = self._gauge.set

    def _chunk(self, request):
        audio = pb_utils.get_input_tensor_by_name(request, T.STREAM_AUDIO.name).as_numpy()
        if audio.ndim == 2 and audio.shape[0] == 1:
            audio = audio[0]  # (1, T) -> (T,): the batch dimension of one request
        cancel = bool(_scalar(request, T.STREAM_CANCEL.name, False))
        return Chunk(
            stream_id=int(_scalar(request, T.CONTROL_CORRID, 0)),
            audio=audio,
            sample_rate_hz=int(_scalar(request, T.STREAM_SAMPLE_RATE_HZ.name)),
            start=bool(_scalar(request, T.CONTROL_START, 0)),
            end=bool(_scalar(request, T.CONTROL_END, 0)) or cancel,
            cancel=cancel,
        )

    def execute(self, requests):
        parsed = []
        for request in requests:
            try:
                parsed.append(self._chunk(request))
            except Exception as exc:
                parsed.append(AudioInputError(f"malformed request: {exc}"))
        # All sequences in this batch go through one registry call, which batches their vq06 segments.
        done = iter(self.streams.process_batch([c for c in parsed if isinstance(c, Chunk)]))
        results = [c if isinstance(c, Exception) else next(done) for c in parsed]
        responses = []
        for out in results:
            if isinstance(out, AudioInputError):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(out))))
            elif isinstance(out, Exception):  # a bad chunk never takes the instance or other streams down
                log.error("audio_tokenizer_stream: %s", "".join(traceback.format_exception(out)))
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"internal error: {type(out).__name__}: {out}")))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(T.AUDIO_TOKENS.name, out.astype(np.int32)[None, :]),
                    pb_utils.Tensor(T.AUDIO_TOKEN_STRING.name,
                                    np.array([[token_string(out).encode()]], dtype=np.object_)),
                ]))
        return responses

    def finalize(self):
        self.streams.clear()
        self._gauge.close()  # before the stub's teardown (see Gauge); on_change then does nothing
