"""Triton adapter: text -> streamed speech. tts_lm runs behind BLS; voices and token2wav run here."""

import asyncio
import logging

import numpy as np
import triton_python_backend_utils as pb_utils

from client import tensors as T
from stepaudio.audio.preprocess import AudioInputError
from stepaudio.serving_utils import model_parameters

log = logging.getLogger("tts")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _get(request, spec):
    t = pb_utils.get_input_tensor_by_name(request, spec.name)
    return None if t is None else t.as_numpy().reshape(-1)


def _text(request, spec):
    v = _get(request, spec)
    return None if v is None else v[0].decode("utf-8")


def _audio_response(wav, reason=""):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor(T.AUDIO_OUT.name, np.asarray(wav, dtype=np.float32)),
        pb_utils.Tensor(T.AUDIO_SAMPLE_RATE_HZ.name, np.array([22050], dtype=np.int32)),
        pb_utils.Tensor(T.FINISH_REASON.name, np.array([reason.encode()], dtype=np.object_)),
    ])


class TritonPythonModel:
    def initialize(self, args):
        import torch

        from stepaudio.llm.text_tokenizer import TextTokenizer
        from stepaudio.tts.flow import load_flow
        from stepaudio.tts.hift import load_hift
        from stepaudio.tts.token2wav import Token2Wav
        from stepaudio.tts.voices import VoiceBank

        p = model_parameters(args)
        torch.set_num_threads(int(p["torch_threads"]))
        self.p = p
        self.tokenizer = TextTokenizer(p["tts_dir"])
        self.decoders = {}
        for name in ("CosyVoice-300M-25Hz", "CosyVoice-300M-25Hz-Music"):
            d = f"{p['tts_dir']}/{name}"
            self.decoders[name] = Token2Wav(load_flow(d), load_hift(d, fold_weight_norm=True))
        self.voices = VoiceBank.from_dirs(p["tokenizer_dir"], f"{p['tts_dir']}/CosyVoice-300M-25Hz",
                                          p["speakers_dir"], cache_size=int(p["voice_cache_size"]))

    async def execute(self, requests):
        await asyncio.gather(*(asyncio.to_thread(self._serve, r) for r in requests))
        return None

    def _voice(self, request, text):
        clone = _get(request, T.CLONE_AUDIO)
        if clone is not None:
            sr = _get(request, T.CLONE_SAMPLE_RATE_HZ)
            transcript = _text(request, T.CLONE_TEXT)
            if sr is None or transcript is None:
                raise AudioInputError("clone_audio needs clone_sample_rate_hz and clone_text (its exact transcript)")
            return self.voices.clone(clone, int(sr[0]), transcript)
        return self.voices.builtin(_text(request, T.TTS_SPEAKER) or self.p["default_speaker"], text)

    def _lm_tokens(self, request, prompt_ids):
        """Yields batches of LLM ids streamed by tts_lm."""
        inputs = [pb_utils.Tensor(T.PROMPT_IDS.name, np.asarray(prompt_ids, dtype=np.int32))]
        for spec, dtype in ((T.SEED, np.int64), (T.MAX_NEW_TOKENS, np.int32), (T.TEMPERATURE, np.float32)):
            v = _get(request, spec)
            if v is not None:
                inputs.append(pb_utils.Tensor(spec.name, v.astype(dtype)))
        lm = pb_utils.InferenceRequest(model_name=T.TTS_LM, inputs=inputs,
                                       requested_output_names=[T.TOKEN_IDS.name])
        for response in lm.exec(decoupled=True):
            if response.has_error():
                raise RuntimeError(f"tts_lm: {response.error().message()}")
            out = pb_utils.get_output_tensor_by_name(response, T.TOKEN_IDS.name)
            if out is not None:  # the last, empty response only closes the stream
                yield out.as_numpy().tolist()
            if request.is_cancelled():
                return

    def _serve(self, request):
        from stepaudio.tts.pipeline import TtsInputError, plan, stream_audio

        sender = request.get_response_sender()
        try:
            text = _text(request, T.TTS_TEXT) or ""
            job = plan(self.tokenizer, text, self._voice(request, text))
            stream = _get(request, T.TTS_STREAM)
            streaming = True if stream is None else bool(stream[0])
            seed = _get(request, T.SEED)
            chunks = stream_audio(self.decoders[job.prompt.decoder], job.voice,
                                  self._lm_tokens(request, job.prompt.ids), seed=0 if seed is None else int(seed[0]))
            held = []
            for wav in chunks:
                if request.is_cancelled():
                    chunks.close()
                    sender.send(flags=FINAL)
                    return
                if streaming:
                    sender.send(_audio_response(wav))
                else:
                    held.append(wav)
            tail = np.concatenate(held) if held else np.zeros(0, np.float32)
            sender.send(_audio_response(tail, "stop"), flags=FINAL)
        except (AudioInputError, TtsInputError, KeyError, ValueError) as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
        except Exception as exc:  # one failing request never takes the instance down
            log.exception("tts failed")
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"internal error: {exc}")),
                        flags=FINAL)

    def finalize(self):
        self.voices = None
