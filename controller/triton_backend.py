"""The controller's Backend over tritonclient's gRPC asyncio client.

Models used: ``audio_tokenizer_stream`` (one sequence per run of user speech), ``chat_llm`` (decoupled,
``messages_json``), ``tts`` (decoupled) and, when the server has it, ``asr``. What a model accepts is
read from its config at start, so the controller also works with servers without the explicit
cancel input (``cancel_request_id``) or without the ``asr`` model: cancelling the gRPC call stops a
request (the model sees ``is_cancelled()``); where the model takes ``cancel_request_id``, a cancel
request by id follows, which also reaches what the model runs behind BLS (tts -> tts_lm).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from client import tensors as T
from client.aio import decoupled_responses
from client.asr import asr_inputs
from client.chat import build_inputs
from client.tokenize import new_stream_id
from client.tts import tts_inputs
from controller.backend import BackendError, ChatDelta, ChatParams, TtsChunk, TtsParams

log = logging.getLogger("controller.triton")

TOKENIZER_RATE_HZ = 16000
ASR_MODEL = T.ASR
CANCEL_INPUT = T.CANCEL_REQUEST_ID.name
REQUIRED_MODELS = (T.AUDIO_TOKENIZER_STREAM, T.CHAT_LLM, T.TTS)
CANCEL_TIMEOUT_S = 5.0
# The streaming tokenizer emits tokens on a grid of 3840-sample (240 ms) vq02 strides; audio short of the
# next stride boundary is only buffered there. Sending when a stride is complete (and at the end) gives the
# same tokens, as early, in about 2.4x fewer requests than one per 100 ms append. (The tokens never depend
# on how the audio is chunked, so a different stride would cost only timing, never tokens.)
TOKENIZER_STRIDE_SAMPLES = 3840


def _inp(name: str, dtype: str, value: np.ndarray) -> grpcclient.InferInput:
    i = grpcclient.InferInput(name, list(value.shape), dtype)
    i.set_data_from_numpy(value)
    return i


def _str_input(name: str, value: str) -> grpcclient.InferInput:
    return _inp(name, "BYTES", np.array([value.encode()], dtype=np.object_))


def _int32_input(name: str, value: int) -> grpcclient.InferInput:
    return _inp(name, "INT32", np.array([value], dtype=np.int32))


class TritonTokenizerStream:
    """Chunks go to ``audio_tokenizer_stream`` in order, one request at a time; what arrives while a
    request is in flight is sent together in the next one (fewer, larger requests under load), and audio
    is held back until it completes a tokenizer stride (``TOKENIZER_STRIDE_SAMPLES``) or the stream ends."""

    def __init__(self, backend: TritonBackend):
        self._backend = backend
        self.stream_id = new_stream_id()
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._n_sent = 0  # samples sent in all
        self._wake = asyncio.Event()
        self._ending = False
        self._cancelled = False
        self._started = False
        self._closed = False
        self._tokens: list[int] = []
        self._error: BaseException | None = None
        backend._stream_opened()
        self._task = asyncio.create_task(self._run(), name=f"tokenizer-{self.stream_id}")

    def push(self, audio_16k: np.ndarray) -> None:
        if not (self._ending or self._cancelled) and len(audio_16k):
            self._pending.append(np.asarray(audio_16k, dtype=np.float32))
            self._n_pending += len(audio_16k)
            if self._completes_stride():
                self._wake.set()

    def _completes_stride(self) -> bool:
        return (self._n_sent + self._n_pending) // TOKENIZER_STRIDE_SAMPLES > self._n_sent // TOKENIZER_STRIDE_SAMPLES

    async def finish(self) -> list[int]:
        self._ending = True
        self._wake.set()
        await asyncio.shield(self._task)
        if self._error is not None:
            raise BackendError(f"audio tokenizer: {self._error}")
        return list(self._tokens)

    async def cancel(self) -> None:
        if not self._ending:
            self._cancelled = True
            self._wake.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(self._task)

    async def _send(self, chunk: np.ndarray, end: bool, cancel: bool = False) -> None:
        inputs = [_inp(T.STREAM_AUDIO.name, "FP32", chunk.reshape(1, -1)),
                  _inp(T.STREAM_SAMPLE_RATE_HZ.name, "INT32", np.array([[TOKENIZER_RATE_HZ]], np.int32))]
        if cancel:
            inputs.append(_inp(T.STREAM_CANCEL.name, "BOOL", np.array([[True]], np.bool_)))
        start, self._started = not self._started, True  # the server may know the sequence even if this fails
        res = await self._backend.client.infer(T.AUDIO_TOKENIZER_STREAM, inputs, sequence_id=self.stream_id,
                                               sequence_start=start, sequence_end=end)
        self._n_sent += len(chunk)
        if end:
            self._closed = True
        if not cancel:
            self._tokens.extend(int(t) for t in res.as_numpy(T.AUDIO_TOKENS.name).reshape(-1))

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._cancelled:
                    if self._started:
                        await self._send(np.zeros(0, np.float32), end=True, cancel=True)
                    return
                end = self._ending
                if not end and not self._completes_stride():
                    continue  # spurious wake-up: nothing the tokenizer could use yet
                chunk = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
                self._pending.clear()
                self._n_pending = 0
                if end and not self._started and not len(chunk):
                    return  # nothing was ever sent: no sequence to close
                if len(chunk) or end:
                    await self._send(chunk, end)
                if end:
                    return
                if self._completes_stride() or self._ending or self._cancelled:
                    self._wake.set()
        except asyncio.CancelledError:
            self._error = RuntimeError("cancelled")
            raise
        except Exception as exc:  # the server refused a chunk: the stream is over for this run
            self._error = exc
            if self._started and not self._closed:
                with contextlib.suppress(Exception):
                    await self._send(np.zeros(0, np.float32), end=True, cancel=True)
        finally:
            self._backend._stream_closed()


class TritonBackend:
    def __init__(self, url: str, request_timeout_s: float = 300.0, response_timeout_s: float = 30.0):
        self.url = url
        self.client = grpcaio.InferenceServerClient(url)
        self.request_timeout_s = request_timeout_s
        self.response_timeout_s = response_timeout_s  # a stream silent this long is given up (and cancelled)
        self._open = 0
        self._inputs: dict[str, set[str]] = {}
        self._models: set[str] = set()
        self._cancel_channel: grpc.aio.Channel | None = None  # for cancel_by_id, opened at the first
        self._cancel_stub: pb_grpc.GRPCInferenceServiceStub | None = None

    # -- discovery ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Reads which models the server has and which inputs they take."""
        index = await self.client.get_model_repository_index(as_json=True)
        self._models = {m["name"] for m in index.get("models", []) if m.get("state", "READY") == "READY"}
        for model in (T.CHAT_LLM, T.TTS, ASR_MODEL):
            if model in self._models:
                cfg = (await self.client.get_model_config(model, as_json=True))["config"]
                self._inputs[model] = {i["name"] for i in cfg.get("input", [])}
        missing = [m for m in REQUIRED_MODELS if m not in self._models]
        if missing:
            log.warning("Triton at %s has no %s: conversations will fail", self.url, ", ".join(missing))
        if not self.has_asr:
            log.warning("Triton at %s has no %r model: history keeps user turns as audio tokens", self.url,
                        ASR_MODEL)
        for model in (T.CHAT_LLM, T.TTS):
            if CANCEL_INPUT not in self._inputs.get(model, set()):
                log.info("%s has no %s input: cancelling by closing the gRPC stream only", model, CANCEL_INPUT)

    @property
    def has_asr(self) -> bool:
        return ASR_MODEL in self._models

    def accepts(self, model: str, input_name: str) -> bool:
        return input_name in self._inputs.get(model, set())

    async def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"triton": self.url}
        try:
            out["live"] = await self.client.is_server_live()
            out["ready"] = await self.client.is_server_ready()
            out["models"] = {m: await self.client.is_model_ready(m) for m in (*REQUIRED_MODELS, ASR_MODEL)}
        except InferenceServerException as exc:
            out.update(live=False, ready=False, error=exc.message())
        out["ok"] = bool(out.get("ready")) and all(out.get("models", {}).get(m) for m in REQUIRED_MODELS)
        return out

    # -- accounting --------------------------------------------------------------------------------
    def _stream_opened(self) -> None:
        self._open += 1

    def _stream_closed(self) -> None:
        self._open -= 1

    def open_streams(self) -> int:
        return self._open

    # -- streams -----------------------------------------------------------------------------------
    def open_tokenizer_stream(self) -> TritonTokenizerStream:
        return TritonTokenizerStream(self)

    async def _decoupled(self, model: str, inputs: list, request_id: str) -> AsyncIterator[grpcclient.InferResult]:
        self._stream_opened()
        finished = False
        try:
            async for result in decoupled_responses(self.client, model, inputs, request_id, self.request_timeout_s,
                                                    self.response_timeout_s):
                yield result
            finished = True
        except asyncio.TimeoutError as exc:  # (TimeoutError itself from Python 3.11 on)
            raise BackendError(f"{model}: no response for {self.response_timeout_s:.0f} s") from exc
        except InferenceServerException as exc:
            finished = True
            raise BackendError(f"{model}: {exc.message()}") from exc
        except grpc.RpcError as exc:  # the connection to Triton failed
            finished = True
            raise BackendError(f"{model}: {exc}") from exc
        finally:
            self._stream_closed()
            if not finished and self.accepts(model, CANCEL_INPUT):
                # the gRPC cancel above stops the model; this also stops what it runs behind BLS
                with contextlib.suppress(RuntimeError):  # no loop any more: the process is ending
                    asyncio.get_running_loop().create_task(self.cancel_by_id(model, request_id))

    async def chat(self, messages: list[dict[str, Any]], params: ChatParams,
                   request_id: str) -> AsyncIterator[ChatDelta]:
        inputs = build_inputs(messages=messages, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                              top_k=params.top_k, top_p=params.top_p, seed=params.seed, request_id=request_id)
        async for r in self._decoupled(T.CHAT_LLM, inputs, request_id):
            finish_reason = r.as_numpy(T.FINISH_REASON.name).reshape(-1)[0].decode()
            usage = {}
            if finish_reason:  # the counts are read where they are used: on the last delta
                usage = {"prompt_tokens": int(r.as_numpy(T.PROMPT_TOKENS.name).reshape(-1)[0]),
                         "completion_tokens": int(r.as_numpy(T.COMPLETION_TOKENS.name).reshape(-1)[0]),
                         "cached_prompt_tokens": int(r.as_numpy(T.CACHED_PROMPT_TOKENS.name).reshape(-1)[0])}
            yield ChatDelta(text=r.as_numpy(T.TEXT_DELTA.name).reshape(-1)[0].decode("utf-8"),
                            token_count=int(r.as_numpy(T.TOKEN_IDS.name).size), finish_reason=finish_reason, **usage)

    async def tts(self, text: str, params: TtsParams, request_id: str) -> AsyncIterator[TtsChunk]:
        inputs = tts_inputs(text, speaker=params.speaker, stream=True, seed=params.seed,
                            max_new_tokens=params.max_new_tokens)
        if params.first_chunk_tokens is not None and self.accepts(T.TTS, T.FIRST_CHUNK_TOKENS.name):
            inputs.append(_int32_input(T.FIRST_CHUNK_TOKENS.name, params.first_chunk_tokens))
        if self.accepts(T.TTS, T.REQUEST_ID.name):
            inputs.append(_str_input(T.REQUEST_ID.name, request_id))
        async for r in self._decoupled(T.TTS, inputs, request_id):
            yield TtsChunk(audio=r.as_numpy(T.AUDIO_OUT.name).reshape(-1).astype(np.float32),
                           sample_rate_hz=int(r.as_numpy(T.AUDIO_SAMPLE_RATE_HZ.name).reshape(-1)[0]),
                           finish_reason=r.as_numpy(T.FINISH_REASON.name).reshape(-1)[0].decode())

    async def cancel_by_id(self, model: str, request_id: str) -> None:
        """A request carrying only ``cancel_request_id``; the model answers with one final response, an empty
        one, which Triton sends only when asked to (``triton_enable_empty_final_response``). tritonclient's
        asyncio client cannot ask, so the request is built here and goes over a channel of our own (a
        threaded client per cancel cost more CPU than the rest of a discarded speculation)."""
        request = pb.ModelInferRequest(model_name=model)
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = CANCEL_INPUT, "BYTES"
        tensor.shape.append(1)
        value = request_id.encode()
        request.raw_input_contents.append(struct.pack("<I", len(value)) + value)  # a BYTES tensor of one
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        try:
            await asyncio.wait_for(self._send_cancel(request), CANCEL_TIMEOUT_S)
        except Exception as exc:  # best effort: the gRPC cancel has already been sent
            log.warning("cancel of %s %s failed: %s", model, request_id, exc)

    async def _send_cancel(self, request: pb.ModelInferRequest) -> None:
        if self._cancel_stub is None:
            self._cancel_channel = grpc.aio.insecure_channel(self.url)
            self._cancel_stub = pb_grpc.GRPCInferenceServiceStub(self._cancel_channel)
        done = asyncio.Event()

        async def requests():
            yield request
            await done.wait()  # our side stays open until the final response came

        call = self._cancel_stub.ModelStreamInfer(requests())
        finished = False
        try:
            async for response in call:
                if response.error_message:
                    raise BackendError(response.error_message)
                final = response.infer_response.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    finished = True
                    done.set()  # then the server ends the stream
        finally:
            done.set()
            if not finished:
                call.cancel()

    async def asr(self, audio_16k: np.ndarray) -> str:
        if not self.has_asr:
            raise BackendError(f"the server has no {ASR_MODEL!r} model")
        self._stream_opened()
        try:
            res = await self.client.infer(ASR_MODEL, asr_inputs(audio_16k, TOKENIZER_RATE_HZ),
                                          client_timeout=self.request_timeout_s)
        except InferenceServerException as exc:
            raise BackendError(f"{ASR_MODEL}: {exc.message()}") from exc
        except grpc.RpcError as exc:
            raise BackendError(f"{ASR_MODEL}: {exc}") from exc
        finally:
            self._stream_closed()
        text = res.as_numpy(T.ASR_TEXT.name).reshape(-1)[0]
        return text.decode("utf-8") if isinstance(text, bytes) else str(text)

    async def close(self) -> None:
        if self._cancel_channel is not None:
            await self._cancel_channel.close()
        await self.client.close()
