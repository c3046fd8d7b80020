"""Triton adapter: streaming token2wav (flow + HiFT), one sequence per utterance, state per sequence."""

import logging
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from client import tensors as T
from stepaudio.serving_utils import Gauge, instance_device, model_parameters

log = logging.getLogger("token2wav")
DECODERS = ("CosyVoice-300M-25Hz", "CosyVoice-300M-25Hz-Music")


def _get(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy().reshape(-1)


class TritonPythonModel:
    def initialize(self, args):
        import torch

        from stepaudio.tts.chunking import ChunkPolicy
        from stepaudio.tts.streams import Token2WavStreams
        from stepaudio.tts.token2wav import load_token2wav

        p = model_parameters(args)
        torch.set_num_threads(int(p["torch_threads"]))
        onnx_root = f"{args['model_repository']}/{args['model_version']}/onnx" if p["backend"] == "onnx" else None
        device = instance_device(args, p["device"])
        decoders = {name: load_token2wav(f"{p['tts_dir']}/{name}", device=device, n_timesteps=int(p["n_timesteps"]),
                                         onnx_dir=onnx_root and f"{onnx_root}/{name}", onnx_threads=int(p["onnx_threads"]))
                    for name in DECODERS}
        policy = ChunkPolicy.from_parameters(p)
        self.streams = Token2WavStreams(decoders, idle_timeout_s=float(p["idle_timeout_s"]),
                                        max_streams=int(p["max_streams"]), policy=policy)
        self.streams.start_sweeper()
        self._gauge = Gauge(pb_utils, "token2wav_open_streams", "Open token2wav streams",
                            {"model": args["model_name"], "instance": args["model_instance_name"]}, log)
        self.streams.on_change = self._gauge.set

    def _push(self, request):
        from stepaudio.tts.streams import StreamVoice
        from stepaudio.tts.token2wav import PromptVoice

        stream_id = int(_get(request, T.CONTROL_CORRID)[0])
        cancel = _get(request, T.STREAM_CANCEL.name)
        if cancel is not None and bool(cancel[0]):
            return self.streams.push(stream_id, np.zeros(0, np.int64), cancel=True)
        start = None
        if bool(_get(request, T.CONTROL_START)[0]):
            parts = [_get(request, s.name) for s in (T.DECODER, T.PROMPT_FLOW_TOKENS, T.PROMPT_MEL, T.PROMPT_EMBEDDING)]
            if any(p is None for p in parts):
                raise ValueError("the START request of a stream carries decoder, prompt_flow_tokens, prompt_mel and "
                                 "prompt_embedding")
            decoder, prompt_tokens, prompt_mel, embedding = parts
            if prompt_mel.size % 80:
                raise ValueError(f"prompt_mel holds {prompt_mel.size} values, not a whole number of 80-bin frames")
            seed, first = _get(request, T.T2W_SEED.name), _get(request, T.FIRST_CHUNK_TOKENS.name)
            start = StreamVoice(decoder[0].decode("utf-8"), PromptVoice.of(prompt_tokens, prompt_mel.reshape(-1, 80),
                                                                           embedding),
                                0 if seed is None else int(seed[0]), None if first is None else int(first[0]))
        return self.streams.push(stream_id, _get(request, T.FLOW_TOKENS.name), start=start,
                                 end=bool(_get(request, T.CONTROL_END)[0]))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                wav = self._push(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(T.T2W_AUDIO.name, wav.astype(np.float32)[None]),
                    pb_utils.Tensor(T.AUDIO_SAMPLE_RATE_HZ.name, np.array([[22050]], dtype=np.int32)),
                ]))
            except ValueError as exc:  # bad input, named; the stream (if any) was freed or left as it was
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # one failing stream never takes the instance or other streams down
                log.error("token2wav: %s", traceback.format_exc())
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}")))
        return responses

    def finalize(self):
        self.streams.close()
        self._gauge.close()  # before the stub's teardown (see Gauge); on_change then does nothing
