"""Triton adapter: text -> streamed speech, a BLS pipeline: voice (audio_tokenizer + speaker_embedding,
cached) -> tts_lm token stream -> token2wav sequence -> audio chunks. Cancellation (by the client, or by a
``cancel_request_id`` request) stops tts_lm and frees the token2wav stream."""

import logging
import secrets
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from client import tensors as T
from stepaudio.audio.preprocess import AudioInputError
from stepaudio.serving_utils import CancelBoard, Graveyard, model_parameters

log = logging.getLogger("tts")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
START, END = 1, 2  # sequence flags of a BLS request
CANCEL_POLL_S = 0.05  # how often a stream asks whether its client cancelled
ALL_OUTPUTS = frozenset(s.name for s in T.TTS_OUTPUTS)  # what a request naming no outputs gets


def _inputs(request):
    """Copies of a request's inputs by name: the request may be released once execute returns."""
    out = {}
    for spec in T.TTS_INPUTS:
        t = pb_utils.get_input_tensor_by_name(request, spec.name)
        if t is not None:
            out[spec.name] = np.array(t.as_numpy(), copy=True).reshape(-1)
    return out


def _get(inputs, spec):
    return inputs.get(spec.name)


def _text(inputs, spec):
    v = _get(inputs, spec)
    return None if v is None else v[0].decode("utf-8")


def _tensor(spec, value, dtype):
    return pb_utils.Tensor(spec.name, np.asarray(value, dtype=dtype))


def _call(model, inputs, outputs, **kw):
    response = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs, **kw).exec()
    if response.has_error():
        raise AudioInputError(f"{model}: {response.error().message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


def _audio_response(wanted, wav, reason=""):
    """Only the outputs the requester asked for (``wanted``): Triton 2.51's stub frees the others without
    the GIL (see ``stepaudio.serving_utils.Graveyard``)."""
    values = {T.AUDIO_OUT.name: np.asarray(wav, dtype=np.float32),
              T.AUDIO_SAMPLE_RATE_HZ.name: np.asarray([22050], dtype=np.int32),
              T.FINISH_REASON.name: np.array([reason.encode()], dtype=np.object_)}
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in values.items() if n in wanted])


class _PromptTokens:  # VoicePreparer's tokenizer, served by audio_tokenizer (the reference's trim path)
    def tokenize_prompt(self, audio, sample_rate_hz):
        [n] = _call(T.AUDIO_TOKENIZER, [_tensor(T.AUDIO, audio, np.float32), _tensor(T.SAMPLE_RATE_HZ, [sample_rate_hz],
                    np.int32), _tensor(T.TTS_PROMPT, [True], bool)], [T.AUDIO_TOKENS.name])
        return types.SimpleNamespace(llm_ids=n.reshape(-1).astype(np.int64) + 65536)


class _Embedder:  # VoicePreparer's CAM++, served by speaker_embedding
    def embed_16k(self, audio_16k):
        [e] = _call(T.SPEAKER_EMBEDDING, [_tensor(T.AUDIO, audio_16k[None], np.float32),
                                          _tensor(T.SAMPLE_RATE_HZ, [[16000]], np.int32)], [T.EMBEDDING.name])
        return e.reshape(-1)


class TritonPythonModel:
    def initialize(self, args):
        from stepaudio.llm.text_tokenizer import TextTokenizer
        from stepaudio.tts.chunking import ChunkPolicy
        from stepaudio.tts.mel import PromptMel
        from stepaudio.tts.voices import VoiceBank, VoicePreparer

        self.p = p = model_parameters(args)
        # token2wav's chunk policy: pushes leave when a chunk is due (None: every push_tokens tokens)
        self.push_policy = ChunkPolicy.from_parameters(p) if p["align_pushes"] == "true" else None
        self.tokenizer = TextTokenizer(p["tts_dir"])
        preparer = VoicePreparer(_PromptTokens(), _Embedder(),
                                 PromptMel.from_yaml(f"{p['tts_dir']}/CosyVoice-300M-25Hz/cosyvoice.yaml"))
        self.voices = VoiceBank(preparer, p["speakers_dir"], cache_size=int(p["voice_cache_size"]))
        self.cancels = CancelBoard()
        self.graveyard = Graveyard()  # BLS response iterators, released by us, never by the stub's C++ thread
        self.pool = ThreadPoolExecutor(max_workers=int(p["max_streams"]), thread_name_prefix="tts")

    def execute(self, requests):
        # Decoupled: each synthesis runs on a thread of the model's own pool (it blocks on BLS calls, so a
        # small pool would queue streams, and the cancels meant for them, behind running ones) and execute
        # returns at once. A control request (``cancel_request_id``) is served inline.
        for request in requests:
            inputs, sender = _inputs(request), request.get_response_sender()
            if (target := _text(inputs, T.CANCEL_REQUEST_ID)) is not None:
                self.cancels.cancel(target)
                sender.send(flags=FINAL)
            else:
                wanted = frozenset(request.requested_output_names()) or ALL_OUTPUTS
                self.pool.submit(self._serve, inputs, sender, wanted)
        return None

    def _voice(self, inputs, text):
        clone = _get(inputs, T.CLONE_AUDIO)
        if clone is not None:
            sr, transcript = _get(inputs, T.CLONE_SAMPLE_RATE_HZ), _text(inputs, T.CLONE_TEXT)
            if sr is None or transcript is None:
                raise AudioInputError("clone_audio needs clone_sample_rate_hz and clone_text (its exact transcript)")
            return self.voices.clone(clone, int(sr[0]), transcript)
        return self.voices.builtin(_text(inputs, T.TTS_SPEAKER) or self.p["default_speaker"], text)

    def _lm_tokens(self, inputs, sender, prompt_ids, lm_id, stop):
        """Yields the batches of ids tts_lm streams; once ``stop`` is set, cancels it and drains the rest."""
        lm_inputs = [_tensor(T.PROMPT_IDS, prompt_ids, np.int32), pb_utils.Tensor(T.REQUEST_ID.name, np.array(
            [lm_id.encode()], dtype=np.object_)), _tensor(T.MIN_TOKENS_PER_RESPONSE, [int(self.p["push_tokens"])], np.int32)]
        for spec, dtype in ((T.SEED, np.int64), (T.MAX_NEW_TOKENS, np.int32), (T.TEMPERATURE, np.float32)):
            if (v := _get(inputs, spec)) is not None:
                lm_inputs.append(_tensor(spec, v, dtype))
        lm = pb_utils.InferenceRequest(model_name=T.TTS_LM, inputs=lm_inputs,
                                       requested_output_names=[T.TOKEN_IDS.name])
        responses = self.graveyard.bury(lm.exec(decoupled=True))
        cancelled, ended, polled_s = False, False, time.monotonic()
        try:
            for response in responses:
                if response.has_error():
                    ended = True  # an error response is the stream's last
                    raise RuntimeError(f"tts_lm: {response.error().message()}")
                if not cancelled and time.monotonic() - polled_s >= CANCEL_POLL_S:  # an IPC round trip
                    polled_s = time.monotonic()
                    if sender.is_cancelled():
                        stop.set()
                if stop.is_set() and not cancelled:
                    cancelled = True
                    self._cancel_lm(lm_id)
                out = pb_utils.get_output_tensor_by_name(response, T.TOKEN_IDS.name)
                if out is not None and not cancelled:  # the last, empty response only closes the stream
                    yield out.as_numpy().tolist()
            ended = True
        finally:
            if not ended:  # the consumer stopped early: end the tts_lm stream, or the stub keeps its iterator
                if not cancelled:
                    self._cancel_lm(lm_id)
                for _ in responses:
                    pass

    def _cancel_lm(self, lm_id):
        cancel = pb_utils.Tensor(T.CANCEL_REQUEST_ID.name, np.array([lm_id.encode()], dtype=np.object_))
        for _ in self.graveyard.bury(pb_utils.InferenceRequest(model_name=T.TTS_LM, inputs=[cancel],
                                                               requested_output_names=[]).exec(decoupled=True)):
            pass

    def _push(self, corrid, tokens, flags, voice=None, decoder=None, seed=0, cancel=False, first_chunk=None):
        inputs = [_tensor(T.FLOW_TOKENS, [tokens], np.int32)]
        if voice is not None:
            inputs += [pb_utils.Tensor(T.DECODER.name, np.array([[decoder.encode()]], dtype=np.object_)),
                       _tensor(T.PROMPT_FLOW_TOKENS, [voice.prompt_flow_tokens], np.int32),
                       _tensor(T.PROMPT_MEL, [voice.prompt_mel.reshape(-1)], np.float32),
                       _tensor(T.PROMPT_EMBEDDING, [voice.speaker_embedding], np.float32), _tensor(T.T2W_SEED, [[seed]],
                                                                                                  np.int64)]
            if first_chunk is not None:
                inputs.append(_tensor(T.FIRST_CHUNK_TOKENS, [[first_chunk]], np.int32))
        if cancel:
            inputs.append(_tensor(T.STREAM_CANCEL, [[True]], bool))
        [wav] = _call(T.TOKEN2WAV, inputs, [T.T2W_AUDIO.name], correlation_id=corrid, flags=flags)
        return wav.reshape(-1)

    def _serve(self, inputs, sender, wanted):
        from stepaudio.tts.pipeline import TtsInputError, plan, token2wav_pushes
        from stepaudio.tts.streams import check_first_chunk_tokens

        rid = _text(inputs, T.REQUEST_ID) or uuid.uuid4().hex
        try:
            stop = self.cancels.register(rid)
        except ValueError as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
            return
        corrid, opened = secrets.randbits(63) or 1, False
        try:
            text = _text(inputs, T.TTS_TEXT) or ""
            job = plan(self.tokenizer, text, self._voice(inputs, text))
            stream = _get(inputs, T.TTS_STREAM)
            seed, first_chunk = _get(inputs, T.SEED), _get(inputs, T.FIRST_CHUNK_TOKENS)
            first_chunk = check_first_chunk_tokens(None if first_chunk is None else first_chunk[0])
            held = []
            lm = self._lm_tokens(inputs, sender, job.prompt.ids, f"{rid}/tts_lm", stop)
            policy = self.push_policy and self.push_policy.with_first(first_chunk)
            for tokens, last in token2wav_pushes(lm, int(self.p["push_tokens"]), policy):
                if stop.is_set():
                    break
                wav = self._push(corrid, tokens, (0 if opened else START) | (END if last else 0),
                                 None if opened else job.voice, job.prompt.decoder, 0 if seed is None else int(seed[0]),
                                 first_chunk=first_chunk)
                opened = not last
                if last:
                    tail = np.concatenate([*held, wav]) if held or wav.size else np.zeros(0, np.float32)
                    sender.send(_audio_response(wanted, tail, "stop"), flags=FINAL)
                    return
                if stream is not None and not bool(stream[0]):
                    held.append(wav)  # offline: one response at the end
                elif wav.size:
                    sender.send(_audio_response(wanted, wav))
            if sender.is_cancelled():
                sender.send(flags=FINAL)
            else:
                sender.send(_audio_response(wanted, np.zeros(0, np.float32), "cancelled"), flags=FINAL)
        except (AudioInputError, TtsInputError, KeyError, ValueError) as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
        except Exception as exc:  # one failing request never takes the instance down
            log.exception("tts failed")
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"internal error: {exc}")), flags=FINAL)
        finally:
            self.cancels.release(rid)
            if opened:  # stopped or failed mid-stream: free its token2wav state now, not at the idle timeout
                try:
                    self._push(corrid, [], END, cancel=True)
                except Exception:
                    log.warning("token2wav stream %d: cancel failed", corrid)

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.graveyard.clear()
        self.voices = None
