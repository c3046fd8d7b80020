"""Triton adapter: streaming Step-1 generation (chat_llm / tts_lm), decoupled, async execute."""

import asyncio
import faulthandler
import logging

import numpy as np
import triton_python_backend_utils as pb_utils

from client import tensors as T
from stepaudio.llm.engine import RequestError
from stepaudio.llm.sampling import SamplingError, SamplingParams
from stepaudio.serving_utils import Gauge, LoopThread, instance_device, model_parameters

log = logging.getLogger("llm")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Triton 2.51's Python backend has no cancellation callback: a watcher checks is_cancelled() this often.
CANCEL_POLL_S = 0.05


def _arrays(request, specs):
    """Copies of the inputs: the request may be released once execute returns."""
    out = {}
    for spec in specs:
        t = pb_utils.get_input_tensor_by_name(request, spec.name)
        out[spec.name] = None if t is None else np.array(t.as_numpy(), copy=True)
    return out


ALL_OUTPUTS = frozenset(s.name for s in T.LLM_OUTPUTS)


def _response(wanted, ids, text, reason, ev):
    """Only the outputs the requester asked for (``wanted``; tts asks for token_ids only): Triton 2.51's stub
    drops the others without the GIL, which corrupts the heap under load (``stepaudio.serving_utils.Graveyard``)."""
    values = {
        T.TOKEN_IDS.name: np.asarray(ids, dtype=np.int32),
        T.TEXT_DELTA.name: np.array([text.encode()], dtype=np.object_),
        T.FINISH_REASON.name: np.array([reason.encode()], dtype=np.object_),
        T.PROMPT_TOKENS.name: np.array([ev.prompt_tokens], dtype=np.int32),
        T.COMPLETION_TOKENS.name: np.array([ev.completion_tokens], dtype=np.int32),
        T.CACHED_PROMPT_TOKENS.name: np.array([ev.cached_prompt_tokens], dtype=np.int32),
    }
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in values.items() if n in wanted])


class TritonPythonModel:
    def initialize(self, args):
        import torch

        faulthandler.enable(all_threads=True)  # a crash of the stub leaves every thread's Python stack in the log

        from stepaudio.llm.async_engine import AsyncEngine
        from stepaudio.llm.engine import Engine
        from stepaudio.llm.loader import load_step1
        from stepaudio.llm.text_tokenizer import TextTokenizer

        p = model_parameters(args)
        torch.set_num_threads(int(p["torch_threads"]))
        self.mode = p["mode"]
        dtype = None if p["dtype"] == "auto" else p["dtype"]
        engine_kwargs = {"max_batch_size": int(p["max_batch_size"]),
                         "prefix_cache_tokens": int(p["prefix_cache_tokens"]),
                         "block_size": int(p["block_size"]), "prefix_reuse": p["prefix_reuse"] == "true"}
        self.tp_group = None
        if int(p["tensor_parallel_size"]) > 1:  # this instance is rank 0 of a process group it starts
            from stepaudio.llm import tp_worker
            from stepaudio.llm.tp_engine import LockstepEngine

            self.tp_group = tp_worker.launch(int(p["tensor_parallel_size"]), p["checkpoint_dir"], dtype,
                                             p["device"], engine_kwargs)
            model = load_step1(p["checkpoint_dir"], dtype=dtype, device=self.tp_group.device, tp=self.tp_group.tp)
            engine = LockstepEngine(Engine(model, **engine_kwargs), self.tp_group.tp)
        else:
            model = load_step1(p["checkpoint_dir"], dtype=dtype, device=instance_device(args, p["device"]))
            if p["output_vocab"] == "audio":
                from stepaudio.llm.prompts import tts_output_ids

                model.restrict_head(tts_output_ids())
            engine = Engine(model, **engine_kwargs)
        self.tokenizer = TextTokenizer(p["checkpoint_dir"])
        self.engine = AsyncEngine(engine)
        self.loop = LoopThread(f"{args['model_instance_name']}-serve")
        self.defaults = SamplingParams(
            temperature=float(p["default_temperature"]), top_k=int(p["default_top_k"]),
            top_p=float(p["default_top_p"]), max_new_tokens=int(p["default_max_new_tokens"]),
            repetition_window=int(p["repetition_window"]))
        self.specs = T.LLM_INPUTS
        # open generation streams, so a client can verify that a cancel reached the engine
        self._gauge = Gauge(pb_utils, "llm_active_requests", "Running generation requests",
                            {"model": args["model_name"], "instance": args["model_instance_name"]}, log)

    def execute(self, requests):
        # Decoupled: read each request's inputs here, then serve it on the model's own loop and return.
        for request in requests:
            sender = request.get_response_sender()
            cancel_id = _arrays(request, (T.CANCEL_REQUEST_ID,))[T.CANCEL_REQUEST_ID.name]
            if cancel_id is not None:  # a control request: no generation of its own
                self.engine.cancel(cancel_id.reshape(-1)[0].decode("utf-8"))
                sender.send(flags=FINAL)
                continue
            wanted = frozenset(request.requested_output_names()) or ALL_OUTPUTS
            self.loop.submit(self._serve(sender, _arrays(request, self.specs), wanted))
        return None

    async def _serve(self, sender, arrays, wanted):
        from stepaudio.llm.detokenize import IncrementalDetokenizer
        from stepaudio.llm.requests import min_tokens_per_response, parse_request

        try:
            req = parse_request(arrays, self.mode, self.tokenizer, self.defaults)
            stream = self.engine.generate_batches(req, min_tokens_per_response(arrays))
            batch = await anext(stream)  # RequestError surfaces here, before any response
        except (RequestError, SamplingError, ValueError) as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
            return
        self._count()
        detok = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=True) if self.mode == "chat" else None
        watcher = asyncio.create_task(self._watch_cancel(sender, req.request_id))
        try:
            while True:  # one response per batch of ready events: a busy server sends fewer, larger ones
                ev = batch[-1]
                ids = [e.token_id for e in batch if e.token_id is not None]
                text = detok.feed_many(ids) if detok else ""
                if ev.finished:
                    text += detok.finish() if detok else ""
                    if ev.error:
                        sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(ev.error)), flags=FINAL)
                    else:
                        sender.send(_response(wanted, ids, text, ev.finish_reason or "", ev), flags=FINAL)
                    return
                sender.send(_response(wanted, ids, text, "", ev))
                batch = await anext(stream)
        except Exception as exc:  # a failure in one stream never takes the instance down
            log.exception("generation failed")
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"internal error: {exc}")),
                        flags=FINAL)
        finally:
            watcher.cancel()
            await stream.aclose()
            self._count()

    def _count(self):
        self._gauge.set(self.engine.active)

    async def _watch_cancel(self, sender, request_id):
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            if sender.is_cancelled():
                self.engine.cancel(request_id)  # the stream then ends with finish_reason "cancelled"
                return

    def finalize(self):
        self.loop.close()
        self.engine.close()
        if self.tp_group is not None:
            self.engine.engine.shutdown()
            self.tp_group.wait()
        self._gauge.close()  # before the stub's teardown (see Gauge)
        faulthandler.disable()  # the handler is for crashes while serving
