"""Shaped like tts_lm: a synchronous decoupled execute hands each request to an asyncio loop in a Python
thread, which streams responses of six numpy-backed outputs while another Python thread allocates (the
engine). ``REPRO_FIXED=1``: only the outputs the requester asked for are built (what llm/1/model.py does)."""

import asyncio
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
FIXED = os.environ.get("REPRO_FIXED") == "1"
OUTPUTS = ("TOKEN_IDS", "TEXT_DELTA", "FINISH_REASON", "PROMPT_TOKENS", "COMPLETION_TOKENS", "CACHED_PROMPT_TOKENS")


def _response(i, wanted):
    values = {
        "TOKEN_IDS": lambda: np.asarray([i, i + 1, i + 2], dtype=np.int32),
        "TEXT_DELTA": lambda: np.array([f"tok{i}".encode()], dtype=np.object_),
        "FINISH_REASON": lambda: np.array([b""], dtype=np.object_),
        "PROMPT_TOKENS": lambda: np.array([17], dtype=np.int32),
        "COMPLETION_TOKENS": lambda: np.array([i], dtype=np.int32),
        "CACHED_PROMPT_TOKENS": lambda: np.array([0], dtype=np.int32),
    }
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, values[n]()) for n in OUTPUTS
                                                      if wanted is None or n in wanted])


class TritonPythonModel:
    def initialize(self, args):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        threading.Thread(target=self._engine, daemon=True).start()

    def _engine(self):  # Python allocations beside the senders, as the LLM engine's thread makes
        while True:
            junk = [[j, str(j), {"a": j}] for j in range(200)]
            del junk
            time.sleep(0.0005)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])
            wanted = (frozenset(request.requested_output_names()) or None) if FIXED else None
            asyncio.run_coroutine_threadsafe(self._serve(sender, n, wanted), self.loop)
        return None

    async def _serve(self, sender, n, wanted):
        try:
            for i in range(n):
                await asyncio.sleep(0.001)
                sender.send(_response(i, wanted))
                if i % 50 == 0:
                    sender.is_cancelled()
            sender.send(_response(n, wanted), flags=FINAL)
        except Exception as exc:
            pb_utils.Logger.log_error(f"lm: send failed: {exc}")
